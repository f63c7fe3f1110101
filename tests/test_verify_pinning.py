"""`verinfer verify`: no VERIFIED without a pinned image; the auditor's nonce and freshness; requests checked
without a manifest; an answer from another model or for another request id is caught."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from onnx import TensorProto, helper, save

from attestation.document import decode
from verinfer.cli import main
from verinfer.processes import running_server

from .test_verify_cli import collect_evidence, statuses, verify_argv

MODELS = Path(__file__).resolve().parent.parent / "models"
FEATURES = [[6.7, 3.0, 5.2, 2.3]]


def verify_json(capsys, argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.fixture(scope="module")
def evidence(server: str, server_pki: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return collect_evidence(server, server_pki, tmp_path_factory.mktemp("evidence"))


def details(report: dict) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"]}


def image(evidence: dict[str, Path]) -> dict[str, Any]:
    """`verinfer image measure --json`: {"pcrs": {"0": HEX, ...}, "imageId": 0xHEX, "files": [...]}."""
    measured: dict[str, Any] = json.loads(evidence["image"].read_text())
    return measured


# --- 1. the image must be pinned ---


def test_unpinned_is_not_verified(capsys, evidence) -> None:
    code, report = verify_json(capsys, verify_argv(evidence, pin=False))
    assert code == 1 and report["verdict"] == "UNPINNED"
    assert not report["verified"] and not report["pinned"]
    assert set(statuses(report).values()) == {"pass"}  # every check passed: only the pin is missing
    assert "NOT pinned" in details(report)["attestation"]


def test_unpinned_human_output(capsys, evidence) -> None:
    code = main(verify_argv(evidence, as_json=False, pin=False))
    last = capsys.readouterr().out.splitlines()[-1]
    assert code == 1 and last.startswith("UNPINNED") and "--allow-any-image" in last


@pytest.mark.parametrize("indices", [("0",), ("0", "1"), ("1", "2")])
def test_some_pcrs_are_not_a_pin(capsys, evidence, indices: tuple[str, ...]) -> None:
    pcrs = image(evidence)["pcrs"]
    partial = [arg for i in indices for arg in ("--pcr", f"{i}={pcrs[i]}")]
    code, report = verify_json(capsys, [*verify_argv(evidence, pin=False), *partial])
    assert code == 1 and report["verdict"] == "UNPINNED"


def test_allow_any_image_says_so(capsys, evidence) -> None:
    code, report = verify_json(capsys, [*verify_argv(evidence, pin=False), "--allow-any-image"])
    assert code == 0 and report["verdict"] == "VERIFIED" and report["verified"]
    assert report["pinned"] is False
    code = main([*verify_argv(evidence, as_json=False, pin=False), "--allow-any-image"])
    last = capsys.readouterr().out.splitlines()[-1]
    assert code == 0 and last.startswith("VERIFIED (ANY IMAGE: not pinned)")


def test_allow_any_image_does_not_hide_a_failure(capsys, evidence) -> None:
    argv = [*verify_argv(evidence, pin=False), "--allow-any-image", "--pcr", "0=" + "00" * 48]
    code, report = verify_json(capsys, argv)
    assert code == 1 and report["verdict"] == "REJECTED"


def test_image_id_pins(capsys, evidence) -> None:
    wanted = image(evidence)["imageId"]
    code, report = verify_json(capsys, [*verify_argv(evidence, pin=False), "--image-id", wanted])
    assert code == 0 and report["verdict"] == "VERIFIED" and report["pinned"]
    other = "0x" + "ab" * 32
    argv = [*verify_argv(evidence, pin=False), "--image-id", other, "--image-id", wanted]
    assert verify_json(capsys, argv)[0] == 0  # any of the pinned images
    code, report = verify_json(capsys, [*verify_argv(evidence, pin=False), "--image-id", other])
    assert code == 1 and report["verdict"] == "REJECTED"
    assert details(report)["attestation"].startswith("image_mismatch")


@pytest.mark.parametrize("value", ["0x1234", "zz", ""])
def test_bad_image_id_is_a_usage_error(capsys, evidence, value: str) -> None:
    assert main([*verify_argv(evidence, pin=False), "--image-id", value]) == 2
    assert "image id" in capsys.readouterr().err


def write_policy(tmp_path: Path, policy: dict) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    return path


def without_root(argv: list[str]) -> list[str]:
    index = argv.index("--root")
    return argv[:index] + argv[index + 2 :]


def test_policy_file_with_pcrs_and_relative_root(capsys, evidence, tmp_path) -> None:
    shutil.copyfile(evidence["root"], tmp_path / "root.pem")
    pcrs = {i: image(evidence)["pcrs"][i] for i in ("0", "1", "2")}
    policy = write_policy(tmp_path, {"root": "root.pem", "pcrs": pcrs, "max_age_s": 3600})
    argv = [*without_root(verify_argv(evidence, pin=False)), "--policy", str(policy)]
    code, report = verify_json(capsys, argv)
    assert code == 0 and report["verdict"] == "VERIFIED" and report["pinned"] and report["simulated"]
    assert "at most 3600 s old" in details(report)["attestation"]


def test_policy_file_with_image_ids(capsys, evidence, tmp_path) -> None:
    policy = write_policy(tmp_path, {"image_ids": [image(evidence)["imageId"]], "allow_debug": False})
    code, report = verify_json(capsys, [*verify_argv(evidence, pin=False), "--policy", str(policy)])
    assert code == 0 and report["verdict"] == "VERIFIED"


def test_command_line_wins_over_the_policy_file(capsys, evidence, tmp_path) -> None:
    pcrs = image(evidence)["pcrs"]
    policy = write_policy(tmp_path, {"pcrs": {"0": "00" * 48, "1": pcrs["1"], "2": pcrs["2"]}})
    argv = [*verify_argv(evidence, pin=False), "--policy", str(policy)]
    code, report = verify_json(capsys, argv)
    assert code == 1 and "pcr_mismatch" in details(report)["attestation"]
    assert verify_json(capsys, [*argv, "--pcr", f"0={pcrs['0']}"])[0] == 0
    images = write_policy(tmp_path, {"image_ids": ["0x" + "ab" * 32]})
    argv = [*verify_argv(evidence, pin=False), "--policy", str(images)]
    assert verify_json(capsys, argv)[0] == 1
    assert verify_json(capsys, [*argv, "--image-id", image(evidence)["imageId"]])[0] == 0


def test_policy_without_a_pin_is_unpinned(capsys, evidence, tmp_path) -> None:
    policy = write_policy(tmp_path, {"max_age_s": 3600})
    code, report = verify_json(capsys, [*verify_argv(evidence, pin=False), "--policy", str(policy)])
    assert code == 1 and report["verdict"] == "UNPINNED"


@pytest.mark.parametrize(
    "policy",
    [
        {"pcr": {"0": "00"}},  # a typo must not silently unpin
        {"pcrs": {"zero": "00"}},
        {"pcrs": {"0": "xyz"}},
        {"image_ids": "0x00"},
        {"image_ids": ["0x00"]},
        {"allow_debug": "yes"},
        {"max_age_s": "60"},
        {"root": 5},
        ["not", "an", "object"],
    ],
)
def test_bad_policy_is_a_usage_error(capsys, evidence, tmp_path, policy) -> None:
    path = write_policy(tmp_path, policy)
    assert main([*verify_argv(evidence, pin=False), "--policy", str(path)]) == 2
    err = capsys.readouterr().err
    assert "polic" in err or "image id" in err


# --- 2. the auditor's nonce and freshness ---


def test_nonce(capsys, evidence) -> None:
    code, report = verify_json(capsys, [*verify_argv(evidence), "--nonce", "5eed"])
    assert code == 0 and "your nonce" in details(report)["attestation"]
    code, report = verify_json(capsys, [*verify_argv(evidence), "--nonce", "0x5eed"])
    assert code == 0
    code, report = verify_json(capsys, [*verify_argv(evidence), "--nonce", "beef"])
    assert code == 1 and details(report)["attestation"].startswith("nonce_mismatch")
    assert main([*verify_argv(evidence), "--nonce", "xyz"]) == 2


def test_max_age(capsys, evidence) -> None:
    document = json.loads(evidence["attestation"].read_text())["document"]
    issued = datetime.fromtimestamp(decode(base64.b64decode(document)).document.timestamp_ms / 1000, UTC)
    later = (issued + timedelta(seconds=120)).isoformat()
    code, report = verify_json(capsys, [*verify_argv(evidence), "--max-age", "600", "--at", later])
    assert code == 0 and "at most 600 s old" in details(report)["attestation"]
    code, report = verify_json(capsys, [*verify_argv(evidence), "--max-age", "60", "--at", later])
    assert code == 1 and details(report)["attestation"].startswith("stale")


# --- 3. a request without a manifest ---


def test_request_without_manifest_is_skipped_not_failed(capsys, evidence) -> None:
    argv = verify_argv(evidence)
    index = argv.index("--manifest")
    code, report = verify_json(capsys, argv[:index] + argv[index + 2 :])
    assert code == 0 and report["verdict"] == "VERIFIED"
    assert statuses(report)["input_hash"] == "skipped" and "manifest" in details(report)["input_hash"]
    assert statuses(report)["model"] == "skipped"


V2_REQUEST = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [6.7, 3.0, 5.2, 2.3]}],
    "parameters": {"request_id": "0x" + "77" * 32},
}


def v2_evidence(server: str, folder: Path, evidence: dict[str, Path], model: str, request: dict) -> dict:
    response = httpx.post(f"{server}/v2/models/{model}/infer", json=request)
    assert response.status_code == 200, response.text
    paths = dict(evidence)
    for name, data in (("request", request), ("response", response.json())):
        paths[name] = folder / f"v2-{name}.json"
        paths[name].write_text(json.dumps(data))
    return paths


def no_manifest(argv: list[str]) -> list[str]:
    index = argv.index("--manifest")
    return argv[:index] + argv[index + 2 :]


def test_self_describing_request_without_manifest(capsys, server, evidence, tmp_path) -> None:
    paths = v2_evidence(server, tmp_path, evidence, "iris-mlp", V2_REQUEST)
    code, report = verify_json(capsys, [*no_manifest(verify_argv(paths)), "--model", "iris-mlp"])
    assert code == 0 and statuses(report)["input_hash"] == "pass", report
    assert statuses(report)["request_id"] == "pass"
    tampered = json.loads(json.dumps(V2_REQUEST))
    tampered["inputs"][0]["data"][3] = 2.4
    paths["request"].write_text(json.dumps(tampered))
    code, report = verify_json(capsys, [*no_manifest(verify_argv(paths)), "--model", "iris-mlp"])
    assert code == 1 and statuses(report)["input_hash"] == "fail"


# --- 4. the model and the request id the request names ---


def write_double_model(path: Path) -> None:
    """scaled = 2 * features over float32 [N, 4]: the same input signature as iris-mlp, another model."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["features", "two"], ["scaled"])],
        "double",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with iris-mlp and iris-double (same input schema), and its evidence files."""
    import hashlib

    folder = tmp_path_factory.mktemp("two-models")
    models = folder / "models"
    shutil.copytree(MODELS, models)
    write_double_model(models / "iris-double.onnx")
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["models"].append(
        {
            "name": "iris-double",
            "version": "1",
            "file": "iris-double.onnx",
            "sha256": hashlib.sha256((models / "iris-double.onnx").read_bytes()).hexdigest(),
            "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 4]}],
            "outputs": [{"name": "scaled", "dtype": "float32", "shape": [-1, 4]}],
        }
    )
    (models / "manifest.json").write_text(json.dumps(manifest))
    pki = folder / "pki"
    with running_server("--nsm", "sim", "--pki-dir", str(pki), "--models", str(models)) as url:
        evidence: dict[str, Any] = {"url": url, "root": pki / "root.pem"}
        for name, data in (
            ("attestation", httpx.get(f"{url}/attestation").json()),
            ("manifest", httpx.get(f"{url}/models").json()),
        ):
            path = folder / f"{name}.json"
            path.write_text(json.dumps(data))
            evidence[name] = path
        yield evidence


def two_model_argv(two_models: dict, request: dict, response: dict, folder: Path) -> list[str]:
    (folder / "request.json").write_text(json.dumps(request))
    (folder / "response.json").write_text(json.dumps(response))
    return [
        "verify",
        str(folder / "response.json"),
        "--request",
        str(folder / "request.json"),
        "--attestation",
        str(two_models["attestation"]),
        "--manifest",
        str(two_models["manifest"]),
        "--root",
        str(two_models["root"]),
        "--allow-any-image",  # this test's server has its own models, hence its own image
        "--json",
    ]


def test_answer_from_another_model_with_the_same_inputs(capsys, two_models, tmp_path) -> None:
    request = {"model": "iris-mlp", "inputs": FEATURES}
    # The host forwards the request's inputs to another model of the same enclave, with the same schema.
    forwarded = {"model": "iris-double", "inputs": FEATURES}
    answer = httpx.post(f"{two_models['url']}/infer", json=forwarded).json()
    code, report = verify_json(capsys, two_model_argv(two_models, request, answer, tmp_path))
    assert code == 1 and report["verdict"] == "REJECTED"
    assert statuses(report)["model"] == "fail" and "iris-double" in details(report)["model"]
    assert statuses(report)["input_hash"] == "pass"  # the inputs are the same: only the model differs
    # ... and renaming the (unsigned) model field of the answer does not help: modelHash is signed.
    answer["model"] = "iris-mlp"
    code, report = verify_json(capsys, two_model_argv(two_models, request, answer, tmp_path))
    assert code == 1
    assert details(report)["model"] == "modelHash is the sha256 of 'iris-double', not of 'iris-mlp'"
    # The genuine answer verifies.
    genuine = httpx.post(f"{two_models['url']}/infer", json=request).json()
    code, report = verify_json(capsys, two_model_argv(two_models, request, genuine, tmp_path))
    assert code == 0 and statuses(report)["model"] == "pass", report


def test_v2_request_model_comes_from_model_option(capsys, two_models, tmp_path) -> None:
    request = {"inputs": V2_REQUEST["inputs"]}
    answer = httpx.post(f"{two_models['url']}/v2/models/iris-double/infer", json=request).json()
    argv = two_model_argv(two_models, request, answer, tmp_path)
    code, report = verify_json(capsys, [*argv, "--model", "iris-mlp"])
    assert code == 1 and statuses(report)["model"] == "fail"
    code, report = verify_json(capsys, [*argv, "--model", "iris-double"])
    assert code == 0 and statuses(report)["model"] == "pass", report
    code, report = verify_json(capsys, argv)  # the request names no model, and --model is not given
    assert code == 1 and "--model" in details(report)["model"]


def test_request_id_must_match(capsys, server, evidence, tmp_path) -> None:
    sent = {"model": "iris-mlp", "inputs": FEATURES, "request_id": "0x" + "aa" * 32}
    answer = httpx.post(f"{server}/infer", json=sent).json()
    response = tmp_path / "response.json"
    response.write_text(json.dumps(answer))
    request = tmp_path / "request.json"
    for claimed, expected in (("aa", "pass"), ("bb", "fail")):
        request.write_text(json.dumps({**sent, "request_id": "0x" + claimed * 32}))
        code, report = verify_json(capsys, verify_argv({**evidence, "request": request}, response))
        assert statuses(report)["request_id"] == expected and code == (0 if expected == "pass" else 1)
    request.write_text(json.dumps({**sent, "request_id": "0x1234"}))
    code, report = verify_json(capsys, verify_argv({**evidence, "request": request}, response))
    assert code == 1 and statuses(report)["request_id"] == "fail"


def test_v2_request_id_must_match(capsys, server, evidence, tmp_path) -> None:
    paths = v2_evidence(server, tmp_path, evidence, "iris-mlp", V2_REQUEST)
    other = {**V2_REQUEST, "parameters": {"request_id": "0x" + "78" * 32}}
    paths["request"].write_text(json.dumps(other))
    code, report = verify_json(capsys, [*verify_argv(paths), "--model", "iris-mlp"])
    assert code == 1 and statuses(report)["request_id"] == "fail"


# --- 5. verinfer verify reads the attestation in every form ---


@pytest.mark.parametrize("form", ["raw", "hex", "base64", "attestation-json"])
def test_attestation_forms(capsys, evidence, tmp_path, form: str) -> None:
    raw = base64.b64decode(json.loads(evidence["attestation"].read_text())["document"])
    text = {
        "raw": raw,
        "hex": ("0x" + raw.hex()).encode(),
        "base64": base64.b64encode(raw),
        "attestation-json": evidence["attestation"].read_bytes(),
    }[form]
    path = tmp_path / f"attestation.{form}"
    path.write_bytes(text)
    code, report = verify_json(capsys, verify_argv({**evidence, "attestation": path}))
    assert code == 0 and report["verdict"] == "VERIFIED", report
