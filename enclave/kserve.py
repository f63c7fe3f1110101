"""KServe V2 / Triton HTTP extensions, free of any web framework: paths, binary tensor data, model
configuration, repository index.

Binary tensor data (Triton's extension_binary_data.md): a request whose body is a JSON header of
`Inference-Header-Content-Length` bytes followed by raw tensors, one for each input whose
`parameters.binary_data_size` says how many bytes it takes, in the order of `inputs`; raw data is
little-endian and row-major. Answers carry an output as raw bytes after the JSON header when the request
asks for it (`parameters.binary_data` of a requested output, else the request's
`parameters.binary_data_output`).

The receipt does not depend on the wire format: inputHash and outputHash are taken over the canonical
encoding (protocol/tensors.py) of the decoded arrays, so a binary request and the same request in JSON
are signed alike, and a binary answer's outputs hash as they would in JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from protocol.errors import RequestError, bad_request, not_found
from protocol.inputs import parse_json
from protocol.manifest import Manifest, ModelEntry, TensorSpec
from protocol.tensors import BY_V2

HEADER_LENGTH = b"inference-header-content-length"
OCTET_STREAM = b"application/octet-stream"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Triton's names for what this server implements, plus the receipts it adds (in every answer's parameters).
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "parameters",
    "verinfer_receipts",
)
MODEL_CONTROL = RequestError(
    403,
    "model_control_disabled",
    "models cannot be loaded or unloaded: they are fixed by the attested manifest, whose digest the "
    "attestation document binds (GET /models), so a client can know exactly what answers it",
)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_ACTIONS = frozenset(("", "ready", "config", "stats", "infer"))
_MODELS = "/v2/models/"

Headers = list[tuple[bytes, bytes]]


# --- paths -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelPath:
    """/v2/models/NAME[/versions/VERSION][/ACTION]; ACTION is "" for the model's metadata."""

    name: str
    version: str | None
    action: str


def model_path(path: str) -> ModelPath | None:
    """The one grammar of per-model V2 paths; None for anything else (including /v2/models/stats)."""
    if not path.startswith(_MODELS):
        return None
    parts = path[len(_MODELS) :].split("/")
    version = None
    if len(parts) >= 3 and parts[1] == "versions":
        version = parts[2]
        parts = [parts[0], *parts[3:]]
    if not parts[0] or version == "" or len(parts) > 2:
        return None
    action = parts[1] if len(parts) == 2 else ""
    if action not in _ACTIONS or (action == "" and len(parts) == 2):
        return None
    if path == _MODELS + "stats":
        return None
    return ModelPath(parts[0], version, action)


def check_version(entry: ModelEntry, version: str | None) -> None:
    """A versioned route serves only the manifest's version of the model (no version: that one)."""
    if version is not None and version != entry.version:
        raise not_found(
            "unknown_version", f"{entry.name} has only version {entry.version!r} (the attested manifest's)"
        )


# --- binary requests -------------------------------------------------------------------------------------


