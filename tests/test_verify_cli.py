"""`verinfer verify` on real server output: passes untouched, fails on any tampering."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from verinfer.cli import main
from verinfer.processes import VERINFER

REQUEST = {"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}


def collect_evidence(server: str, server_pki: Path, folder: Path) -> dict[str, Path]:
    """What an auditor keeps: request, response, a nonced attestation, the manifest, the root, and the
    image measurement they pin (`verinfer image measure --json`)."""
    files = {
        "request": REQUEST,
        "response": httpx.post(f"{server}/infer", json=REQUEST).json(),
        "attestation": httpx.get(f"{server}/attestation", params={"nonce": "5eed"}).json(),
        "manifest": httpx.get(f"{server}/models").json(),
    }
    paths = {name: folder / f"{name}.json" for name in files}
    for name, data in files.items():
        paths[name].write_text(json.dumps(data))
    paths["root"] = server_pki / "root.pem"
    paths["image"] = folder / "image.json"
    paths["image"].write_text(
        subprocess.run(
            [VERINFER, "image", "measure", "--json"], check=True, capture_output=True, text=True
        ).stdout
    )
    return paths


@pytest.fixture(scope="module")
def evidence(server: str, server_pki: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return collect_evidence(server, server_pki, tmp_path_factory.mktemp("evidence"))


def pin_argv(evidence: dict[str, Path]) -> list[str]:
    """--pcr 0=... --pcr 1=... --pcr 2=...: the simulator server's image, measured from this tree."""
    pcrs = json.loads(evidence["image"].read_text())["pcrs"]
    return [arg for index in ("0", "1", "2") for arg in ("--pcr", f"{index}={pcrs[index]}")]


def verify_argv(
    evidence: dict[str, Path], response: Path | None = None, *, as_json: bool = True, pin: bool = True
) -> list[str]:
    """`verinfer verify` with every piece of evidence: the response, request, attestation and manifest,
    the simulator's root and (with `pin`) the image's PCR0-2."""
    argv = ["verify", str(response or evidence["response"])]
    for option in ("attestation", "request", "manifest", "root"):
        argv += [f"--{option}", str(evidence[option])]
    if pin:
        argv += pin_argv(evidence)
    return [*argv, "--json"] if as_json else argv


def run_verify(
    capsys, evidence: dict[str, Path], response: Path | None = None, *extra: str
) -> tuple[int, dict]:
    code = main([*verify_argv(evidence, response), *extra])
    return code, json.loads(capsys.readouterr().out)


def statuses(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def tampered(evidence: dict[str, Path], tmp_path: Path, mutate) -> Path:
    response = copy.deepcopy(json.loads(evidence["response"].read_text()))
    mutate(response)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(response))
    return path


def test_untouched_evidence_verifies(capsys, evidence) -> None:
    code, report = run_verify(capsys, evidence)
    assert code == 0 and report["verified"] and report["simulated"] and report["pinned"]
    assert report["verdict"] == "VERIFIED"
    assert set(statuses(report).values()) == {"pass"}
    assert list(statuses(report)) == [
        "receipt",
        "attestation",
        "enclave_key",
        "signature",
        "encryption_key",  # the attestation JSON carries ohttpKeys: they must name the attested key
        "output_hash",
        "input_hash",
        "model",
    ]
    assert report["image_id"] == json.loads(evidence["image"].read_text())["imageId"]


def test_human_output(capsys, evidence) -> None:
    code = main(verify_argv(evidence, as_json=False))
    out = capsys.readouterr().out
    assert code == 0 and "VERIFIED [SIMULATED" in out and "[   PASS] signature" in out


def test_tampered_output(capsys, evidence, tmp_path) -> None:
    def mutate(r):
        r["outputs"][1]["data"] = [1]

    code, report = run_verify(capsys, evidence, tampered(evidence, tmp_path, mutate))
    assert code == 1 and statuses(report)["output_hash"] == "fail"


