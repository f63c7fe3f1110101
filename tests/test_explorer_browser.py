"""The explorer page in a real browser: Debian's Chromium driven by Playwright, against a real
`verinfer serve --nsm sim` and the page served by a real `verinfer explorer`.

Every refusal the page must make is provoked the way it happens in the world: a wrong pin typed by the user,
and a man in the middle (Playwright's request interception) replaying an old attestation, forging a receipt
or answering from another model. Screenshots go to test-screenshots/ (one is committed as docs/explorer.png).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, sync_playwright

from enclave.image import measure_image
from verinfer.processes import (
    CHROMIUM_ARGS,
    chromium_executable,
    running_anvil,
    running_explorer,
    running_server,
)

from .chain_fixtures import build_chain
from .test_contracts import receipt_tuple

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "test-screenshots"
VERDICT_DONE = ":not([data-verdict=CHECKING]):not([data-verdict=NONE])"
IRIS_OLS = {"model": "iris-ols", "inputs": [{"name": "features", "shape": [1, 3], "data": [5.1, 3.5, 1.4]}]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explorer-pki")


@pytest.fixture(scope="module")
def enclave(pki: Path) -> Iterator[str]:
    """A simulated enclave that lets any page call it (`--cors-origin '*'`), as the README runs it."""
    with running_server("--nsm", "sim", "--pki-dir", str(pki), "--cors-origin", "*") as url:
        yield url


@pytest.fixture(scope="module")
def explorer(enclave: str, pki: Path) -> Iterator[str]:
    with running_explorer("--root", "sim", "--pki-dir", str(pki), "--enclave", enclave) as url:
        yield url


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    """The PCRs an auditor computes from the source (what `verinfer serve --nsm sim` attests)."""
    measured = measure_image(REPO / "models")
    return {f"pcr{i}": measured.pcrs[i].hex() for i in range(3)}


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=chromium_executable(), args=list(CHROMIUM_ARGS))
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def open_and_check(page: Page, explorer: str, **settings: str) -> str:
    """Load the page with `settings` in its #fragment, let it check the enclave, return the verdict."""
    fragment = "&".join(f"{key}={value}" for key, value in {**settings, "check": "1"}.items())
    page.goto(f"{explorer}/#{fragment}")
    page.wait_for_selector("body[data-checked]", timeout=30_000)
    return str(page.get_attribute("#verdict", "data-verdict"))


def rule(page: Page, table: str, name: str) -> tuple[str, str]:
    row = page.locator(f"#{table} tr[data-rule={name}]")
    return str(row.get_attribute("data-status")), row.inner_text()


