"""What the enclave image contains, and its measurement as the simulator reports it in PCR0-2.

The image's application part is the code that runs (attestation/, enclave/) and the models it serves;
its boot part is the runtime definition (Dockerfile.enclave and the dependency lock) when present.
Measuring from these files means that, in development, changing a byte of code or of a model changes
the PCRs and so the image id that a contract approves.
"""

from __future__ import annotations

from pathlib import Path

from attestation.measure import ImageMeasurement, MeasuredFile, iter_tree, measure_files

SOURCE_ROOT = Path(__file__).resolve().parent.parent
APP_PACKAGES = ("attestation", "enclave")
BOOT_FILES = ("Dockerfile.enclave", "requirements-enclave.lock")
MODELS_PREFIX = "models"


def image_files(source_root: Path, models_dir: Path) -> tuple[list[MeasuredFile], list[MeasuredFile]]:
    """(boot files, application files) with their paths inside the image."""
    boot = list(iter_tree(source_root, [name for name in BOOT_FILES if (source_root / name).is_file()]))
    app = list(iter_tree(source_root, APP_PACKAGES))
    for item in iter_tree(models_dir, ["."]):
        app.append(MeasuredFile(f"{MODELS_PREFIX}/{item.path}", item.data, item.executable))
    return boot, app


def measure_image(models_dir: Path, source_root: Path = SOURCE_ROOT) -> ImageMeasurement:
    boot, app = image_files(source_root, models_dir)
    return measure_files(boot, app)
