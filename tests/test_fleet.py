"""Two enclaves behind one address: Debian's nginx (verinfer/fleet.py's configuration) in front of two real
`verinfer serve --nsm sim`, each with its own key. The Python client and `verinfer verify --enclave` verify
every answer, whichever enclave signed it, and stopping one enclave mid-run costs no request."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from attestation import Policy, TrustedRoot
from enclave.image import measure_image
from protocol.images import image_id
from verinfer.client import Client, UnknownSignerError
from verinfer.processes import VERINFER, free_port, running_nginx, running_server, stop, wait_ready

REPO = Path(__file__).resolve().parent.parent
IRIS = [[6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet-pki")


@pytest.fixture(scope="module")
def image() -> str:
    return "0x" + image_id(dict(measure_image(REPO / "models").pcrs)).hex()


@pytest.fixture(scope="module")
def trust(pki: Path, enclaves: list[str]) -> Policy:
    return Policy(root=TrustedRoot.from_file(pki / "root.pem"))


@pytest.fixture(scope="module")
def enclaves(pki: Path) -> Iterator[list[str]]:
    args = ("--nsm", "sim", "--pki-dir", str(pki), "--no-llm")
    with running_server(*args) as first, running_server(*args) as second:
        yield [first, second]


@pytest.fixture(scope="module")
def fleet(enclaves: list[str]) -> Iterator[str]:
    with running_nginx(enclaves) as url:
        yield url


def signer(url: str) -> str:
    return str(httpx.get(f"{url}/attestation").json()["enclave"])


def test_each_enclave_answers_for_its_own_signer_only(fleet: str, enclaves: list[str]) -> None:
    first, second = (signer(url) for url in enclaves)
    assert first != second
    for address in (first, second, first.lower()):
        # through the proxy, whichever enclave nginx tries first: only the signer's own document comes back
        answer = httpx.get(f"{fleet}/attestation", params={"signer": address, "nonce": "ab" * 32})
        assert answer.status_code == 200
        assert answer.json()["enclave"].lower() == address.lower()
    unknown = httpx.get(f"{fleet}/attestation", params={"signer": "0x" + "11" * 20})
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "unknown_signer"
    bad = httpx.get(f"{enclaves[0]}/attestation", params={"signer": "0x1234"})
    assert bad.status_code == 400


def test_client_verifies_answers_from_both_enclaves(
    fleet: str, enclaves: list[str], trust: Policy, image: str
) -> None:
    with Client(fleet, trust, image_ids=[image]) as client:
        signers = Counter(client.infer("iris-mlp", IRIS).receipt["enclave"] for _ in range(30))
        assert set(signers) == {signer(url) for url in enclaves}, signers
        assert sorted(e.enclave for e in client.enclaves) == sorted(signers)
        assert all(e.image_id == image for e in client.enclaves)


def test_client_refuses_a_signer_no_enclave_of_the_fleet_is(fleet: str, trust: Policy, image: str) -> None:
    with Client(fleet, trust, image_ids=[image]) as client, pytest.raises(UnknownSignerError):
        client.attest("0x" + "11" * 20)


def verify_cli(
    response: Path, request: Path, fleet: str, pki: Path, image: str
) -> subprocess.CompletedProcess[str]:
    command = [VERINFER, "verify", str(response), "--request", str(request), "--enclave", fleet]
    command += ["--root", str(pki / "root.pem"), "--image-id", image]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_verify_cli_fetches_the_signers_attestation(
    fleet: str, enclaves: list[str], pki: Path, image: str, tmp_path: Path
) -> None:
    request = {"model": "iris-mlp", "inputs": IRIS}
    (tmp_path / "request.json").write_text(json.dumps(request))
    for index, url in enumerate(enclaves):  # one answer signed by each enclave, verified through the proxy
        response = tmp_path / f"response{index}.json"
        response.write_bytes(httpx.post(f"{url}/infer", json=request).content)
        done = verify_cli(response, tmp_path / "request.json", fleet, pki, image)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "VERIFIED" in done.stdout
        assert signer(url) in done.stdout  # the enclave_key check names the signer it attested
    forged = json.loads((tmp_path / "response0.json").read_text())
    forged["receipt"]["enclave"] = "0x" + "11" * 20
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    done = verify_cli(tmp_path / "forged.json", tmp_path / "request.json", fleet, pki, image)
    assert done.returncode == 1
    assert "no enclave behind" in done.stdout


def test_one_enclave_stopped_mid_run_costs_no_request(pki: Path, trust: Policy, image: str) -> None:
    """Its own fleet: one of its enclaves is stopped (SIGTERM, as a rolling restart does) while requests
    flow; every request is answered and verified, by the survivor once the other is gone."""
    args = ("--nsm", "sim", "--pki-dir", str(pki), "--no-llm")
    with running_server(*args) as survivor:
        victim_port = free_port()  # the survivor holds its port: never this one
        victim_url = f"http://127.0.0.1:{victim_port}"
        victim = subprocess.Popen(
            [VERINFER, "serve", "--host", "127.0.0.1", "--port", str(victim_port), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(victim_url, victim)
            with (
                running_nginx([survivor, victim_url]) as url,
                Client(url, trust, image_ids=[image]) as client,
            ):
                answered: list[str] = []
                failures: list[BaseException] = []
                stopped = threading.Event()

                def stop_victim() -> None:
                    time.sleep(1.0)
                    stop(victim)
                    stopped.set()

                stopper = threading.Thread(target=stop_victim)
                stopper.start()
                deadline = time.monotonic() + 4.0
                while time.monotonic() < deadline or not stopped.is_set():
                    try:
                        answered.append(client.infer("iris-mlp", IRIS).receipt["enclave"])
                    except Exception as exc:  # any failure is what this test counts
                        failures.append(exc)
                stopper.join()
                assert failures == []
                counts = Counter(answered)
                assert len(counts) == 2, counts  # both served before the stop
                assert answered[-1] == signer(survivor)
        finally:
            stop(victim)


def test_generated_configuration_is_valid_nginx(tmp_path: Path) -> None:
    from verinfer.fleet import nginx_binary, nginx_config

    config = nginx_config("127.0.0.1:1", ["127.0.0.1:2", "[::1]:3"], prefix=tmp_path, run_as="root")
    (tmp_path / "nginx.conf").write_text(config)
    done = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = subprocess.run(
        [VERINFER, "fleet", "nginx-config", "--listen", "0.0.0.0:80", "--enclave", "10.0.0.1:8000"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "server 10.0.0.1:8000 max_fails=1" in printed
    assert "proxy_next_upstream error timeout http_404" in printed
