"""A strict CBOR (RFC 8949) decoder for the subset attestation documents and NSM messages use.

Why not a general library: cbor2 silently keeps the last of duplicate map keys, so two verifiers could
read different PCRs out of the same signed bytes. This decoder rejects duplicates, bounds nesting and
lengths against the input size, refuses floats and unknown simple values, and never raises anything but
`CborError`. Encoding (simulator, NSM requests) uses cbor2, which this decoder is tested against.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 16


class CborError(ValueError):
    """The input is not CBOR this decoder accepts."""


@dataclass(frozen=True, slots=True)
class Tagged:
    """A tagged item (major type 6) whose meaning the caller decides."""

    tag: int
    value: Any


class _Break:
    """The 0xff stop code of an indefinite-length item."""


_BREAK = _Break()
_UNPACK = {24: struct.Struct(">B"), 25: struct.Struct(">H"), 26: struct.Struct(">I"), 27: struct.Struct(">Q")}


class _Decoder:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def _argument(self, info: int) -> int:
        if info < 24:
            return info
        unpacker = _UNPACK.get(info)
        if unpacker is None:
            raise CborError(f"reserved additional information {info} at offset {self.pos - 1}")
        start = self.pos
        self.pos = start + unpacker.size
        if self.pos > self.end:
            raise CborError("truncated argument")
        value: int = unpacker.unpack_from(self.data, start)[0]
        return value

    def _take(self, length: int) -> bytes:
        start = self.pos
        if length > self.end - start:
            raise CborError(f"string of {length} bytes runs past the end of the input")
        self.pos = start + length
        return self.data[start : self.pos]

    def _chunks(self, major: int) -> bytes:
        parts: list[bytes] = []
        while True:
            if self.pos >= self.end:
                raise CborError("unterminated indefinite-length string")
            initial = self.data[self.pos]
            self.pos += 1
            if initial == 0xFF:
                return b"".join(parts)
            if initial >> 5 != major or initial & 0x1F == 31:
                raise CborError("indefinite-length string chunk of the wrong type")
            parts.append(self._take(self._argument(initial & 0x1F)))

    def item(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise CborError(f"nesting deeper than {MAX_DEPTH}")
        if self.pos >= self.end:
            raise CborError("unexpected end of input")
        initial = self.data[self.pos]
        self.pos += 1
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self._simple(info)
        if info == 31:
            return self._indefinite(major, depth)
        argument = self._argument(info)
        if major == 0:
            return argument
        if major == 1:
            return -1 - argument
        if major == 2:
            return self._take(argument)
        if major == 3:
            return _text(self._take(argument))
        if major == 4:
            self._check_count(argument)
            return [self.item(depth + 1) for _ in range(argument)]
        if major == 5:
            self._check_count(2 * argument)
            result: dict[Any, Any] = {}
            for _ in range(argument):
                self._put(result, self.item(depth + 1), self.item(depth + 1))
            return result
        return Tagged(argument, self.item(depth + 1))

    def _check_count(self, items: int) -> None:
        # Every item takes at least one byte, so a count beyond what is left cannot be honest.
        if items > self.end - self.pos:
            raise CborError(f"container claims {items} items but only {self.end - self.pos} bytes remain")

    def _indefinite(self, major: int, depth: int) -> Any:
        if major == 2:
            return self._chunks(2)
        if major == 3:
            return _text(self._chunks(3))
        if major == 4:
            items: list[Any] = []
            while (value := self.item(depth + 1)) is not _BREAK:
                items.append(value)
            return items
        if major == 5:
            result: dict[Any, Any] = {}
            while (key := self.item(depth + 1)) is not _BREAK:
                value = self.item(depth + 1)
                if value is _BREAK:
                    raise CborError("indefinite-length map ends after a key")
                self._put(result, key, value)
            return result
        raise CborError(f"major type {major} cannot have indefinite length")

    @staticmethod
    def _put(target: dict[Any, Any], key: Any, value: Any) -> None:
        if key is _BREAK or value is _BREAK:
            raise CborError("unexpected break code in a definite-length map")
        if not isinstance(key, int | str | bytes) or isinstance(key, bool):
            raise CborError(f"map key of unsupported type {type(key).__name__}")
        if key in target:
            raise CborError(f"duplicate map key {key!r}")
        target[key] = value

    def _simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 31:
            return _BREAK
        raise CborError(f"unsupported simple value or float (additional information {info})")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CborError("text string is not valid UTF-8") from exc


def loads(data: bytes) -> Any:
    """Decode exactly one CBOR item that spans all of `data`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CborError("input must be bytes")
    decoder = _Decoder(bytes(data))
    value = decoder.item(0)
    if value is _BREAK:
        raise CborError("unexpected break code at top level")
    if decoder.pos != decoder.end:
        raise CborError(f"{decoder.end - decoder.pos} trailing bytes after the item")
    return value


def head(major: int, argument: int) -> bytes:
    """The shortest initial byte(s) for a major type and argument (RFC 8949 preferred serialisation)."""
    prefix = major << 5
    if argument < 24:
        return bytes((prefix | argument,))
    if argument < 0x100:
        return bytes((prefix | 24, argument))
    if argument < 0x10000:
        return bytes((prefix | 25,)) + argument.to_bytes(2, "big")
    if argument < 0x100000000:
        return bytes((prefix | 26,)) + argument.to_bytes(4, "big")
    return bytes((prefix | 27,)) + argument.to_bytes(8, "big")
