"""What the enclave image contains, and its measurement as the simulator reports it in PCR0-2.

One definition drives both: `image_files` lists exactly the files the image holds (with their paths inside
it), `measure_image` measures them, and `verinfer image stage` (verinfer/image.py, outside the image)
writes them as the build context of Dockerfile.enclave. So "change a byte of a model or of the code -> the
PCRs and the image id change" holds from a developer's tree to a running image.

- boot part (PCR1): Dockerfile.enclave (which pins the base image by digest) and requirements-enclave.lock
  (every dependency pinned by hash);
- application part (PCR2): the `attestation`, `protocol` and `enclave` packages, and models/manifest.json
  with the files it lists (ONNX models; an LLM's model, tokenizer, chat template and configs);
- PCR0: both.
Real hardware PCRs come from nitro-cli instead (docs/ENCLAVE_IMAGE.md); these are the simulator's.
"""

from __future__ import annotations

import json
from pathlib import Path

from attestation.measure import ImageMeasurement, MeasuredFile, iter_tree, measure_files

SOURCE_ROOT = Path(__file__).resolve().parent.parent
APP_PACKAGES = ("attestation", "protocol", "enclave")
BOOT_FILES = ("Dockerfile.enclave", "requirements-enclave.lock")
MODELS_PREFIX = "models"


def model_files(models_dir: Path) -> list[str]:
    """manifest.json and the files it lists: the models the enclave serves, nothing else from the folder.
    An LLM entry lists its directory's served files (model, tokenizer, chat template, configs)."""
    manifest = json.loads((models_dir / "manifest.json").read_text())
    files: list[str] = []
    for entry in manifest["models"]:
        listed = entry.get("files")
        files += [f"{entry['file']}/{name}" for name in listed] if listed else [entry["file"]]
    return ["manifest.json", *sorted(files)]


def image_files(source_root: Path, models_dir: Path) -> tuple[list[MeasuredFile], list[MeasuredFile]]:
    """(boot files, application files), each with its path inside the image (relative to /app)."""
    boot = list(iter_tree(source_root, [name for name in BOOT_FILES if (source_root / name).is_file()]))
    app = list(iter_tree(source_root, APP_PACKAGES))
    for item in iter_tree(models_dir, model_files(models_dir)):
        app.append(MeasuredFile(f"{MODELS_PREFIX}/{item.path}", item.data, item.executable))
    return boot, app


def measure_image(models_dir: Path, source_root: Path = SOURCE_ROOT) -> ImageMeasurement:
    boot, app = image_files(source_root, models_dir)
    return measure_files(boot, app)
