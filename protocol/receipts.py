"""Inference receipts: EIP-712 typed data signed by the enclave key, checkable with one ecrecover.

    domain  EIP712Domain(string name,string version)  name = "verinfer", version = "1"
    struct  InferenceReceipt(bytes32 requestId,bytes32 modelHash,bytes32 inputHash,bytes32 outputHash,
                             uint64 timestampMs)
    digest  keccak256(0x19 0x01 || domainSeparator || keccak256(typeHash || fields, each a 32-byte word))

The domain separator and type hash are constants, so signing a receipt is two keccaks and one ECDSA sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from coincurve import PublicKey

from .addresses import address_of, checksum_address
from .errors import ProtocolError
from .hashing import keccak256

DOMAIN_NAME = "verinfer"
DOMAIN_VERSION = "1"
DOMAIN_TYPEHASH = keccak256(b"EIP712Domain(string name,string version)")
DOMAIN_SEPARATOR = keccak256(
    DOMAIN_TYPEHASH + keccak256(DOMAIN_NAME.encode()) + keccak256(DOMAIN_VERSION.encode())
)
RECEIPT_TYPE = (
    "InferenceReceipt(bytes32 requestId,bytes32 modelHash,bytes32 inputHash,bytes32 outputHash,"
    "uint64 timestampMs)"
)
RECEIPT_TYPEHASH = keccak256(RECEIPT_TYPE.encode())
_PREFIX = b"\x19\x01" + DOMAIN_SEPARATOR
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


BATCH_TYPEHASH = keccak256(b"ReceiptBatch(bytes32 root,uint32 count)")


def batch_digest(root: bytes, count: int) -> bytes:
    """The EIP-712 digest an enclave signs to vouch for a Merkle root over `count` of its receipts."""
    return keccak256(_PREFIX + keccak256(BATCH_TYPEHASH + root + count.to_bytes(32, "big")))


class ReceiptError(ProtocolError):
    """A receipt that is malformed or whose signature does not recover."""


class Signer(Protocol):
    """Whatever holds the enclave key: protocol/ builds digests, only enclave/ holds a private key."""

    @property
    def address(self) -> bytes: ...

    def sign_digest(self, digest: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Receipt:
    request_id: bytes
    model_hash: bytes
    input_hash: bytes
    output_hash: bytes
    timestamp_ms: int

    def __post_init__(self) -> None:
        # Straight-line on purpose: the enclave builds one receipt per request, and a loop over the fields
        # costs as much again. Work out which field is wrong only on failure.
        r, m, i, o = self.request_id, self.model_hash, self.input_hash, self.output_hash
        if not (
            type(r) is bytes
            and type(m) is bytes
            and type(i) is bytes
            and type(o) is bytes
            and len(r) == len(m) == len(i) == len(o) == 32
        ):
            names = ("request_id", "model_hash", "input_hash", "output_hash")
            for name, value in zip(names, (r, m, i, o), strict=True):
                if not isinstance(value, bytes) or len(value) != 32:
                    raise ReceiptError(f"{name} must be 32 bytes")
        if type(self.timestamp_ms) is not int or not 0 <= self.timestamp_ms < 2**64:
            raise ReceiptError("timestampMs must fit in uint64")

    def struct_hash(self) -> bytes:
        return keccak256(
            RECEIPT_TYPEHASH
            + self.request_id
            + self.model_hash
            + self.input_hash
            + self.output_hash
            + self.timestamp_ms.to_bytes(32, "big")
        )

    def digest(self) -> bytes:
        """The EIP-712 digest the enclave signs."""
        return keccak256(_PREFIX + self.struct_hash())


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    receipt: Receipt
    enclave: bytes  # 20-byte address
    signature: bytes  # 65 bytes r || s || v

    def to_json(self) -> dict[str, Any]:
        r = self.receipt
        return {
            "requestId": "0x" + r.request_id.hex(),
            "modelHash": "0x" + r.model_hash.hex(),
            "inputHash": "0x" + r.input_hash.hex(),
            "outputHash": "0x" + r.output_hash.hex(),
            "timestampMs": r.timestamp_ms,
            "enclave": checksum_address(self.enclave),
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> SignedReceipt:
        if not isinstance(data, dict):
            raise ReceiptError("receipt must be a JSON object")
        try:
            receipt = Receipt(
                request_id=_hex_field(data, "requestId", 32),
                model_hash=_hex_field(data, "modelHash", 32),
                input_hash=_hex_field(data, "inputHash", 32),
                output_hash=_hex_field(data, "outputHash", 32),
                timestamp_ms=_int_field(data, "timestampMs"),
            )
            enclave, signature = _hex_field(data, "enclave", 20), _hex_field(data, "signature", 65)
        except KeyError as exc:
            raise ReceiptError(f"receipt field {exc} is missing") from exc
        return cls(receipt, enclave, signature)


def _hex_field(data: dict[str, Any], name: str, length: int) -> bytes:
    value = data[name]
    try:
        raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != length:
        raise ReceiptError(f"{name} must be 0x-hex of {length} bytes")
    return raw


def _int_field(data: dict[str, Any], name: str) -> int:
    value = data[name]
    if type(value) is not int:
        raise ReceiptError(f"{name} must be an integer")
    return value


def sign_receipt(signer: Signer, receipt: Receipt) -> SignedReceipt:
    return SignedReceipt(receipt, signer.address, signer.sign_digest(receipt.digest()))


def recover_signer(receipt: Receipt, signature: bytes) -> bytes:
    """The address that signed `receipt`; rejects malleable (high-s) and malformed signatures."""
    return recover_address(receipt.digest(), signature)


def recover_address(digest: bytes, signature: bytes) -> bytes:
    """The address whose key signed the 32-byte `digest` (65-byte r || s || v, low-s, v in {27, 28})."""
    if len(signature) != 65 or signature[64] not in (27, 28):
        raise ReceiptError("signature must be 65 bytes r || s || v with v in {27, 28}")
    if int.from_bytes(signature[32:64], "big") > SECP256K1_HALF_N:
        raise ReceiptError("signature s is not in the lower half of the curve order")
    try:
        public = PublicKey.from_signature_and_message(
            signature[:64] + bytes((signature[64] - 27,)), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises plain Exception for unrecoverable signatures
        raise ReceiptError(f"signature does not recover: {exc}") from exc
    return address_of(public.format(compressed=False)[1:])
