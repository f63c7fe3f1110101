"""`make demo`: the end-to-end walk-through, printing each step and the command behind it."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from attestation.measure import measure_tree

from .cli import main as verinfer
from .processes import running_server

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".demo"
HARDWARE_SAMPLE = REPO / "tests/fixtures/attestation/valid/marlin_oyster__risczero_testcase_aws.bin"
MEASURED = ["attestation", "enclave"]


def step(title: str) -> None:
    print(f"\n=== {title}")


def run(*argv: str, expect: int = 0) -> None:
    print("$ verinfer " + shlex.join(argv), flush=True)
    code = verinfer(list(argv))
    sys.stdout.flush()
    if code != expect:
        raise SystemExit(f"demo: expected exit {expect}, got {code}")


def show_json(label: str, data: object, limit: int = 400) -> None:
    text = json.dumps(data, separators=(",", ":"))
    print(f"{label}: {text[:limit]}{'...' if len(text) > limit else ''}")


def attestation_steps(pki: Path) -> None:
    document = WORK / "attestation.cbor"
    nonce = os.urandom(16).hex()

    step("1. Measure the enclave code the simulator will attest (PCR0/1/2, nitro-cli style)")
    measurement = measure_tree(REPO, app=MEASURED)
    for index, value in measurement.pcrs.items():
        print(f"PCR{index} {value.hex()}")

    step("2. A simulated NSM attests a public key with a verifier's fresh nonce")
    run(
        "attest",
        "simulate",
        "--pki-dir",
        str(pki),
        "--measure",
        str(REPO),
        *(arg for path in MEASURED for arg in ("--app", path)),
        "--public-key",
        "04" + "ab" * 64,
        "--nonce",
        nonce,
        "-o",
        str(document),
    )

    step("3. Inspect it (decoding only)")
    run("attest", "inspect", str(document))

    step("4. Verify against the simulator's root with a PCR and nonce policy")
    run(
        "attest",
        "verify",
        str(document),
        "--root",
        str(pki / "root.pem"),
        "--pcr",
        f"0={measurement.pcr0.hex()}",
        "--pcr",
        f"2={measurement.pcr2.hex()}",
        "--nonce",
        nonce,
        "--max-age",
        "60",
    )

    step("5. The same document against the AWS Nitro root is rejected: a simulation never passes as hardware")
    run("attest", "verify", str(document), "--root", "aws", expect=1)

    step("6. A real hardware document verifies against the pinned AWS root at its own timestamp")
    run("attest", "verify", str(HARDWARE_SAMPLE), "--root", "aws", "--at-document-time")


def demo_requests() -> dict[str, dict[str, object]]:
    mnist = np.load(REPO / "models" / "data" / "mnist-eval.npz")
    return {
        "iris-ols": {"model": "iris-ols", "inputs": [[5.1, 3.5, 1.4]]},
        "iris-mlp": {"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]},
        "mnist-lenet": {
            "model": "mnist-lenet",
            "inputs": (mnist["x"][:1, None] / 255.0).round(4).tolist(),
            "_label": int(mnist["y"][0]),
        },
    }


def inference_steps(pki: Path) -> None:
    step("7. Start the enclave server (simulated NSM): key generated in memory, attestation, models warmed")
    print(f"$ verinfer serve --nsm sim --pki-dir {pki}   (log: {WORK / 'server.log'})")
    with (
        running_server("--nsm", "sim", "--pki-dir", str(pki), log=WORK / "server.log") as url,
        httpx.Client(base_url=url) as client,
    ):
        print(f"ready at {url}")
        manifest = client.get("/models").json()
        (WORK / "manifest.json").write_text(json.dumps(manifest))
        names = ", ".join(m["name"] for m in manifest["models"])
        print(f"models: {names}; manifest digest {manifest['digest']}")

        step("8. One signed inference per model (POST /infer)")
        for name, request in demo_requests().items():
            expected = request.pop("_label", None)
            started = time.perf_counter()
            response = client.post("/infer", json=request)
            elapsed_ms = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            body = response.json()
            (WORK / f"request-{name}.json").write_text(json.dumps(request))
            (WORK / f"response-{name}.json").write_text(json.dumps(body))
            outputs = {o["name"]: o["data"] for o in body["outputs"]}
            print(f"\n{name}: {json.dumps(outputs)[:160]} ({elapsed_ms:.1f} ms round trip)")
            if expected is not None:
                print(f"  true digit: {expected}")
            show_json("  receipt", body["receipt"], 600)

        step("9. An auditor fetches a fresh attestation with their own nonce (GET /attestation?nonce=...)")
        nonce = os.urandom(16).hex()
        attestation = client.get("/attestation", params={"nonce": nonce}).json()
        (WORK / "enclave-attestation.json").write_text(json.dumps(attestation))
        print(f"nonce {nonce}; simulated={attestation['simulated']}; enclave {attestation['enclave']}")
        print(f"attested PCR0 {attestation['summary']['pcrs']['0']}")

    step("10. Verify every receipt offline (chain, PCRs, key binding, signature, hashes, manifest)")
    for name in demo_requests():
        run(
            "verify",
            str(WORK / f"response-{name}.json"),
            "--request",
            str(WORK / f"request-{name}.json"),
            "--attestation",
            str(WORK / "enclave-attestation.json"),
            "--manifest",
            str(WORK / "manifest.json"),
            "--root",
            str(pki / "root.pem"),
        )

    step("11. A tampered answer is caught: change the predicted class and verify again")
    forged = json.loads((WORK / "response-iris-mlp.json").read_text())
    forged["outputs"][1]["data"] = [0]
    (WORK / "forged-iris-mlp.json").write_text(json.dumps(forged))
    run(
        "verify",
        str(WORK / "forged-iris-mlp.json"),
        "--request",
        str(WORK / "request-iris-mlp.json"),
        "--attestation",
        str(WORK / "enclave-attestation.json"),
        "--manifest",
        str(WORK / "manifest.json"),
        "--root",
        str(pki / "root.pem"),
        expect=1,
    )


def main() -> None:
    WORK.mkdir(exist_ok=True)
    pki = WORK / "sim-pki"
    attestation_steps(pki)
    inference_steps(pki)
    print(f"\nDemo complete. Evidence files are in {WORK}.")


if __name__ == "__main__":
    main()
