"""`verinfer attest ...` as a user runs it: exit codes 0/1/2, input formats, JSON output."""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
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


# --- every command reads every form a document travels in (one reader: attestation.encoding) ---


def document_forms(tmp_path: Path, raw: bytes) -> dict[str, Path]:
    """The same document as raw COSE, hex, base64 and the JSON answer of GET /attestation."""
    texts = {
        "raw": raw,
        "hex": raw.hex().encode(),
        "base64": base64.b64encode(raw) + b"\n",
        "attestation-json": json.dumps(
            {"simulated": False, "format": "COSE_Sign1", "document": base64.b64encode(raw).decode()}
        ).encode(),
    }
    paths = {}
    for name, data in texts.items():
        paths[name] = tmp_path / f"doc.{name}"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("form", ["raw", "hex", "base64", "attestation-json"])
def test_inspect_and_verify_read_every_form(capsys, tmp_path: Path, form: str) -> None:
    path = document_forms(tmp_path, BASE_SAMPLE.read_bytes())[form]
    code, out, err = run(capsys, "attest", "inspect", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["module_id"] == "i-0f1cd77d37fd8bcc9-enc018e7aa61e2040ff"
    code, out, err = run(capsys, "attest", "verify", str(path), "--at-document-time", "--json")
    assert code == 0 and json.loads(out)["verified"], err


def test_attestation_json_reads_from_stdin() -> None:
    body = json.dumps({"document": base64.b64encode(BASE_SAMPLE.read_bytes()).decode()}).encode()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "verinfer"), "attest", "inspect", "-"],
        input=body,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"module_id:  i-0f1cd77d37fd8bcc9" in result.stdout


@pytest.mark.parametrize("body", ['{"document": 5}', '{"nonce": "00"}', '{"document": "not base64!"}', "{"])
def test_attestation_json_without_a_document_is_a_usage_error(capsys, tmp_path: Path, body: str) -> None:
    path = tmp_path / "attestation.json"
    path.write_text(body)
    for command in ("inspect", "verify"):
        code, _, err = run(capsys, "attest", command, str(path))
        assert code == 2 and "attestation JSON" in err


def test_reader_is_the_one_verinfer_verify_uses(tmp_path: Path) -> None:
    from attestation.encoding import read_document_bytes
    from verinfer.verify import load_attestation

    raw = BASE_SAMPLE.read_bytes()
    for path in document_forms(tmp_path, raw).values():
        assert load_attestation(path.read_bytes()) == read_document_bytes(path.read_bytes()) == raw


# --- a timestamp past year 9999 ---


@pytest.fixture
def far_future_document(tmp_path: Path) -> Path:
    import dataclasses

    from attestation.cose import encode_sign1
    from attestation.document import decode

    signed = decode(BASE_SAMPLE.read_bytes())
    doc = dataclasses.replace(signed.document, timestamp_ms=2**63)
    path = tmp_path / "far-future.cbor"
    path.write_bytes(encode_sign1(signed.cose.protected, doc.encode_payload(), signed.cose.signature))
    return path


def test_inspect_timestamp_out_of_range(capsys, far_future_document: Path) -> None:
    code, out, err = run(capsys, "attest", "inspect", str(far_future_document))
    assert code == 0, err
    assert f"OUT OF RANGE (past year 9999) ({2**63} ms)" in out
    code, out, err = run(capsys, "attest", "inspect", "--json", str(far_future_document))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["timestamp"] is None and summary["timestamp_ms"] == 2**63


def test_verify_timestamp_out_of_range(capsys, far_future_document: Path) -> None:
    code, _, err = run(capsys, "attest", "verify", str(far_future_document), "--at-document-time")
    assert code == 2 and "past year 9999" in err
    code, out, _ = run(capsys, "attest", "verify", str(far_future_document), "--at", "2024-12-13T07:40:00Z")
    assert code == 1 and out.startswith("REJECTED")


# --- the policy options are defined once ---


def option_strings(parser: argparse.ArgumentParser, group: str) -> set[str]:
    found = next(g for g in parser._action_groups if g.title == group)
    return {option for action in found._group_actions for option in action.option_strings}


def subcommand(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_policy_options_are_shared() -> None:
    from attestation.cli import add_policy_options
    from verinfer.cli import build_parser

    reference = argparse.ArgumentParser()
    add_policy_options(reference)
    shared = option_strings(reference, "attestation policy")
    assert shared == {
        "--root",
        "--pcr",
        "--allow-debug",
        "--nonce",
        "--max-age",
        "--at",
        "--at-document-time",
    }
    top = build_parser()
    for path in (("attest", "verify"), ("verify",)):
        command = subcommand(top, *path)
        assert option_strings(command, "attestation policy") == shared, path
        assert "--json" in command._option_string_actions


def test_policy_from_args() -> None:
    from attestation.cli import add_policy_options, policy_from_args

    parser = argparse.ArgumentParser()
    add_policy_options(parser, at=False, json_output=False, max_age=60)
    args = parser.parse_args(["--pcr", "0=aa", "--pcr", "2=0xbb", "--nonce", "0x01", "--allow-debug"])
    policy = policy_from_args(args)
    assert policy.root.is_aws and dict(policy.expected_pcrs) == {0: b"\xaa", 2: b"\xbb"}
    assert policy.expected_nonce == b"\x01" and policy.max_age_s == 60 and policy.allow_debug
    assert not hasattr(args, "at") and not hasattr(args, "json")
    assert policy_from_args(args, max_age_s=None).max_age_s is None


# --- the front door: help without a command, quiet on a closed pipe ---


def test_no_command_prints_help(capsys) -> None:
    code, out, err = run(capsys)
    assert code == 2 and not err
    assert out.startswith("usage: verinfer") and "attest" in out and "verify" in out and "relay" in out
    code, out, _ = run(capsys, "attest")
    assert code == 2 and "inspect" in out and "simulate" in out


VERINFER_SCRIPT = str(Path(sys.executable).parent / "verinfer")


def test_closed_stdout_ends_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
    try:
        result = subprocess.run(
            [VERINFER_SCRIPT, "attest", "inspect", "--json", str(BASE_SAMPLE)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.stderr == b"" and result.returncode == 141


@pytest.mark.parametrize(
    "argv",
    [
        ["attest", "inspect", "--json", str(BASE_SAMPLE)],
        ["attest", "inspect", str(BASE_SAMPLE)],
        ["attest", "verify", str(BASE_SAMPLE), "--at-document-time", "--json"],
        ["attest", "simulate", "--pki-dir", "{tmp}", "--format", "hex"],
        ["--help"],
        [],
    ],
)
def test_pipe_closed_early(tmp_path: Path, argv: list[str]) -> None:
    """`| true` closes the pipe before the command starts writing (it takes far longer to start)."""
    command = shlex.join([VERINFER_SCRIPT, *(a.format(tmp=tmp_path) for a in argv)])
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{command} | true"], capture_output=True, check=False
    )
    assert b"Traceback" not in result.stderr and b"BrokenPipe" not in result.stderr, result.stderr
    if argv in ([], ["--help"]):  # argparse prints help itself and ignores a closed pipe
        assert result.stderr == b"" and result.returncode == (0 if argv else 2)
    else:
        assert result.returncode == 141


def test_piped_into_head() -> None:
    command = shlex.join([VERINFER_SCRIPT, "attest", "inspect", "--json", str(BASE_SAMPLE)]) + " | head -c1"
    result = subprocess.run(["bash", "-c", command], capture_output=True, check=False)
    assert result.returncode == 0 and result.stdout == b"{" and result.stderr == b""
