"""The model manifest: which ONNX files are served, their hashes and tensor signatures.

An LLM entry ("task": "text-generation") names a directory in `file` and lists its served files in
`files` ({name: sha256}); its `sha256` is then protocol.llm.bundle_hash(files), the receipts' modelHash.

The enclave attests the manifest digest as the attestation's user_data, so a verifier can tie a receipt's
modelHash to the exact model set of the attested enclave. Digest (docs/PROTOCOL.md):

    sha256( JSON of [{"name", "sha256", "version"} for each model, sorted by name],
            keys sorted, separators (",", ":"), ASCII )
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ProtocolError
from .llm import bundle_hash
from .tensors import BY_NAME, DType

MANIFEST_FILE = "manifest.json"
TEXT_GENERATION = "text-generation"


class ManifestError(ProtocolError):
    """The manifest or a model file is missing, malformed or does not match its hash."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    dtype: DType
    shape: tuple[int, ...]  # -1 marks a dynamic dimension

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    version: str
    file: str
    sha256: str
    task: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metrics: dict[str, Any]
    files: tuple[tuple[str, str], ...] = ()  # an LLM's served files (name, sha256), sorted by name

    @property
    def model_hash(self) -> bytes:
        return bytes.fromhex(self.sha256)

    @property
    def is_llm(self) -> bool:
        return self.task == TEXT_GENERATION

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "file": self.file,
            "sha256": self.sha256,
            "modelHash": "0x" + self.sha256,
            "task": self.task,
            "description": self.description,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "metrics": self.metrics,
            **({"files": dict(self.files)} if self.files else {}),
        }


def _tensor(raw: Any, where: str) -> TensorSpec:
    try:
        dtype = BY_NAME[raw["dtype"]]
        shape = tuple(int(d) for d in raw["shape"])
        name = str(raw["name"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: tensor needs name, a known dtype and an integer shape") from exc
    if any(d < -1 or d == 0 for d in shape):
        raise ManifestError(f"{where}: dimensions are positive or -1 (dynamic)")
    return TensorSpec(name, dtype, shape)


def _entry(raw: Any) -> ModelEntry:
    if not isinstance(raw, dict):
        raise ManifestError("each model entry must be an object")
    try:
        name = raw["name"]
        entry = ModelEntry(
            name=name,
            version=str(raw.get("version", "1")),
            file=raw["file"],
            sha256=raw["sha256"].lower(),
            task=str(raw.get("task", "")),
            description=str(raw.get("description", "")),
            inputs=tuple(_tensor(t, f"{name} input") for t in raw["inputs"]),
            outputs=tuple(_tensor(t, f"{name} output") for t in raw["outputs"]),
            metrics=dict(raw.get("metrics", {})),
            files=_files(raw.get("files"), name),
        )
    except (KeyError, AttributeError, TypeError) as exc:
        raise ManifestError(f"model entry {raw.get('name')!r} lacks {exc}") from exc
    if not _is_sha256(entry.sha256):
        raise ManifestError(f"{entry.name}: sha256 must be 64 hex characters")
    if not entry.inputs or not entry.outputs:
        raise ManifestError(f"{entry.name}: needs at least one input and one output")
    if entry.is_llm != bool(entry.files):
        raise ManifestError(f"{entry.name}: an LLM entry, and only one, lists its 'files'")
    if entry.is_llm and bundle_hash(dict(entry.files)).hex() != entry.sha256:
        raise ManifestError(f"{entry.name}: sha256 must be the bundle hash of its files")
    return entry


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _files(raw: Any, name: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _is_sha256(v) for k, v in raw.items()
    ):
        raise ManifestError(f"{name}: 'files' maps file names to sha256 hex")
    if any("/" in k or k in ("", ".", "..") for k in raw):
        raise ManifestError(f"{name}: 'files' names plain files inside the model's directory")
    return tuple(sorted(raw.items()))


def entry_paths(directory: Path, entry: ModelEntry) -> list[tuple[Path, str]]:
    """(path, expected sha256) of every file an entry serves."""
    if entry.is_llm:
        return [(directory / entry.file / name, digest) for name, digest in entry.files]
    return [(directory / entry.file, entry.sha256)]


@dataclass(frozen=True, slots=True)
class Manifest:
    directory: Path
    models: dict[str, ModelEntry]

    @property
    def digest(self) -> bytes:
        return manifest_digest(self.models.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "digest": "0x" + self.digest.hex(),
            "models": [m.to_json() for m in self.models.values()],
        }


def manifest_digest(models: Any) -> bytes:
    """sha256 over the canonical JSON of (name, sha256, version) of every model, sorted by name."""
    summary = sorted(
        ({"name": m.name, "sha256": m.sha256, "version": m.version} for m in models), key=lambda m: m["name"]
    )
    canonical = json.dumps(summary, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).digest()


def parse_manifest(data: Any, directory: Path) -> Manifest:
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ManifestError("manifest must be an object with a 'models' list")
    models: dict[str, ModelEntry] = {}
    for raw in data["models"]:
        entry = _entry(raw)
        if entry.name in models:
            raise ManifestError(f"model {entry.name!r} is listed twice")
        models[entry.name] = entry
    return Manifest(directory, models)


def load_manifest(directory: str | Path, *, check_files: bool = True) -> Manifest:
    """Load `directory/manifest.json`; with `check_files`, every ONNX file must match its sha256."""
    directory = Path(directory)
    try:
        data = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {directory / MANIFEST_FILE}: {exc}") from exc
    manifest = parse_manifest(data, directory)
    if check_files:
        root = directory.resolve()
        for entry in manifest.models.values():
            for path, expected in entry_paths(directory, entry):
                if not path.resolve().is_relative_to(root):
                    raise ManifestError(f"{entry.name}: file must live in the models directory")
                try:
                    actual = _file_sha256(path)
                except OSError as exc:
                    raise ManifestError(f"{entry.name}: cannot read {path}: {exc}") from exc
                if actual != expected:
                    raise ManifestError(
                        f"{entry.name}: {path.name} has sha256 {actual}, manifest says {expected}"
                        + (" (run `make setup` to build the LLM)" if entry.is_llm else "")
                    )
    return manifest


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
