"""`verinfer image stage`: write the build context of Dockerfile.enclave, exactly the measured files.

Lives outside the image on purpose: editing this host-side tool leaves the image id unchanged. What the image
holds is defined once, in enclave/image.py, which the enclave also uses to report its simulated PCRs.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from attestation.cli import EXIT_OK
from attestation.measure import ImageMeasurement, measure_files
from enclave import cli as enclave_cli
from enclave.image import SOURCE_ROOT, image_files


def stage_context(
    destination: Path, *, models_dir: Path, source_root: Path = SOURCE_ROOT
) -> ImageMeasurement:
    """Write the build context: Dockerfile.enclave at the top, the image's /app tree under app/.

    Wheels for the lock file go in destination/wheels (see `make image`); they are not part of /app.
    """
    app_root = destination / "app"
    if app_root.exists():
        shutil.rmtree(app_root)
    boot, app = image_files(source_root, models_dir)
    for item in (*boot, *app):
        target = app_root / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.data)
        os.chmod(target, 0o755 if item.executable else 0o644)
    shutil.copyfile(source_root / "Dockerfile.enclave", destination / "Dockerfile.enclave")
    (destination / "wheels").mkdir(exist_ok=True)
    return measure_files(boot, app)


def cmd_stage(args: argparse.Namespace) -> int:
    models = Path(args.models) if args.models else SOURCE_ROOT / "models"
    measurement = stage_context(Path(args.dest), models_dir=models)
    print(f"staged {len(measurement.files)} files in {args.dest} (PCR0 {measurement.pcr0.hex()})")
    return EXIT_OK


def register(subparsers: Any) -> None:
    image = subparsers.add_parser("image", help="the enclave image: measurement and build context")
    image_commands = image.add_subparsers(dest="image_command", required=True)
    enclave_cli.register_measure(image_commands, "measure")
    stage = image_commands.add_parser(
        "stage", help="write Dockerfile.enclave's build context (exactly the image)"
    )
    stage.add_argument("dest")
    stage.add_argument("--models", help="models directory (default: the repository's models/)")
    stage.set_defaults(handler=cmd_stage)
