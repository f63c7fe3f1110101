"""The shipped models: hashes match the manifest, accuracy holds, Iris retraining reproduces the bytes."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from enclave.image import measure_image
from protocol.llm import bundle_hash
from protocol.manifest import ManifestError, load_manifest

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_manifest_hashes_match_the_files() -> None:
    manifest = load_manifest(MODELS)
    assert set(manifest.models) == {"iris-ols", "iris-mlp", "mnist-lenet", "smollm2-135m-instruct"}
    for entry in manifest.models.values():
        if entry.is_llm:  # a directory of files, each pinned; its sha256 is their bundle hash
            for name, digest in entry.files:
                assert hashlib.sha256((MODELS / entry.file / name).read_bytes()).hexdigest() == digest
            assert bundle_hash(dict(entry.files)).hex() == entry.sha256
        else:
            assert hashlib.sha256((MODELS / entry.file).read_bytes()).hexdigest() == entry.sha256


def test_a_changed_llm_file_is_refused(tmp_path: Path) -> None:
    """The served LLM files are checked like ONNX files: one changed byte and the manifest does not load."""
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy, ignore=shutil.ignore_patterns("data", "*.py", "__pycache__"))
    llm = load_manifest(MODELS, check_files=False).models["smollm2-135m-instruct"]
    load_manifest(copy)
    template = copy / llm.file / "chat_template.jinja"
    template.write_bytes(template.read_bytes().replace(b"assistant", b"Assistant", 1))
    with pytest.raises(ManifestError, match=r"chat_template\.jinja has sha256"):
        load_manifest(copy)


def test_lenet_accuracy_on_the_shipped_eval_subset() -> None:
    data = np.load(MODELS / "data" / "mnist-eval.npz")
    session = onnxruntime.InferenceSession(str(MODELS / "mnist-lenet.onnx"))
    _, digits = session.run(None, {"image": (data["x"][:, None] / 255.0).astype(np.float32)})
    accuracy = float((digits == data["y"]).mean())
    assert len(data["y"]) == 1000 and accuracy >= 0.98
    assert load_manifest(MODELS).models["mnist-lenet"].metrics["test_accuracy"] >= 0.985


def test_iris_mlp_accuracy_on_all_of_iris() -> None:
    from sklearn.datasets import load_iris

    iris = load_iris()
    session = onnxruntime.InferenceSession(str(MODELS / "iris-mlp.onnx"))
    _, labels = session.run(None, {"features": iris.data.astype(np.float32)})
    assert float((labels == iris.target).mean()) >= 0.95


def test_iris_training_reproduces_the_committed_models(tmp_path: Path) -> None:
    for name in ("train_iris.py", "onnx_graph.py"):
        shutil.copy(MODELS / name, tmp_path / name)
    subprocess.run([sys.executable, "train_iris.py"], cwd=tmp_path, check=True, capture_output=True)
    for name in ("iris-ols.onnx", "iris-mlp.onnx"):
        assert (tmp_path / name).read_bytes() == (MODELS / name).read_bytes(), name


def test_a_changed_model_byte_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy)
    blob = bytearray((copy / "iris-ols.onnx").read_bytes())
    blob[-1] ^= 1
    (copy / "iris-ols.onnx").write_bytes(bytes(blob))
    with pytest.raises(ManifestError, match="iris-ols"):
        load_manifest(copy)


def test_a_changed_model_byte_changes_the_image_measurement(tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy)
    before = measure_image(copy)
    blob = bytearray((copy / "mnist-lenet.onnx").read_bytes())
    blob[100] ^= 1
    (copy / "mnist-lenet.onnx").write_bytes(bytes(blob))
    after = measure_image(copy)
    assert after.pcr0 != before.pcr0 and after.pcr2 != before.pcr2
    assert measure_image(MODELS) == measure_image(MODELS)