def statuses(page: Page, table: str) -> dict[str, str]:
    rows = page.locator(f"#{table} tr")
    return {
        str(rows.nth(i).get_attribute("data-rule")): str(rows.nth(i).get_attribute("data-status"))
        for i in range(rows.count())
    }


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def draw_one(page: Page) -> None:
    """A vertical stroke, as a person draws a 1 with the mouse."""
    canvas = page.locator("#digit")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    x = box["x"] + box["width"] * 0.5
    page.mouse.move(x, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(x + step * 0.3, box["y"] + box["height"] * (0.15 + 0.7 * step / 20))
    page.mouse.up()


def receipt_verdict(page: Page, table: str = "receipt-body", verdict: str = "receipt-verdict") -> str:
    page.wait_for_selector(f"#{verdict}{VERDICT_DONE}", timeout=30_000)
    return str(page.get_attribute(f"#{verdict}", "data-verdict"))


def iris_ols_exchange(enclave: str) -> tuple[str, str]:
    """A request and the enclave's answer to it, as the exact texts a user would paste or drop."""
    request = json.dumps(IRIS_OLS)
    headers = {"content-type": "application/json"}
    return request, httpx.post(f"{enclave}/infer", content=request, headers=headers).text


def cors_json(body: Any) -> dict[str, Any]:
    return {
        "status": 200,
        "headers": {"access-control-allow-origin": "*", "content-type": "application/json"},
        "body": json.dumps(body) if not isinstance(body, str) else body,
    }


def test_page_verifies_a_live_simulated_enclave(page: Page, explorer: str, pins: dict[str, str]) -> None:
    assert open_and_check(page, explorer, **pins) == "VERIFIED"
    assert page.locator("#verdict .simulated").inner_text() == "SIMULATED attestation: not hardware"
    rules = statuses(page, "rules-body")
    assert rules.pop("registry") == "skipped"  # no contract configured
    assert set(rules.values()) == {"pass"}, rules
    assert "SIMULATOR root (not hardware)" in rule(page, "rules-body", "chain")[1]
    assert page.locator("#models-body tr").count() == 4
    screenshot(page, "enclave-verified.png")


def test_listed_models_and_hashes_are_the_attested_manifest(page: Page, explorer: str, enclave: str) -> None:
    open_and_check(page, explorer)
    rows = page.locator("#models-body tr")
    cells = [rows.nth(i).locator("td") for i in range(rows.count())]
    listed = {row.nth(0).inner_text(): row.nth(3).inner_text() for row in cells}
    manifest = httpx.get(f"{enclave}/models").json()["models"]
    assert listed == {m["name"]: "0x" + m["sha256"] for m in manifest}
    assert rule(page, "rules-body", "manifest")[0] == "pass"


def test_unpinned_image_is_not_verified(page: Page, explorer: str) -> None:
    assert open_and_check(page, explorer) == "UNPINNED"
    assert rule(page, "rules-body", "image")[0] == "skipped"


def test_wrong_pcr_pin_is_refused(page: Page, explorer: str, pins: dict[str, str]) -> None:
    wrong = {**pins, "pcr1": "ab" * 48}
    assert open_and_check(page, explorer, **wrong) == "REJECTED"
    status, text = rule(page, "rules-body", "image")
    assert status == "fail"
    assert "pcr_mismatch: PCR1" in text
    assert "failed: image" in page.inner_text("#verdict")
    assert page.locator("#infer-section").is_hidden()  # no inference against a refused enclave
    screenshot(page, "wrong-pcr.png")


def test_replayed_attestation_with_a_stale_nonce_is_refused(
    page: Page, explorer: str, enclave: str, pins: dict[str, str]
) -> None:
    recorded = httpx.get(f"{enclave}/attestation", params={"nonce": "00" * 32}).json()
    page.route("**/attestation?nonce=*", lambda route: route.fulfill(**cors_json(recorded)))
    assert open_and_check(page, explorer, **pins) == "REJECTED"
    status, text = rule(page, "rules-body", "nonce")
    assert status == "fail"
    assert "nonce_mismatch" in text
    assert "failed: nonce" in page.inner_text("#verdict")


def test_drawn_digit_is_classified_and_its_receipt_verifies(
    page: Page, explorer: str, pins: dict[str, str]
) -> None:
    assert open_and_check(page, explorer, **pins) == "VERIFIED"
    draw_one(page)
    page.click("#classify-digit")
    assert receipt_verdict(page) == "VERIFIED"
    assert page.inner_text("#answer") == "mnist-lenet: digit 1"
    checks = statuses(page, "receipt-body")
    assert set(checks.values()) == {"pass"}, checks
    assert {"signature", "input_hash", "output_hash", "model", "request_id", "attestation"} <= set(checks)
    screenshot(page, "digit-verified.png")


def test_iris_measurements_are_classified_and_verified(
    page: Page, explorer: str, pins: dict[str, str]
) -> None:
    open_and_check(page, explorer, **pins)
    page.click("#classify-iris")
    assert receipt_verdict(page) == "VERIFIED"
    assert page.inner_text("#answer").startswith("iris-mlp: setosa")


def forge_signature(route: Route) -> None:
    answer = route.fetch()
    body = answer.json()
    signature = bytearray.fromhex(body["receipt"]["signature"].removeprefix("0x"))
    signature[5] ^= 0x01  # inside r: recovers to some other key, or to none
    body["receipt"]["signature"] = "0x" + signature.hex()
    route.fulfill(response=answer, body=json.dumps(body))


def test_forged_receipt_is_refused(page: Page, explorer: str, pins: dict[str, str]) -> None:
    open_and_check(page, explorer, **pins)
    page.route("**/infer", forge_signature)
    page.click("#classify-iris")
    assert receipt_verdict(page) == "REJECTED"
    assert rule(page, "receipt-body", "signature")[0] == "fail"
    assert "signature" in page.inner_text("#receipt-verdict")
    screenshot(page, "forged-receipt.png")


def test_answer_from_another_model_is_refused(
    page: Page, explorer: str, enclave: str, pins: dict[str, str]
) -> None:
    # A genuine, correctly signed answer of the same enclave, but from iris-ols: substituted for iris-mlp's.
    other = httpx.post(f"{enclave}/infer", json=IRIS_OLS).text
    open_and_check(page, explorer, **pins)
    page.route("**/infer", lambda route: route.fulfill(**cors_json(other)))
    page.click("#classify-iris")
    assert receipt_verdict(page) == "REJECTED"
    status, text = rule(page, "receipt-body", "model")
    assert status == "fail"
    assert "iris-mlp" in text
    assert rule(page, "receipt-body", "signature")[0] == "pass"  # signed all right: the page is not fooled


def test_pasted_answer_verifies_and_a_tampered_one_does_not(
    page: Page, explorer: str, enclave: str, pins: dict[str, str]
) -> None:
    request, response = iris_ols_exchange(enclave)
    open_and_check(page, explorer, **pins)
    page.fill("#paste-response", response)
    page.fill("#paste-request", request)
    page.click("#verify-pasted")
    assert receipt_verdict(page, "pasted-body", "pasted-verdict") == "VERIFIED"

    tampered = json.loads(response)
    tampered["outputs"][0]["data"][0] += 1.0
    page.fill("#paste-response", json.dumps(tampered))
    page.click("#verify-pasted")
    assert receipt_verdict(page, "pasted-body", "pasted-verdict") == "REJECTED"
    assert rule(page, "pasted-body", "output_hash")[0] == "fail"


@pytest.fixture(scope="module")
def onchain(enclave: str, pki: Path) -> Iterator[Any]:
    """The verifier contract on a real anvil, this enclave's image approved and the enclave registered."""
    with running_anvil() as url, ThreadPoolExecutor(1) as thread:
        # In a thread: Playwright's sync API runs an event loop here, and the registration's fetch refuses
        # to block inside one.
        yield thread.submit(build_chain, url, enclave, pki).result()


def test_image_read_from_the_onchain_registry_and_receipt_anchoring(
    page: Page, explorer: str, onchain: Any
) -> None:
    verdict = open_and_check(page, explorer, rpc=onchain.url, contract=onchain.contract.address)
    assert verdict == "VERIFIED"  # pinned by the contract's approved image, not by typed PCRs
    assert rule(page, "rules-body", "registry")[0] == "pass"
    assert "approved on chain" in rule(page, "rules-body", "image")[1]

    page.click("#classify-iris")
    assert receipt_verdict(page) == "VERIFIED"
    assert page.inner_text("#anchoring").startswith("not anchored on chain")

    # Anchor that very receipt, then verify the same answer again (pasted): the page now finds it on chain.
    from protocol.receipts import SignedReceipt

    exchange = page.evaluate("window.verinferExplorer.state.lastExchange")
    signed = SignedReceipt.from_json(json.loads(exchange["response"])["receipt"])
    onchain.relay.transact(onchain.contract.functions.anchorReceipt(receipt_tuple(signed), signed.signature))
    page.fill("#paste-response", exchange["response"])
    page.fill("#paste-request", exchange["request"])
    page.click("#verify-pasted")
    assert receipt_verdict(page, "pasted-body", "pasted-verdict") == "VERIFIED"
    assert page.inner_text("#pasted-anchoring").startswith(f"anchored on chain for enclave {onchain.enclave}")
    screenshot(page, "onchain-anchored.png")


def test_unregistered_enclave_is_refused_by_the_registry(page: Page, explorer: str, onchain: Any) -> None:
    other = onchain.contract.address[:-4] + "dead"  # no contract there: the page must not call it approved
    verdict = open_and_check(page, explorer, rpc=onchain.url, contract=other)
    assert verdict == "REJECTED"
    assert rule(page, "rules-body", "registry")[0] == "fail"


def test_page_opened_from_the_file_verifies_too(
    page: Page, enclave: str, pki: Path, pins: dict[str, str]
) -> None:
    """No server of ours at all: the committed page from disk, settings typed in (origin "null" for CORS)."""
    page.goto((REPO / "verinfer" / "explorer" / "index.html").as_uri())
    page.wait_for_selector("body[data-ready]")
    page.fill("#enclave", enclave)
    page.select_option("#root-choice", "pem")
    page.fill("#root-pem", (pki / "root.pem").read_text())
    for name, value in pins.items():
        page.fill(f"#{name}", value)
    page.click("#check")
    page.wait_for_selector("body[data-checked]", timeout=30_000)
    assert page.get_attribute("#verdict", "data-verdict") == "VERIFIED"
    assert page.locator("#verdict .simulated").is_visible()


def test_dropped_files_are_sorted_and_verified(
    page: Page, explorer: str, enclave: str, pins: dict[str, str]
) -> None:
    request, response = iris_ols_exchange(enclave)
    open_and_check(page, explorer, **pins)
    files = page.evaluate_handle(
        """([request, response]) => {
            const dropped = new DataTransfer();
            dropped.items.add(new File([response], "response.json", { type: "application/json" }));
            dropped.items.add(new File([request], "request.json", { type: "application/json" }));
            return dropped;
        }""",
        [request, response],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": files})
    for _ in range(50):  # the page reads the files asynchronously
        if page.input_value("#paste-request"):
            break
        page.wait_for_timeout(50)
    assert page.input_value("#paste-response") == response
    assert page.input_value("#paste-request") == request
    page.click("#verify-pasted")
    assert receipt_verdict(page, "pasted-body", "pasted-verdict") == "VERIFIED"
