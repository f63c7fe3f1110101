"""Train and export LeNet-5 on MNIST, the model of the TEE-vs-zkML LeNet benchmark.

Data: ../shared/datasets/mnist/mnist.npz (or --data PATH), the original 60k/10k split. Architecture as
LeCun et al. 1998 with ReLU and max pooling: conv5x5(6, pad 2) -> pool -> conv5x5(16) -> pool -> fc120 ->
fc84 -> fc10. Input: float32 [N, 1, 28, 28], pixel / 255. Output: logits [N, 10] and the predicted digit.
Also writes models/data/mnist-eval.npz, the first 1000 test images, so tests need nothing outside the repo.

Run: `make models` (needs models/requirements-train.txt: torch, onnx).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "datasets" / "mnist" / "mnist.npz"
SEED = 20241124
EVAL_SUBSET = 1000


class LeNet5(nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(self.features(x))
        return logits, logits.argmax(dim=1)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32)[:, None] / 255.0)


def accuracy(model: LeNet5, images: torch.Tensor, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(images[i : i + 2000])[1] for i in range(0, len(images), 2000)])
    return float((predicted.numpy() == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    data = np.load(args.data)
    x_train, y_train = to_tensor(data["x_train"]), torch.from_numpy(data["y_train"].astype(np.int64))
    x_test, y_test = to_tensor(data["x_test"]), data["y_test"].astype(np.int64)

    model = LeNet5()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=3, gamma=0.3)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(128):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[batch])[0], y_train[batch])
            loss.backward()
            optimiser.step()
        schedule.step()
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, x_test, y_test):.4f}", flush=True)

    test_accuracy = accuracy(model, x_test, y_test)
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(HERE / "mnist-lenet.onnx"),
        input_names=["image"],
        output_names=["logits", "digit"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}, "digit": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    np.savez_compressed(
        HERE / "data" / "mnist-eval.npz", x=data["x_test"][:EVAL_SUBSET], y=data["y_test"][:EVAL_SUBSET]
    )
    metrics = {
        "mnist-lenet": {
            "test_accuracy": round(test_accuracy, 4),
            "test_images": len(y_test),
            "epochs": args.epochs,
        }
    }
    (HERE / "metrics-lenet.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
