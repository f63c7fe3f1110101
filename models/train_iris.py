"""Train and export the two Iris models the TEE-vs-zkML benchmarks used, from scikit-learn's bundled Iris.

- iris-ols: ordinary least squares predicting petal width (cm) from sepal length, sepal width and petal
  length (cm), closed form.
- iris-mlp: a 4-16-3 MLP classifier (ReLU, softmax), full-batch Adam with L2 weight decay, inputs
  standardised inside the graph so callers send raw centimetres.

Deterministic: fixed seeds and split, so rerunning reproduces the committed ONNX files byte for byte.
Run: `make models` (or `python models/train_iris.py` with models/requirements-train.txt installed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import helper
from onnx_graph import FLOAT, INT64, constant, save, value
from sklearn.datasets import load_iris

HERE = Path(__file__).resolve().parent
SEED = 20241124


def split(n: int, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SEED).permutation(n)
    cut = int(n * (1 - test_fraction))
    return order[:cut], order[cut:]


def train_ols(x: np.ndarray) -> dict[str, float]:
    features, target = x[:, :3], x[:, 3:4]
    train, test = split(len(x))
    design = np.hstack([features[train], np.ones((len(train), 1))])
    coef, *_ = np.linalg.lstsq(design, target[train], rcond=None)
    weights, bias = coef[:3].astype(np.float32), coef[3:].astype(np.float32)
    prediction = features[test] @ weights + bias
    residual = ((target[test] - prediction) ** 2).sum()
    r2 = 1 - residual / ((target[test] - target[test].mean()) ** 2).sum()
    save(
        nodes=[
            helper.make_node("MatMul", ["features", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["petal_width"]),
        ],
        inputs=[value("features", FLOAT, ["N", 3])],
        outputs=[value("petal_width", FLOAT, ["N", 1])],
        initializers=[constant("W", weights), constant("b", bias.reshape(1))],
        name="iris_ols",
        path=str(HERE / "iris-ols.onnx"),
        doc="OLS: petal width from sepal length, sepal width, petal length (cm)",
    )
    return {"test_r2": round(float(r2), 4), "test_rmse_cm": round(float(np.sqrt(residual / len(test))), 4)}


def train_mlp(
    x: np.ndarray, y: np.ndarray, hidden: int = 16, steps: int = 800, decay: float = 1e-2
) -> dict[str, float]:
    train, test = split(len(x))
    mean, std = x[train].mean(0), x[train].std(0)
    z = (x - mean) / std
    rng = np.random.default_rng(SEED)
    params = {
        "W1": rng.normal(0, np.sqrt(2 / 4), (4, hidden)),
        "b1": np.zeros(hidden),
        "W2": rng.normal(0, np.sqrt(2 / hidden), (hidden, 3)),
        "b2": np.zeros(3),
    }
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    onehot = np.eye(3)[y[train]]
    for step in range(1, steps + 1):
        h = np.maximum(z[train] @ params["W1"] + params["b1"], 0)
        logits = h @ params["W2"] + params["b2"]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        d_logits = (p - onehot) / len(train)
        d_h = (d_logits @ params["W2"].T) * (h > 0)
        grads = {
            "W2": h.T @ d_logits + decay * params["W2"],
            "b2": d_logits.sum(0),
            "W1": z[train].T @ d_h + decay * params["W1"],
            "b1": d_h.sum(0),
        }
        for k, g in grads.items():
            m, v = moments[k]
            m[:] = 0.9 * m + 0.1 * g
            v[:] = 0.999 * v + 0.001 * g * g
            params[k] -= 0.01 * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)

    def predict(rows: np.ndarray) -> np.ndarray:
        hidden_layer = np.maximum(rows @ params["W1"] + params["b1"], 0)
        labels: np.ndarray = (hidden_layer @ params["W2"] + params["b2"]).argmax(1)
        return labels

    f32 = {k: v.astype(np.float32) for k, v in params.items()}
    save(
        nodes=[
            helper.make_node("Sub", ["features", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["scaled"]),
            helper.make_node("MatMul", ["scaled", "W1"], ["h1"]),
            helper.make_node("Add", ["h1", "b1"], ["h1b"]),
            helper.make_node("Relu", ["h1b"], ["hidden"]),
            helper.make_node("MatMul", ["hidden", "W2"], ["h2"]),
            helper.make_node("Add", ["h2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        inputs=[value("features", FLOAT, ["N", 4])],
        outputs=[value("probabilities", FLOAT, ["N", 3]), value("label", INT64, ["N"])],
        initializers=[
            constant("mean", mean.astype(np.float32)),
            constant("std", std.astype(np.float32)),
            *(constant(k, f32[k]) for k in ("W1", "b1", "W2", "b2")),
        ],
        name="iris_mlp",
        path=str(HERE / "iris-mlp.onnx"),
        doc="MLP 4-16-3: Iris species (0 setosa, 1 versicolor, 2 virginica) from sepal/petal sizes (cm)",
    )
    return {
        "train_accuracy": round(float((predict(z[train]) == y[train]).mean()), 4),
        "test_accuracy": round(float((predict(z[test]) == y[test]).mean()), 4),
    }


def main() -> None:
    iris = load_iris()
    x, y = iris.data.astype(np.float64), iris.target
    metrics = {"iris-ols": train_ols(x), "iris-mlp": train_mlp(x, y)}
    (HERE / "metrics-iris.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
