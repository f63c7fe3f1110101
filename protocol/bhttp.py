"""Binary HTTP messages (RFC 9292): the inner request and response of Oblivious HTTP.

Strict on decode: every malformed input is a `BhttpError`, never another exception, and nothing is
allocated beyond the input (every length is checked against the bytes that remain before it is used).
Both framings are read (known length, indicators 0/1; indeterminate length, 2/3), with truncation (RFC 9292
section 3.8: a message may end before a field section or content, which then count as empty) and zero-byte
padding. Field names must be lowercase HTTP tokens (HTTP/2 rules, RFC 9113 section 8.2.1); pseudo-fields
are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import ProtocolError

Fields = tuple[tuple[bytes, bytes], ...]

KNOWN_LENGTH_REQUEST = 0
KNOWN_LENGTH_RESPONSE = 1
INDETERMINATE_LENGTH_REQUEST = 2
INDETERMINATE_LENGTH_RESPONSE = 3

MAX_VARINT = (1 << 62) - 1
# Bounds on counts (lengths are bounded by the input itself): a message never needs more.
MAX_FIELD_LINES = 1024
MAX_INFORMATIONAL = 32
MAX_CONTENT_CHUNKS = 65536

# RFC 9110 section 5.6.2: tchar. Uppercase letters are tokens but not valid in a binary (HTTP/2) field name.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_CHARS = frozenset(c for c in _TCHAR if not 0x41 <= c <= 0x5A)
_SCHEME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")
_VISIBLE = frozenset(range(0x21, 0x7F))


class BhttpError(ProtocolError):
    """A binary HTTP message that is malformed, truncated, or holds a field HTTP/2 would refuse."""


@dataclass(frozen=True)
class BhttpRequest:
    method: str
    scheme: str
    authority: str
    path: str
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        return _first(self.headers, name)


@dataclass(frozen=True)
class BhttpResponse:
    status: int
    headers: Fields = ()
    content: bytes = b""
    informational: tuple[tuple[int, Fields], ...] = ()
    trailers: Fields = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        return _first(self.headers, name)


def _first(fields: Fields, name: bytes) -> bytes | None:
    for field_name, value in fields:
        if field_name == name:
            return value
    return None


# --- variable-length integers (RFC 9000 section 16) ---------------------------------------------------


def encode_varint(value: int) -> bytes:
    """The shortest QUIC variable-length encoding of `value` (0 .. 2^62-1)."""
    if value < 0 or value > MAX_VARINT:
        raise BhttpError(f"integer {value} cannot be encoded as a variable-length integer")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def varint(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise BhttpError(f"truncated message: {what} is missing")
        first = self.data[self.pos]
        size = 1 << (first >> 6)
        if self.pos + size > len(self.data):
            raise BhttpError(f"truncated message: {what} is cut short")
        value = int.from_bytes(self.data[self.pos : self.pos + size], "big") & ((1 << (8 * size - 2)) - 1)
        self.pos += size
        return value

    def take(self, length: int, what: str) -> bytes:
        if length > len(self.data) - self.pos:
            raise BhttpError(f"truncated message: {what} claims {length} bytes, {self.remaining()} remain")
        out = self.data[self.pos : self.pos + length]
        self.pos += length
        return out

    def vector(self, what: str) -> bytes:
        return self.take(self.varint(f"{what} length"), what)


# --- validation ----------------------------------------------------------------------------------------


def _check_name(name: bytes) -> None:
    if not name:
        raise BhttpError("a field name is empty")
    if name[0] == 0x3A:  # ':'
        raise BhttpError(f"pseudo-field {name[:40]!r} is not allowed in a field section")
    if not all(c in _NAME_CHARS for c in name):
        if any(0x41 <= c <= 0x5A for c in name) and all(c in _TCHAR for c in name):
            raise BhttpError(f"field name {name[:40]!r} has uppercase characters (names must be lowercase)")
        raise BhttpError(f"field name {name[:40]!r} has characters not allowed in an HTTP field name")


def _check_value(name: bytes, value: bytes) -> None:
    # RFC 9113 section 8.2.1: no NUL, CR or LF anywhere; no leading or trailing SP or HTAB.
    if b"\x00" in value or b"\r" in value or b"\n" in value:
        raise BhttpError(f"the value of field {name[:40]!r} has a NUL, CR or LF")
    if value and (value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09)):
        raise BhttpError(f"the value of field {name[:40]!r} starts or ends with whitespace")


def _check_fields(fields: Fields, where: str) -> None:
    if len(fields) > MAX_FIELD_LINES:
        raise BhttpError(f"the {where} have more than {MAX_FIELD_LINES} field lines")
    for name, value in fields:
        _check_name(name)
        _check_value(name, value)


def _ascii(raw: bytes, what: str) -> str:
    if not all(c in _VISIBLE for c in raw):
        raise BhttpError(f"the request {what} has bytes outside visible ASCII")
    return raw.decode("ascii")


def _check_control(method: str, scheme: str, authority: str, path: str) -> None:
    if not method or not all(ord(c) in _TCHAR for c in method):
        raise BhttpError(f"the request method {method[:40]!r} is not an HTTP token")
    if scheme and (
        not scheme[0].isascii() or not scheme[0].isalpha() or any(ord(c) not in _SCHEME_CHARS for c in scheme)
    ):
        raise BhttpError(f"the request scheme {scheme[:40]!r} is not a URI scheme")
    for what, value in (("authority", authority), ("path", path)):
        if not all(0x21 <= ord(c) < 0x7F for c in value):
            raise BhttpError(f"the request {what} has characters outside visible ASCII")


def _check_status(status: int, *, informational: bool) -> None:
    low, high = (100, 199) if informational else (200, 599)
    if not low <= status <= high:
        kind = "an informational" if informational else "a final"
        raise BhttpError(f"status {status} is not {kind} status ({low}-{high})")


# --- decoding ------------------------------------------------------------------------------------------


def _field_lines(reader: _Reader, end: int, where: str) -> Fields:
    """Field lines up to `end` (known length) or up to a zero terminator (`end` < 0)."""
    fields: list[tuple[bytes, bytes]] = []
    while True:
        if end >= 0:
            if reader.pos == end:
                break
        elif reader.at_end():
            raise BhttpError(f"truncated message: the {where} have no terminator")
        name_length = reader.varint(f"a field name length in the {where}")
        if name_length == 0:
            if end >= 0:
                raise BhttpError(f"a field name in the {where} is empty")
            break
        name = reader.take(name_length, f"a field name in the {where}")
        value = reader.vector(f"a field value in the {where}")
        if end >= 0 and reader.pos > end:
            raise BhttpError(f"a field line overruns the {where}' declared length")
        if len(fields) >= MAX_FIELD_LINES:
            raise BhttpError(f"the {where} have more than {MAX_FIELD_LINES} field lines")
        _check_name(name)
        _check_value(name, value)
        fields.append((name, value))
    return tuple(fields)


def _field_section(reader: _Reader, indeterminate: bool, where: str) -> Fields:
    if indeterminate:
        return _field_lines(reader, -1, where)
    length = reader.varint(f"the {where} length")
    if length > reader.remaining():
        raise BhttpError(f"truncated message: the {where} claim {length} bytes, {reader.remaining()} remain")
    return _field_lines(reader, reader.pos + length, where)


def _content(reader: _Reader, indeterminate: bool) -> bytes:
    if not indeterminate:
        return reader.vector("the content")
    chunks: list[bytes] = []
    while True:
        if reader.at_end():
            raise BhttpError("truncated message: the content has no terminator")
        length = reader.varint("a content chunk length")
        if length == 0:
            return b"".join(chunks)
        if len(chunks) >= MAX_CONTENT_CHUNKS:
            raise BhttpError(f"the content has more than {MAX_CONTENT_CHUNKS} chunks")
        chunks.append(reader.take(length, "a content chunk"))


def _body(reader: _Reader, indeterminate: bool) -> tuple[Fields, bytes, Fields]:
    """Header section, content and trailers, each of which may be truncated away (RFC 9292 section 3.8)."""
    headers: Fields = ()
    content = b""
    trailers: Fields = ()
    if not reader.at_end():
        headers = _field_section(reader, indeterminate, "header fields")
        if not reader.at_end():
            content = _content(reader, indeterminate)
            if not reader.at_end():
                trailers = _field_section(reader, indeterminate, "trailer fields")
    if any(reader.data[reader.pos :]):
        raise BhttpError("the message is followed by data that is not zero padding")
    return headers, content, trailers


def _framing(reader: _Reader) -> int:
    framing = reader.varint("the framing indicator")
    if framing > INDETERMINATE_LENGTH_RESPONSE:
        raise BhttpError(f"unknown framing indicator {framing}")
    return framing


def decode_request(data: bytes) -> BhttpRequest:
    """A `message/bhttp` request, in either framing."""
    reader = _Reader(bytes(data))
    framing = _framing(reader)
    if framing not in (KNOWN_LENGTH_REQUEST, INDETERMINATE_LENGTH_REQUEST):
        raise BhttpError("the message is a response, not a request")
    method = _ascii(reader.vector("the method"), "method")
    scheme = _ascii(reader.vector("the scheme"), "scheme")
    authority = _ascii(reader.vector("the authority"), "authority")
    path = _ascii(reader.vector("the path"), "path")
    _check_control(method, scheme, authority, path)
    headers, content, trailers = _body(reader, framing == INDETERMINATE_LENGTH_REQUEST)
    return BhttpRequest(method, scheme, authority, path, headers, content, trailers)


def decode_response(data: bytes) -> BhttpResponse:
    """A `message/bhttp` response, in either framing, with any informational (1xx) responses."""
    reader = _Reader(bytes(data))
    framing = _framing(reader)
    if framing not in (KNOWN_LENGTH_RESPONSE, INDETERMINATE_LENGTH_RESPONSE):
        raise BhttpError("the message is a request, not a response")
    indeterminate = framing == INDETERMINATE_LENGTH_RESPONSE
    informational: list[tuple[int, Fields]] = []
    while True:
        status = reader.varint("the status code")
        if not 100 <= status <= 199:
            break
        if len(informational) >= MAX_INFORMATIONAL:
            raise BhttpError(f"more than {MAX_INFORMATIONAL} informational responses")
        informational.append((status, _field_section(reader, indeterminate, "informational header fields")))
    _check_status(status, informational=False)
    headers, content, trailers = _body(reader, indeterminate)
    return BhttpResponse(status, headers, content, tuple(informational), trailers)


# --- encoding ------------------------------------------------------------------------------------------


def _lower(fields: Fields) -> Fields:
    return tuple((bytes(name).lower(), bytes(value)) for name, value in fields)


def _encode_fields(fields: Fields, indeterminate: bool) -> bytes:
    lines = b"".join(encode_varint(len(n)) + n + encode_varint(len(v)) + v for n, v in fields)
    if indeterminate:
        return lines + b"\x00"
    return encode_varint(len(lines)) + lines


def _encode_content(content: bytes, indeterminate: bool) -> bytes:
    if indeterminate:
        return (encode_varint(len(content)) + content if content else b"") + b"\x00"
    return encode_varint(len(content)) + content


def _padding(padding: int) -> bytes:
    if padding < 0:
        raise BhttpError("padding cannot be negative")
    return bytes(padding)


def encode_request(request: BhttpRequest, *, indeterminate: bool = False, padding: int = 0) -> bytes:
    """`message/bhttp` bytes for `request`, with every section present. Field names are lower-cased (HTTP
    names are case-insensitive; binary HTTP requires lowercase); anything else invalid is refused."""
    _check_control(request.method, request.scheme, request.authority, request.path)
    headers, trailers = _lower(request.headers), _lower(request.trailers)
    _check_fields(headers, "header fields")
    _check_fields(trailers, "trailer fields")
    framing = INDETERMINATE_LENGTH_REQUEST if indeterminate else KNOWN_LENGTH_REQUEST
    control = b"".join(
        encode_varint(len(part)) + part
        for part in (
            request.method.encode("ascii"),
            request.scheme.encode("ascii"),
            request.authority.encode("ascii"),
            request.path.encode("ascii"),
        )
    )
    return b"".join(
        (
            encode_varint(framing),
            control,
            _encode_fields(headers, indeterminate),
            _encode_content(bytes(request.content), indeterminate),
            _encode_fields(trailers, indeterminate),
            _padding(padding),
        )
    )


def encode_response(response: BhttpResponse, *, indeterminate: bool = False, padding: int = 0) -> bytes:
    """`message/bhttp` bytes for `response` (informational responses first), with every section present."""
    _check_status(response.status, informational=False)
    if len(response.informational) > MAX_INFORMATIONAL:
        raise BhttpError(f"more than {MAX_INFORMATIONAL} informational responses")
    headers, trailers = _lower(response.headers), _lower(response.trailers)
    _check_fields(headers, "header fields")
    _check_fields(trailers, "trailer fields")
    parts = [encode_varint(INDETERMINATE_LENGTH_RESPONSE if indeterminate else KNOWN_LENGTH_RESPONSE)]
    for status, fields in response.informational:
        _check_status(status, informational=True)
        interim = _lower(fields)
        _check_fields(interim, "informational header fields")
        parts.append(encode_varint(status) + _encode_fields(interim, indeterminate))
    parts += [
        encode_varint(response.status),
        _encode_fields(headers, indeterminate),
        _encode_content(bytes(response.content), indeterminate),
        _encode_fields(trailers, indeterminate),
        _padding(padding),
    ]
    return b"".join(parts)
