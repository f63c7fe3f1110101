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

HERE = Path(__file__).resolve().parent
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
    (HERE / "manifest.json").write_text(json.dumps({"format": 1, "models": entries}, indent=2) + "\n")
    print(f"wrote {HERE / 'manifest.json'} ({len(entries)} models)")


if __name__ == "__main__":
    main()