def test_tampered_output_hash_in_receipt(capsys, evidence, tmp_path) -> None:
    def mutate(r):
        r["receipt"]["outputHash"] = "0x" + "00" * 32

    code, report = run_verify(capsys, evidence, tampered(evidence, tmp_path, mutate))
    assert code == 1 and statuses(report)["signature"] == "fail" and statuses(report)["output_hash"] == "fail"


def test_tampered_input(capsys, evidence, tmp_path) -> None:
    other = tmp_path / "other-request.json"
    other.write_text(json.dumps({"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.4]]}))
    code, report = run_verify(capsys, {**evidence, "request": other})
    assert code == 1 and statuses(report)["input_hash"] == "fail"


def test_tampered_model_hash(capsys, evidence, tmp_path) -> None:
    def mutate(r):
        r["receipt"]["modelHash"] = "0x" + "11" * 32

    code, report = run_verify(capsys, evidence, tampered(evidence, tmp_path, mutate))
    assert code == 1 and statuses(report)["signature"] == "fail" and statuses(report)["model"] == "fail"


def test_tampered_timestamp(capsys, evidence, tmp_path) -> None:
    def mutate(r):
        r["receipt"]["timestampMs"] += 1

    code, report = run_verify(capsys, evidence, tampered(evidence, tmp_path, mutate))
    assert code == 1 and statuses(report)["signature"] == "fail"


def test_tampered_signature(capsys, evidence, tmp_path) -> None:
    def mutate(r):
        sig = r["receipt"]["signature"]
        r["receipt"]["signature"] = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]

    code, report = run_verify(capsys, evidence, tampered(evidence, tmp_path, mutate))
    assert code == 1 and statuses(report)["signature"] == "fail"


def test_receipt_from_another_enclave(capsys, evidence, tmp_path) -> None:
    def mutate(r):
        r["receipt"]["enclave"] = "0x" + "22" * 20

    code, report = run_verify(capsys, evidence, tampered(evidence, tmp_path, mutate))
    assert code == 1 and statuses(report)["enclave_key"] == "fail"


def test_attestation_against_the_aws_root(capsys, evidence) -> None:
    code = main(
        [
            "verify",
            str(evidence["response"]),
            "--attestation",
            str(evidence["attestation"]),
            *pin_argv(evidence),
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and statuses(report)["attestation"] == "fail"
    assert "root_not_trusted" in report["checks"][1]["detail"]


def test_wrong_pcr_policy(capsys, evidence) -> None:
    code, report = run_verify(capsys, evidence, None, "--pcr", "0=" + "00" * 48)
    assert code == 1 and "pcr_mismatch" in report["checks"][1]["detail"]


def test_manifest_that_was_not_attested(capsys, evidence, tmp_path) -> None:
    manifest = json.loads(evidence["manifest"].read_text())
    manifest["models"][0]["version"] = "2"
    other = tmp_path / "manifest.json"
    other.write_text(json.dumps(manifest))
    code, report = run_verify(capsys, {**evidence, "manifest": other})
    assert code == 1 and statuses(report)["model"] == "fail"
    assert "not the attested user_data" in {c["name"]: c["detail"] for c in report["checks"]}["model"]


def test_missing_request_is_reported_as_skipped(capsys, evidence) -> None:
    code = main(
        [
            "verify",
            str(evidence["response"]),
            "--attestation",
            str(evidence["attestation"]),
            "--root",
            str(evidence["root"]),
            *pin_argv(evidence),
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["verdict"] == "VERIFIED"
    assert statuses(report)["input_hash"] == "skipped" and statuses(report)["model"] == "skipped"


def test_usage_errors(capsys, evidence, tmp_path) -> None:
    assert (
        main(["verify", str(tmp_path / "missing.json"), "--attestation", str(evidence["attestation"])]) == 2
    )
    bad = tmp_path / "bad-attestation.json"
    bad.write_text('{"document": 5}')
    assert main(["verify", str(evidence["response"]), "--attestation", str(bad)]) == 2
