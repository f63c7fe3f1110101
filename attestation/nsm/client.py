"""The NSM request/response protocol (aws-nitro-enclaves-nsm-api's CBOR messages) over any transport.

Requests are CBOR: a bare string for unit requests ("DescribeNSM", "GetRandom") or a one-key map such as
{"Attestation": {"user_data": .., "nonce": .., "public_key": ..}}. Responses mirror them, or are
{"Error": "<ErrorCode>"}. Both backends speak exactly this, so the simulator exercises the same codec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import cbor2

from .. import cbor

MAX_REQUEST = 4 * 1024
MAX_RESPONSE = 12 * 1024
MAX_USER_FIELD = 1024


class NsmErrorCode(StrEnum):
    """aws-nitro-enclaves-nsm-api's `ErrorCode`, in its declaration order (nsm-lib's C ABI numbers them
    0..8 in this order). The value is the name the driver sends in `{"Error": "<name>"}`."""

    SUCCESS = "Success"
    INVALID_ARGUMENT = "InvalidArgument"
    INVALID_INDEX = "InvalidIndex"
    INVALID_RESPONSE = "InvalidResponse"
    READ_ONLY_INDEX = "ReadOnlyIndex"
    INVALID_OPERATION = "InvalidOperation"
    BUFFER_TOO_SMALL = "BufferTooSmall"
    INPUT_TOO_LARGE = "InputTooLarge"
    INTERNAL_ERROR = "InternalError"

    @property
    def number(self) -> int:
        """The code's number in nsm-lib's C ABI (Success = 0 ... InternalError = 8)."""
        return list(NsmErrorCode).index(self)

    @classmethod
    def from_wire(cls, value: Any) -> NsmErrorCode | None:
        """The code named `value` in an NSM error response, or None when it names none."""
        try:
            return cls(value) if isinstance(value, str) else None
        except ValueError:
            return None


Transport = Callable[[bytes], bytes]


class NsmError(Exception):
    """The NSM answered with an error, or could not be reached. `code` is the NSM's ErrorCode.

    `code` is a StrEnum, so it also compares equal to the ErrorCode's name (`"InvalidIndex"`).
    """

    def __init__(self, code: NsmErrorCode, detail: str = "") -> None:
        self.code = NsmErrorCode(code)
        super().__init__(f"NSM error {self.code.value}" + (f": {detail}" if detail else ""))


@dataclass(frozen=True, slots=True)
class NsmDescription:
    version: tuple[int, int, int]
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...]
    digest: str


@dataclass(frozen=True, slots=True)
class PcrState:
    locked: bool
    data: bytes


def encode_request(request: str | dict[str, Any]) -> bytes:
    encoded = bytes(cbor2.dumps(request))
    if len(encoded) > MAX_REQUEST:
        raise NsmError(NsmErrorCode.INPUT_TOO_LARGE, f"request of {len(encoded)} bytes exceeds {MAX_REQUEST}")
    return encoded


def decode_response(raw: bytes, expected: str) -> Any:
    """The body of a `{expected: body}` response (or the bare string `expected`); NsmError otherwise."""
    try:
        message = cbor.loads(raw)
    except cbor.CborError as exc:
        raise NsmError(NsmErrorCode.INVALID_RESPONSE, f"response is not CBOR: {exc}") from exc
    if message == expected:
        return None
    if isinstance(message, dict) and len(message) == 1:
        ((kind, body),) = message.items()
        if kind == "Error":
            code = NsmErrorCode.from_wire(body)
            if code is None:
                raise NsmError(NsmErrorCode.INTERNAL_ERROR, f"unknown error {body!r:.120}")
            if code is NsmErrorCode.SUCCESS:
                raise NsmError(NsmErrorCode.INVALID_RESPONSE, "an error response that reports Success")
            raise NsmError(code)
        if kind == expected:
            return body
    raise NsmError(NsmErrorCode.INVALID_RESPONSE, f"expected a {expected} response, got {message!r:.120}")


def _field(body: Any, name: str, kind: type) -> Any:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise NsmError(
            NsmErrorCode.INVALID_RESPONSE,
            f"response field {name!r} missing or not {kind.__name__}",
        )
    return value


def _optional_bytes(name: str, value: bytes | None) -> bytes | None:
    if value is not None and len(value) > MAX_USER_FIELD:
        raise NsmError(
            NsmErrorCode.INPUT_TOO_LARGE,
            f"{name} is {len(value)} bytes, at most {MAX_USER_FIELD}",
        )
    return None if value is None else bytes(value)


class NsmClient:
    """Typed calls to an NSM. `simulated` tells callers (and their users) what they are talking to."""

    def __init__(self, transport: Transport, *, simulated: bool) -> None:
        self._transport = transport
        self.simulated = simulated

    def _call(self, request: str | dict[str, Any], expected: str) -> Any:
        return decode_response(self._transport(encode_request(request)), expected)

    def describe(self) -> NsmDescription:
        body = self._call("DescribeNSM", "DescribeNSM")
        locked = _field(body, "locked_pcrs", list)
        return NsmDescription(
            version=(
                _field(body, "version_major", int),
                _field(body, "version_minor", int),
                _field(body, "version_patch", int),
            ),
            module_id=_field(body, "module_id", str),
            max_pcrs=_field(body, "max_pcrs", int),
            locked_pcrs=tuple(int(i) for i in locked),
            digest=_field(body, "digest", str),
        )

    def attestation(
        self, user_data: bytes | None = None, nonce: bytes | None = None, public_key: bytes | None = None
    ) -> bytes:
        """A fresh attestation document (COSE_Sign1 bytes) binding these optional fields."""
        request = {
            "Attestation": {
                "user_data": _optional_bytes("user_data", user_data),
                "nonce": _optional_bytes("nonce", nonce),
                "public_key": _optional_bytes("public_key", public_key),
            }
        }
        document: bytes = _field(self._call(request, "Attestation"), "document", bytes)
        return document

    def get_random(self) -> bytes:
        random: bytes = _field(self._call("GetRandom", "GetRandom"), "random", bytes)
        return random

    def describe_pcr(self, index: int) -> PcrState:
        body = self._call({"DescribePCR": {"index": index}}, "DescribePCR")
        return PcrState(_field(body, "lock", bool), _field(body, "data", bytes))

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        body = self._call({"ExtendPCR": {"index": index, "data": bytes(data)}}, "ExtendPCR")
        new_value: bytes = _field(body, "data", bytes)
        return new_value

    def lock_pcr(self, index: int) -> None:
        self._call({"LockPCR": {"index": index}}, "LockPCR")

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs 0..range_-1."""
        self._call({"LockPCRs": {"range": range_}}, "LockPCRs")