def split_request(body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> tuple[Any, bytes]:
    """The JSON header of a V2 request and the binary data after it (b"" for an all-JSON request)."""
    length = None
    for key, value in headers:
        if key == HEADER_LENGTH:
            length = value
            break
    if length is None:
        return parse_json(body), b""
    text = bytes(length).strip()
    if not text.isdigit() or int(text) > len(body):
        raise bad_request(
            "invalid_header_length",
            f"Inference-Header-Content-Length must be a byte count within the {len(body)}-byte body, "
            f"got {text[:40]!r}",
        )
    split = int(text)
    return parse_json(body[:split]), body[split:]


class BinaryInputs:
    """The raw data after a request's JSON header, handed out in input order (protocol/inputs.RawData).

    Every input with `parameters.binary_data_size` takes the next that many bytes; `finish()` refuses bytes
    left over, so truncated, overlong and mis-sized bodies are all refused, none silently reinterpreted.
    """

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def __call__(self, spec: TensorSpec, item: dict[str, Any]) -> bytes | None:
        parameters = item.get("parameters")
        if parameters is None:
            return None
        if not isinstance(parameters, dict):
            raise bad_request("invalid_parameters", f"{spec.name}: 'parameters' must be an object")
        if "shared_memory_region" in parameters:
            raise bad_request("shared_memory_unsupported", "shared memory is not supported: send the data")
        size = parameters.get("binary_data_size")
        if size is None:
            return None
        if type(size) is not int or size < 0:
            raise bad_request(
                "invalid_binary_size", f"{spec.name}: binary_data_size must be a byte count, got {size!r:.40}"
            )
        if "data" in item:
            raise bad_request("invalid_tensor", f"{spec.name}: both 'data' and binary_data_size are given")
        end = self.offset + size
        if end > len(self.data):
            raise bad_request(
                "invalid_binary_size",
                f"{spec.name}: binary_data_size is {size} but only {len(self.data) - self.offset} bytes of "
                "binary data remain after the JSON header (is Inference-Header-Content-Length set?)",
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def finish(self) -> None:
        left = len(self.data) - self.offset
        if left:
            raise bad_request(
                "invalid_binary_size",
                f"{left} bytes after the JSON header belong to no input's binary_data_size",
            )


# --- answers ---------------------------------------------------------------------------------------------


def requested_outputs(request: Mapping[str, Any], names: Sequence[str]) -> tuple[set[str] | None, set[str]]:
    """(the outputs asked for, None for all; the ones to send as binary data), from a V2 request.

    A requested output's `parameters.binary_data` decides for it; otherwise the request's
    `parameters.binary_data_output` (default false) does.
    """
    parameters = request.get("parameters") or {}
    default = _flag(parameters, "binary_data_output", "request")
    value = request.get("outputs")
    if value is None:
        return None, set(names) if default else set()
    known = set(names)
    if not isinstance(value, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) and o["name"] in known for o in value
    ):
        raise bad_request("unknown_output", f"requested outputs must be among {sorted(known)}")
    binary = set()
    for output in value:
        options = output.get("parameters")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise bad_request(
                "invalid_parameters", f"output {output['name']!r}: 'parameters' must be an object"
            )
        if "classification" in options:
            raise bad_request("classification_unsupported", "the classification extension is not supported")
        if "shared_memory_region" in options:
            raise bad_request("shared_memory_unsupported", "shared memory is not supported")
        wanted = _flag(options, "binary_data", f"output {output['name']!r}")
        if wanted or ("binary_data" not in options and default):
            binary.add(output["name"])
    return {o["name"] for o in value}, binary


def _flag(parameters: Mapping[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if type(value) is not bool:
        raise bad_request("invalid_parameters", f"{where}: parameters.{key} must be true or false")
    return value


def encode_response(
    response: dict[str, Any],
    outputs: Sequence[tuple[str, np.ndarray]],
    specs: Mapping[str, TensorSpec],
    binary: set[str],
) -> tuple[bytes, Headers]:
    """The V2 answer: `response` (given without outputs, which are added to it) plus the outputs, each
    as JSON data or, when in `binary`, as raw bytes after the JSON header."""
    tensors, raws = [], []
    for name, array in outputs:
        spec = specs[name]
        tensor: dict[str, Any] = {"name": name, "datatype": spec.dtype.v2, "shape": list(array.shape)}
        if name in binary:
            raw = np.ascontiguousarray(array, dtype=spec.dtype.numpy).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            tensor["data"] = array.ravel()
        tensors.append(tensor)
    response["outputs"] = tensors
    header = orjson.dumps(response, option=_NUMPY)
    if not raws:
        return header, []
    return header + b"".join(raws), [
        (HEADER_LENGTH, b"%d" % len(header)),
        (b"content-type", OCTET_STREAM),
    ]


def decode_response(body: bytes, header_length: int | None) -> dict[str, Any]:
    """A V2 answer with its binary outputs put back as JSON tensors: what verify_inference checks.

    For clients and tests; the inverse of encode_response."""
    if header_length is None:
        decoded: dict[str, Any] = orjson.loads(body)
        return decoded
    response: dict[str, Any] = orjson.loads(body[:header_length])
    offset = header_length
    for tensor in response.get("outputs", []):
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        dtype = BY_V2[tensor["datatype"]].numpy
        array = np.frombuffer(body[offset : offset + size], dtype=dtype)
        offset += size
        tensor["data"] = array.tolist()
        del tensor["parameters"]["binary_data_size"]
        if not tensor["parameters"]:
            del tensor["parameters"]
    return response


# --- model configuration and repository ------------------------------------------------------------------


def model_config(entry: ModelEntry, *, max_batch_size: int, window_s: float | None) -> dict[str, Any]:
    """Triton's model configuration (model_config.proto as JSON) for a manifest model.

    `max_batch_size` > 0 says requests are batched along their first dimension, which Triton's `dims` then
    leave out; 0 says the shapes are used as they are. `window_s` is the dynamic batcher's window."""
    batched = max_batch_size > 0

    def tensors(specs: Sequence[TensorSpec], *, inputs: bool) -> list[dict[str, Any]]:
        rows = []
        for spec in specs:
            row: dict[str, Any] = {
                "name": spec.name,
                "data_type": "TYPE_" + spec.dtype.v2,
                "dims": list(spec.shape[1:] if batched else spec.shape),
                "is_shape_tensor": False,
            }
            if inputs:
                row.update(format="FORMAT_NONE", allow_ragged_batch=False, optional=False)
            else:
                row["label_filename"] = ""
            rows.append(row)
        return rows

    config: dict[str, Any] = {
        "name": entry.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": (
            {"specific": {"versions": [int(entry.version)]}}
            if entry.version.isdigit()
            else {"latest": {"num_versions": 1}}
        ),
        "max_batch_size": max_batch_size,
        "input": tensors(entry.inputs, inputs=True),
        "output": tensors(entry.outputs, inputs=False),
        "instance_group": [{"name": entry.name, "kind": "KIND_CPU", "count": 1}],
        "default_model_filename": entry.file,
        "parameters": {"sha256": {"string_value": entry.sha256}},
    }
    if batched and window_s is not None:
        config["dynamic_batching"] = {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": math.floor(window_s * 1_000_000),
            "preserve_ordering": False,
        }
    return config


def repository_index(manifest: Manifest, served: set[str], body: bytes) -> list[dict[str, str]]:
    """POST /v2/repository/index: every manifest model, READY where this server serves it (the LLM on /v1
    when loaded). The body is empty, {} or {"ready": bool} (true: only the ready ones)."""
    options = parse_json(body) if body.strip() else {}
    if not isinstance(options, dict):
        raise bad_request("invalid_json", "body must be a JSON object {ready?: bool}")
    ready_only = _flag(options, "ready", "repository index")
    rows = []
    for name in sorted(manifest.models):
        entry = manifest.models[name]
        ready = name in served
        if ready_only and not ready:
            continue
        row = {"name": name, "version": entry.version, "state": "READY" if ready else "UNAVAILABLE"}
        if not ready:
            row["reason"] = "in the manifest but not loaded by this server (an LLM started with --no-llm)"
        rows.append(row)
    return rows
