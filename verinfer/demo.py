"""`make demo`: the end-to-end walk-through, printing each step and the command behind it."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from attestation.measure import measure_tree

from .cli import main as verinfer

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


def main() -> None:
    WORK.mkdir(exist_ok=True)
    pki = WORK / "sim-pki"
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

    print("\nDemo complete.")


if __name__ == "__main__":
    main()
