"""How the verifier contract binds a receipt to an on-chain request (docs/PROTOCOL.md, section 4).

Two rules, shared by the contract, the relay and any third-party verifier:

- fulfilment id: the receipt that fulfils on-chain request `requestId` must carry
  `keccak256(abi.encode(requestId, fulfiller))` as its request id, where `fulfiller` is the address
  that sends `fulfill` and is paid the fee. Copying a pending `fulfill`'s calldata from another address
  therefore fails the signature check: the fee is bound into what the enclave signed.
- output layout: an approved model's complete output is named on chain by
  `keccak256(u8 count || per output tensor, in declared order: u8 len(name) || name || u8 dtype)`;
  `fulfill` refuses an output encoding with any other tensors (a receipt over a subset of the outputs).
"""

from __future__ import annotations

from collections.abc import Iterable

from .hashing import keccak256
from .tensors import BY_NAME, DType


def fulfilment_id(request_id: bytes, fulfiller: str | bytes) -> bytes:
    """The receipt request id that lets `fulfiller` fulfil on-chain request `request_id`."""
    if len(request_id) != 32:
        raise ValueError("an on-chain request id is 32 bytes")
    address = bytes.fromhex(fulfiller.removeprefix("0x")) if isinstance(fulfiller, str) else fulfiller
    if len(address) != 20:
        raise ValueError("a fulfiller is a 20-byte address")
    return keccak256(request_id + bytes(12) + address)


def output_layout(outputs: Iterable[tuple[str, DType | str]]) -> bytes:
    """The layout hash of a model's outputs, given (name, dtype) pairs in the model's declared order."""
    body = bytearray()
    count = 0
    for name, dtype in outputs:
        code = (BY_NAME[dtype] if isinstance(dtype, str) else dtype).code
        raw = name.encode("utf-8")
        if not 0 < len(raw) <= 255:
            raise ValueError(f"output name {name!r} must be 1-255 bytes of UTF-8")
        body += bytes((len(raw),)) + raw + bytes((code,))
        count += 1
    if not 0 < count <= 255:
        raise ValueError("a model has 1-255 outputs")
    return keccak256(bytes((count,)) + bytes(body))
