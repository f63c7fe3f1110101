"""POST /infer/sealed: an on-chain request whose input is sealed to this enclave (protocol/sealing.py).

The relay posts the ciphertext it read from the chain; only the enclave can open it. The receipt is the one
the contract checks: `inputHash = keccak256(sealedInput)` (what the chain stored) and `outputHash =
keccak256(output posted)`, where the output is sealed to the requester's `output_key` when one was given
(then the layout is checked here, since the contract cannot look inside a ciphertext).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.errors import ProtocolError, bad_request
from protocol.hashing import keccak256
from protocol.inputs import parse_inputs, parse_json
from protocol.sealing import open_input, seal_output
from protocol.tensors import decode_tensors, dtype_of, encode_tensors

from .kserve import BinaryInputs
from .runtime import LoadedModel
from .service import EnclaveService, check_finite, parse_request_id

_FIELDS = frozenset({"model", "sealed_input", "request_id", "output_key"})


def _hex(value: Any, name: str, size: int | None = None) -> bytes:
    """0x-prefixed hex of `size` bytes (any non-zero size without one), else a 400 naming the field."""
    raw = b""
    if isinstance(value, str) and value.startswith("0x"):
        try:
            raw = bytes.fromhex(value[2:])
        except ValueError:
            raw = b""
    if not raw or (size is not None and len(raw) != size):
        what = f"{size} bytes of" if size else "non-empty"
        raise bad_request("invalid_request", f"{name} must be 0x-prefixed hex, {what} data")
    return raw


def _opened_inputs(model: LoadedModel, plaintext: bytes) -> list[tuple[str, np.ndarray]]:
    """The decrypted canonical encoding as the model's inputs, with the same checks as a clear request."""
    try:
        tensors = decode_tensors(plaintext)
    except ProtocolError as error:
        raise bad_request("invalid_inputs", f"the opened input is not a tensor encoding: {error}") from error
    items = [
        {
            "name": name,
            "datatype": dtype_of(array).v2,
            "shape": list(array.shape),
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, array in tensors
    ]
    raw = BinaryInputs(b"".join(array.tobytes() for _, array in tensors))
    inputs = parse_inputs(model.entry, items, v2=True, raw=raw)
    raw.finish()
    return inputs


def sealed_inference(service: EnclaveService, body: bytes) -> dict[str, Any]:
    """Open, run, (re)seal and sign one on-chain sealed request; every refusal is a 4xx, nothing signed."""
    request = parse_json(body)
    if not isinstance(request, dict) or not {"model", "sealed_input"} <= request.keys():
        raise bad_request("missing_field", "body needs 'model' and 'sealed_input'")
    unknown = request.keys() - _FIELDS
    if unknown:
        raise bad_request("invalid_request", f"unknown fields {sorted(unknown)}")
    model = service.runtime.get(request["model"])
    sealed_input = _hex(request["sealed_input"], "sealed_input")
    output_key = None if request.get("output_key") is None else _hex(request["output_key"], "output_key", 32)
    request_id = parse_request_id(request.get("request_id"))
    try:
        plaintext = open_input(service.sealing_key, model.entry.model_hash, sealed_input)
    except ProtocolError as error:
        raise bad_request("sealed_input_rejected", f"cannot open the sealed input: {error}") from error
    inputs = _opened_inputs(model, plaintext)
    outputs = model.run(dict(inputs))
    check_finite(model, outputs)
    encoding = encode_tensors(outputs)
    output = encoding if output_key is None else seal_output(output_key, sealed_input, encoding)
    signed = service.sign(model, request_id, keccak256(sealed_input), keccak256(output))
    service.record(signed)
    return {
        "model": model.entry.name,
        "model_version": model.entry.version,
        "output": "0x" + output.hex(),
        "sealed_output": output_key is not None,
        "receipt": signed.to_json(),
        "simulated": service.simulated,
    }
