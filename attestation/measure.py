"""Image measurement for the simulator, defined like nitro-cli's PCRs.

A PCR starts as 48 zero bytes and is extended once: PCR = SHA384(0^48 || SHA384(measured stream)).
PCR1 measures the boot part of the image (runtime definition), PCR2 the application (code and models),
PCR0 the whole image (boot stream followed by application stream), so a change to any measured byte
changes PCR0 and the part it lives in.

The measured stream of a set of files, in sorted path order, is per file:
    u32 BE len(path) || path (UTF-8, '/'-separated, relative) || u8 executable || u64 BE len(data) || data
Caches (`__pycache__`, `*.pyc`) are never measured: they differ between identical builds.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PCR_LENGTH = 48
ZERO_PCR = bytes(PCR_LENGTH)
_SKIP_DIRS = frozenset(("__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"))
_SKIP_SUFFIXES = (".pyc", ".pyo")


def extend(pcr: bytes, data: bytes) -> bytes:
    """The NSM extend operation: SHA384(old || data)."""
    return hashlib.sha384(pcr + data).digest()


@dataclass(frozen=True, slots=True)
class MeasuredFile:
    path: str
    data: bytes
    executable: bool = False

    def stream(self) -> bytes:
        name = self.path.encode("utf-8")
        return b"".join(
            (
                struct.pack(">I", len(name)),
                name,
                b"\x01" if self.executable else b"\x00",
                struct.pack(">Q", len(self.data)),
                self.data,
            )
        )


def iter_tree(root: Path, entries: Iterable[str]) -> Iterator[MeasuredFile]:
    """Files under `root` named by `entries` (files or directories), paths relative to `root`."""
    for entry in entries:
        base = root / entry
        if base.is_file():
            yield _measured(root, base)
            continue
        if not base.is_dir():
            raise FileNotFoundError(f"measured path {base} does not exist")
        for directory, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
            for name in filenames:
                if not name.endswith(_SKIP_SUFFIXES):
                    yield _measured(root, Path(directory) / name)


def _measured(root: Path, path: Path) -> MeasuredFile:
    return MeasuredFile(
        path.relative_to(root).as_posix(), path.read_bytes(), executable=os.access(path, os.X_OK)
    )


def stream_digest(files: Iterable[MeasuredFile]) -> bytes:
    """SHA384 of the measured stream of `files`, taken in sorted path order."""
    digest = hashlib.sha384()
    for item in sorted(files, key=lambda f: f.path):
        digest.update(item.stream())
    return digest.digest()


@dataclass(frozen=True, slots=True)
class ImageMeasurement:
    pcr0: bytes
    pcr1: bytes
    pcr2: bytes
    files: tuple[str, ...] = field(default=())

    @property
    def pcrs(self) -> dict[int, bytes]:
        return {0: self.pcr0, 1: self.pcr1, 2: self.pcr2}


def measure_files(boot: Iterable[MeasuredFile], app: Iterable[MeasuredFile]) -> ImageMeasurement:
    boot_files = sorted(boot, key=lambda f: f.path)
    app_files = sorted(app, key=lambda f: f.path)
    whole = hashlib.sha384()
    for item in (*boot_files, *app_files):
        whole.update(item.stream())
    return ImageMeasurement(
        pcr0=extend(ZERO_PCR, whole.digest()),
        pcr1=extend(ZERO_PCR, stream_digest(boot_files)),
        pcr2=extend(ZERO_PCR, stream_digest(app_files)),
        files=tuple(f.path for f in (*boot_files, *app_files)),
    )


def measure_tree(root: str | Path, app: Iterable[str], boot: Iterable[str] = ()) -> ImageMeasurement:
    """Measure the files of an image laid out under `root`: `boot` entries feed PCR1, `app` entries PCR2."""
    root = Path(root)
    return measure_files(iter_tree(root, boot), iter_tree(root, app))
