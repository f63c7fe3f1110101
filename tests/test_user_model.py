"""A model added with only an ONNX file and a manifest entry is served and verified the same way."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
from onnx import TensorProto, helper, save

from attestation import Policy, TrustedRoot
from verinfer.processes import running_server
from verinfer.verify import load_attestation, manifest_from_json, verify_inference

MODELS = Path(__file__).resolve().parent.parent / "models"


def write_int_model(path: Path) -> None:
    """y = x * 3 + 1 over int64 [N, 2], a model with a different dtype from the shipped ones."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["x3"]), helper.make_node("Add", ["x3", "one"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 2])],
        [
            helper.make_tensor("three", TensorProto.INT64, [], [3]),
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))


def test_user_added_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    write_int_model(models / "affine.onnx")
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["models"].append(
        {
            "name": "affine",
            "version": "7",
            "file": "affine.onnx",
            "sha256": hashlib.sha256((models / "affine.onnx").read_bytes()).hexdigest(),
            "task": "regression",
            "description": "y = 3x + 1",
            "inputs": [{"name": "x", "dtype": "int64", "shape": [-1, 2]}],
            "outputs": [{"name": "y", "dtype": "int64", "shape": [-1, 2]}],
        }
    )
    (models / "manifest.json").write_text(json.dumps(manifest))
    pki = tmp_path / "pki"
    with running_server("--nsm", "sim", "--pki-dir", str(pki), "--models", str(models)) as url:
        request = {"model": "affine", "inputs": [[1, -2], [40, 5]]}
        body = httpx.post(f"{url}/infer", json=request).json()
        assert body["outputs"] == [
            {"name": "y", "datatype": "INT64", "shape": [2, 2], "data": [4, -5, 121, 16]}
        ]
        floats = httpx.post(f"{url}/infer", json={"model": "affine", "inputs": [[1.5, 2]]})
        assert floats.status_code == 400 and floats.json()["code"] == "invalid_dtype"
        too_big = httpx.post(f"{url}/infer", json={"model": "affine", "inputs": [[2**63, 2]]})
        assert too_big.status_code == 400 and too_big.json()["code"] == "invalid_value"
        attestation = load_attestation(httpx.get(f"{url}/attestation").content)
        served = manifest_from_json(httpx.get(f"{url}/models").json())
    report = verify_inference(
        body,
        attestation,
        policy=Policy(root=TrustedRoot.from_file(pki / "root.pem")),
        request=request,
        manifest=served,
    )
    assert report.ok, report.to_json()
    assert np.array_equal(
        np.array(body["outputs"][0]["data"]).reshape(2, 2), np.array(request["inputs"]) * 3 + 1
    )
