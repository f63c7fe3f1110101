"""The explorer in a real browser, against the Python verifier, in one run.

Run: `make bench-browser` (`.venv/bin/python -m bench.bench_browser [--loads N] [--receipts N]`, ~1 minute).

One `verinfer serve --nsm sim --no-llm --cors-origin '*'` and one `verinfer explorer`; Debian's Chromium,
headless, driven by Playwright. Printed:
- **page load to full verdict**: a fresh browser context opens the page with the PCRs pinned; the page
  draws a nonce, fetches GET /attestation and GET /models, and checks every rule (chain to the root,
  PCRs, nonce, key, manifest, sealing key). The time is `performance.now()` when the verdict is shown, so
  it includes navigation, parsing the bundled verifier and both fetches. The alternative a user would pick
  is the Python library doing the same fetch-and-verify in a warm process (`relay.registration.
  attest_enclave` plus GET /models and the manifest digest check).
- **per-receipt verification**: the last answer (iris-mlp) verified again and again in the page against the
  already checked document (signature recovery, canonical tensor hashes, input parsing, manifest), against
  `verinfer.verify.verify_inference` on the same answer with the same reuse, in this process.

Both sides share the 2-core machine with the server; read ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from playwright.sync_api import sync_playwright

from attestation import Policy, TrustedRoot, verify
from enclave.image import measure_image
from relay.registration import attest_enclave
from verinfer.processes import CHROMIUM_ARGS, chromium_executable, running_explorer, running_server
from verinfer.verify import manifest_from_json, verify_inference

REPO = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def python_enclave_check(enclave: str, policy: Policy) -> float:
    """Milliseconds for the Python verifier's fetch-and-verify of the same enclave (nonce, PCRs, manifest)."""
    started = time.perf_counter()
    attested = attest_enclave(enclave, policy)
    manifest = manifest_from_json(httpx.get(f"{enclave}/models").json())
    if attested.user_data is None or attested.user_data[:32] != manifest.digest:
        raise AssertionError("the manifest digest does not match")
    return (time.perf_counter() - started) * 1000


def browser_side(explorer: str, fragment: str, loads: int, receipts: int) -> dict[str, object]:
    """Page loads to a full verdict, then one inference and `receipts` re-verifications of its receipt."""
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium_executable(), args=list(CHROMIUM_ARGS))
        print(f"chromium {browser.version}, headless; explorer {explorer}")
        times: list[float] = []
        for i in range(loads + 1):  # the first load warms the disk cache and the server
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{explorer}/#{fragment}")
            page.wait_for_selector("body[data-checked]", timeout=60_000)
            verdict = page.get_attribute("#verdict", "data-verdict")
            if verdict != "VERIFIED":
                raise AssertionError(f"page verdict {verdict}")
            if i:
                times.append(float(page.evaluate("window.verinferExplorer.timings.verdictMs")))
            if i < loads:
                context.close()
        page.click("#classify-iris")
        page.wait_for_selector("#receipt-verdict[data-verdict=VERIFIED]", timeout=60_000)
        result = {
            "loads": times,
            "first_receipt": float(page.evaluate("window.verinferExplorer.timings.lastReceiptMs")),
            "per_receipt": float(page.evaluate(f"window.verinferExplorer.benchReceipts({receipts})")),
            "exchange": page.evaluate("window.verinferExplorer.state.lastExchange"),
        }
        browser.close()
    return result


def python_receipts(enclave: str, policy: Policy, exchange: dict[str, str], receipts: int) -> float:
    """Milliseconds per `verify_inference` of the page's answer, reusing the verified document as the page."""
    document = httpx.get(f"{enclave}/attestation", headers={"accept": "application/cbor"}).content
    manifest = manifest_from_json(httpx.get(f"{enclave}/models").json())
    response = orjson.loads(exchange["response"])
    verified = verify(document, policy)
    started = time.perf_counter()
    for _ in range(receipts):
        report = verify_inference(
            response,
            document,
            policy=policy,
            request=orjson.loads(exchange["request"]),
            manifest=manifest,
            verified=verified,
        )
    elapsed = (time.perf_counter() - started) * 1000 / receipts
    if not report.verified:
        raise AssertionError([c for c in report.checks if c.status == "fail"])
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, default=15, help="page loads to a full verdict")
    parser.add_argument("--receipts", type=int, default=300, help="receipt verifications on each side")
    args = parser.parse_args(argv)

    measured = measure_image(REPO / "models")
    fragment = "&".join(f"pcr{i}={measured.pcrs[i].hex()}" for i in range(3)) + "&check=1"
    with tempfile.TemporaryDirectory() as pki:
        serve = ["--nsm", "sim", "--pki-dir", pki, "--no-llm", "--cors-origin", "*"]
        with (
            running_server(*serve) as enclave,
            running_explorer("--root", "sim", "--pki-dir", pki, "--enclave", enclave) as explorer,
        ):
            page = browser_side(explorer, fragment, args.loads, args.receipts)
            # The Python verifier on the same enclave, once the browser is gone (not competing for cores).
            policy = Policy(
                root=TrustedRoot.from_file(Path(pki) / "root.pem"), expected_pcrs=dict(measured.pcrs.items())
            )
            python_enclave_check(enclave, policy)  # warm-up
            python_checks = [python_enclave_check(enclave, policy) for _ in range(args.loads)]
            per_receipt_py = python_receipts(enclave, policy, page["exchange"], args.receipts)  # type: ignore[arg-type]

    loads: list[float] = page["loads"]  # type: ignore[assignment]
    per_receipt_js = float(page["per_receipt"])  # type: ignore[arg-type]
    page_p50, page_p95 = statistics.median(loads), percentile(loads, 0.95)
    py_p50, py_p95 = statistics.median(python_checks), percentile(python_checks, 0.95)
    print()
    print(f"{'':44}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"{'browser: page load to full verdict':44}{page_p50:10.1f}{page_p95:10.1f}   ({len(loads)} loads)")
    print(f"{'python: fetch + verify the same enclave':44}{py_p50:10.1f}{py_p95:10.1f}   (warm process)")
    print(f"{'ratio browser / python':44}{page_p50 / py_p50:10.2f}x")
    print()
    print(f"{'':44}{'ms/receipt':>10}")
    print(f"{'browser: verify a receipt (first, cold)':44}{float(page['first_receipt']):10.3f}")  # type: ignore[arg-type]
    print(f"{'browser: verify a receipt (warm)':44}{per_receipt_js:10.3f}   ({args.receipts} receipts)")
    print(f"{'python: verify_inference, same reuse':44}{per_receipt_py:10.3f}   ({args.receipts} receipts)")
    print(f"{'ratio browser / python':44}{per_receipt_js / per_receipt_py:10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
