"""`verinfer attest ...` as a user runs it: exit codes 0/1/2, input formats, JSON output."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from verinfer.cli import main

from .conftest import BASE_SAMPLE, FIXTURES


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_hardware_document(capsys) -> None:
    code, out, _ = run(capsys, "attest", "verify", str(BASE_SAMPLE), "--at-document-time")
    assert code == 0
    assert out.startswith("VERIFIED against AWS Nitro Enclaves root G1")
    assert "SIMULATED" not in out


def test_verify_json_and_policy(capsys) -> None:
    pcr0 = "189038eccf28a3a098949e402f3b3d86a876f4915c5b02d546abb5d8c507ceb1755b8192d8cfca66e8f226160ca4c7a6"
    code, out, _ = run(
        capsys, "attest", "verify", str(BASE_SAMPLE), "--at-document-time", "--pcr", f"0={pcr0}", "--json"
    )
    assert code == 0
    report = json.loads(out)
    assert report["verified"] and not report["simulated"] and report["pcrs"]["0"] == pcr0


def test_rejection_exit_code_and_reason(capsys) -> None:
    code, out, _ = run(
        capsys, "attest", "verify", str(BASE_SAMPLE), "--at-document-time", "--pcr", "0=00", "--json"
    )
    assert code == 1
    assert json.loads(out) == {
        "verified": False,
        "reason": "pcr_mismatch",
        "detail": json.loads(out)["detail"],
    }


def test_expired_now(capsys) -> None:
    code, out, _ = run(capsys, "attest", "verify", str(BASE_SAMPLE))
    assert code == 1 and out.startswith("REJECTED cert_expired")


def test_verify_at_explicit_time(capsys) -> None:
    assert run(capsys, "attest", "verify", str(BASE_SAMPLE), "--at", "2024-12-13T07:40:00Z")[0] == 0
    assert run(capsys, "attest", "verify", str(BASE_SAMPLE), "--at", "2024-12-13T07:40:00")[0] == 0


@pytest.mark.parametrize("encoding", ["hex", "0xhex", "base64", "base64url"])
def test_text_encodings(capsys, tmp_path: Path, encoding: str) -> None:
    raw = BASE_SAMPLE.read_bytes()
    text = {
        "hex": raw.hex(),
        "0xhex": "0x" + raw.hex() + "\n",
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }[encoding]
    path = tmp_path / "doc.txt"
    path.write_text(text)
    assert run(capsys, "attest", "verify", str(path), "--at-document-time")[0] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["attest", "verify", "/nonexistent/doc"],
        ["attest", "verify", str(BASE_SAMPLE), "--pcr", "zero=00"],
        ["attest", "verify", str(BASE_SAMPLE), "--nonce", "xyz"],
        ["attest", "verify", str(BASE_SAMPLE), "--at", "yesterday"],
        ["attest", "verify", str(BASE_SAMPLE), "--root", "/nonexistent.pem"],
        ["attest", "verify", str(BASE_SAMPLE), "--at", "2024-01-01", "--at-document-time"],
        ["attest", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(capsys, argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err


def test_inspect(capsys) -> None:
    code, out, _ = run(capsys, "attest", "inspect", str(BASE_SAMPLE), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["module_id"] == "i-0f1cd77d37fd8bcc9-enc018e7aa61e2040ff"
    assert not summary["simulated"] and len(summary["pcrs"]) == 16


def test_inspect_malformed(capsys) -> None:
    bad = FIXTURES / "invalid" / "base_nitro-validator__realAttestation_as_committed_corrupt.cbor"
    code, _, err = run(capsys, "attest", "inspect", str(bad))
    assert code == 1 and "malformed:cose" in err


def test_simulate_then_verify(capsys, tmp_path: Path) -> None:
    pki, doc = tmp_path / "pki", tmp_path / "doc.b64"
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "app.py").write_text("x = 1\n")
    code, _, err = run(
        capsys,
        "attest",
        "simulate",
        "--pki-dir",
        str(pki),
        "--measure",
        str(tmp_path / "image"),
        "--nonce",
        "abcd",
        "--public-key",
        "04" * 65,
        "--format",
        "base64",
        "-o",
        str(doc),
    )
    assert code == 0 and "SIMULATED" in err
    code, out, _ = run(capsys, "attest", "inspect", str(doc))
    assert code == 0 and "*** SIMULATED" in out
    code, out, _ = run(
        capsys,
        "attest",
        "verify",
        str(doc),
        "--root",
        str(pki / "root.pem"),
        "--nonce",
        "abcd",
        "--max-age",
        "60",
    )
    assert code == 0 and "[SIMULATED]" in out
    assert run(capsys, "attest", "verify", str(doc), "--root", "aws")[0] == 1


def test_simulate_rejects_bad_pcr_index(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "attest", "simulate", "--pki-dir", str(tmp_path), "--pcr", "16=" + "00" * 48)
    assert code == 2 and "below 16" in err


def test_console_script_reads_stdin(tmp_path: Path) -> None:
    verinfer = Path(sys.executable).parent / "verinfer"
    result = subprocess.run(
        [str(verinfer), "attest", "verify", "-", "--at-document-time"],
        input=BASE_SAMPLE.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"VERIFIED")
