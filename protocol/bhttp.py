"""Binary HTTP messages (RFC 9292): the inner request and response of Oblivious HTTP.

Strict on decode: every malformed input is a `BhttpError`, never another exception, and nothing is
allocated beyond the input (every length is checked against the bytes that remain before it is used).
Both framings are read (known length, indicators 0/1; indeterminate length, 2/3), with truncation (RFC 9292
section 3.8: a message may end before a field section or content, which then count as empty) and zero-byte
padding. Field names must be lowercase HTTP tokens (HTTP/2 rules, RFC 9113 section 8.2.1); pseudo-fields
are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

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

# The same rules as whole-string matches (one C call per name or value instead of a loop per byte). Every
# check below accepts exactly what these accept; the slower code that names what is wrong runs only on
# refusal.
_NAME_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # a lowercase token
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_SCHEME_RE = re.compile(rb"(?:[a-zA-Z][a-zA-Z0-9+\-.]*)?")  # RFC 3986 section 3.1, or empty
_VISIBLE_RE = re.compile(rb"[\x21-\x7e]*")
_TOKEN_STR_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_SCHEME_STR_RE = re.compile(r"(?:[a-zA-Z][a-zA-Z0-9+\-.]*)?")
_VISIBLE_STR_RE = re.compile(r"[\x21-\x7e]*")
_NUL_CR_LF = b"\x00\r\n"
_SP_HTAB = (0x20, 0x09)


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


_ONE_BYTE_VARINTS = tuple(bytes((value,)) for value in range(64))


def _length(value: int) -> bytes:
    """encode_varint for a length (a non-negative int), without a call for the common one-byte case."""
    return _ONE_BYTE_VARINTS[value] if value < 64 else encode_varint(value)


_VARINT_MASKS = (0x3F, 0x3FFF, 0x3FFF_FFFF, MAX_VARINT)  # by the two-bit length prefix


def _varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """The variable-length integer at `pos`, and the position after it."""
    if pos >= len(data):
        raise BhttpError(f"truncated message: {what} is missing")
    first = data[pos]
    if first < 0x40:
        return first, pos + 1
    prefix = first >> 6
    end = pos + (1 << prefix)
    if end > len(data):
        raise BhttpError(f"truncated message: {what} is cut short")
    return int.from_bytes(data[pos:end], "big") & _VARINT_MASKS[prefix], end


def _truncated(what: str, length: int, remaining: int) -> BhttpError:
    return BhttpError(f"truncated message: {what} claims {length} bytes, {remaining} remain")


def _vector(data: bytes, pos: int, what: str, length_what: str) -> tuple[bytes, int]:
    """A length-prefixed byte string at `pos` (`length_what` names its length), and the position after it."""
    if pos < len(data) and data[pos] < 0x40:
        length = data[pos]
        pos += 1
    else:
        length, pos = _varint(data, pos, length_what)
    end = pos + length
    if end > len(data):
        raise _truncated(what, length, len(data) - pos)
    return data[pos:end], end


class _Section:
    """The wording of the errors about one kind of field section, made once rather than per field line."""

    __slots__ = ("length", "name", "name_length", "value", "value_length", "where")

    def __init__(self, where: str) -> None:
        self.where = where
        self.length = f"the {where} length"
        self.name_length = f"a field name length in the {where}"
        self.name = f"a field name in the {where}"
        self.value_length = f"a field value in the {where} length"
        self.value = f"a field value in the {where}"


_HEADERS = _Section("header fields")
_TRAILERS = _Section("trailer fields")
_INFORMATIONAL = _Section("informational header fields")


# --- validation ----------------------------------------------------------------------------------------


def _name_error(name: bytes) -> NoReturn:
    """Raises the error for a field name that `_NAME_RE` refused."""
    if not name:
        raise BhttpError("a field name is empty")
    if name[0] == 0x3A:  # ':'
        raise BhttpError(f"pseudo-field {name[:40]!r} is not allowed in a field section")
    if any(0x41 <= c <= 0x5A for c in name) and all(c in _TCHAR for c in name):
        raise BhttpError(f"field name {name[:40]!r} has uppercase characters (names must be lowercase)")
    raise BhttpError(f"field name {name[:40]!r} has characters not allowed in an HTTP field name")


# RFC 9113 section 8.2.1: a field value has no NUL, CR or LF anywhere, and no leading or trailing SP or HTAB.
# Checked inline where field lines are read and written (a call per value would cost as much as the check).


def _value_error(name: bytes, value: bytes) -> NoReturn:
    """Raises the error for a field value that the inline check refused."""
    if len(value.translate(None, _NUL_CR_LF)) != len(value):
        raise BhttpError(f"the value of field {name[:40]!r} has a NUL, CR or LF")
    raise BhttpError(f"the value of field {name[:40]!r} starts or ends with whitespace")


def _ascii(raw: bytes, what: str) -> str:
    if _VISIBLE_RE.fullmatch(raw) is None:
        raise BhttpError(f"the request {what} has bytes outside visible ASCII")
    return raw.decode("ascii")


def _check_control(method: str, scheme: str, authority: str, path: str) -> None:
    if _TOKEN_STR_RE.fullmatch(method) is None:
        raise BhttpError(f"the request method {method[:40]!r} is not an HTTP token")
    if _SCHEME_STR_RE.fullmatch(scheme) is None:
        raise BhttpError(f"the request scheme {scheme[:40]!r} is not a URI scheme")
    if _VISIBLE_STR_RE.fullmatch(authority) is None:
        raise BhttpError("the request authority has characters outside visible ASCII")
    if _VISIBLE_STR_RE.fullmatch(path) is None:
        raise BhttpError("the request path has characters outside visible ASCII")


def _check_status(status: int, *, informational: bool) -> None:
    low, high = (100, 199) if informational else (200, 599)
    if not low <= status <= high:
        kind = "an informational" if informational else "a final"
        raise BhttpError(f"status {status} is not {kind} status ({low}-{high})")


# --- decoding ------------------------------------------------------------------------------------------


def _field_lines(data: bytes, pos: int, end: int, section: _Section) -> tuple[Fields, int]:
    """Field lines from `pos` up to `end` (known length) or up to a zero terminator (`end` < 0), and the
    position after them."""
    size = len(data)
    fields: list[tuple[bytes, bytes]] = []
    while True:
        if end >= 0:
            if pos == end:
                break
        elif pos >= size:
            raise BhttpError(f"truncated message: the {section.where} have no terminator")
        length = data[pos]  # pos < size here
        if length < 0x40:
            pos += 1
        else:
            length, pos = _varint(data, pos, section.name_length)
        if length == 0:
            if end >= 0:
                raise BhttpError(f"a field name in the {section.where} is empty")
            break
        stop = pos + length
        if stop > size:
            raise _truncated(section.name, length, size - pos)
        name = data[pos:stop]
        pos = stop
        if pos < size and data[pos] < 0x40:
            length = data[pos]
            pos += 1
        else:
            length, pos = _varint(data, pos, section.value_length)
        stop = pos + length
        if stop > size:
            raise _truncated(section.value, length, size - pos)
        value = data[pos:stop]
        pos = stop
        if end >= 0 and pos > end:
            raise BhttpError(f"a field line overruns the {section.where}' declared length")
        if len(fields) >= MAX_FIELD_LINES:
            raise BhttpError(f"the {section.where} have more than {MAX_FIELD_LINES} field lines")
        _check_field(name, value)
        fields.append((name, value))
    return tuple(fields), pos


def _check_field(name: bytes, value: bytes) -> None:
    """One field line's rules, decoding and encoding alike: a lower-case token name, and a value with no
    NUL, CR or LF and no surrounding whitespace (RFC 9292 section 3.6, RFC 9113 section 8.2.1)."""
    if _NAME_RE.fullmatch(name) is None:
        _name_error(name)
    if value and (
        len(value.translate(None, _NUL_CR_LF)) != len(value) or value[0] in _SP_HTAB or value[-1] in _SP_HTAB
    ):
        _value_error(name, value)


def _field_section(data: bytes, pos: int, indeterminate: bool, section: _Section) -> tuple[Fields, int]:
    if indeterminate:
        return _field_lines(data, pos, -1, section)
    if pos < len(data) and data[pos] == 0:
        return (), pos + 1  # an empty section (most trailers)
    length, pos = _varint(data, pos, section.length)
    remaining = len(data) - pos
    if length > remaining:
        raise BhttpError(f"truncated message: the {section.where} claim {length} bytes, {remaining} remain")
    return _field_lines(data, pos, pos + length, section)


def _content(data: bytes, pos: int, indeterminate: bool) -> tuple[bytes, int]:
    if not indeterminate:
        return _vector(data, pos, "the content", "the content length")
    chunks: list[bytes] = []
    while True:
        if pos >= len(data):
            raise BhttpError("truncated message: the content has no terminator")
        length, pos = _varint(data, pos, "a content chunk length")
        if length == 0:
            return b"".join(chunks), pos
        if len(chunks) >= MAX_CONTENT_CHUNKS:
            raise BhttpError(f"the content has more than {MAX_CONTENT_CHUNKS} chunks")
        end = pos + length
        if end > len(data):
            raise _truncated("a content chunk", length, len(data) - pos)
        chunks.append(data[pos:end])
        pos = end


def _body(data: bytes, pos: int, indeterminate: bool) -> tuple[Fields, bytes, Fields]:
    """Header section, content and trailers, each of which may be truncated away (RFC 9292 section 3.8)."""
    size = len(data)
    headers: Fields = ()
    content = b""
    trailers: Fields = ()
    if pos < size:
        headers, pos = _field_section(data, pos, indeterminate, _HEADERS)
        if pos < size:
            content, pos = _content(data, pos, indeterminate)
            if pos < size:
                trailers, pos = _field_section(data, pos, indeterminate, _TRAILERS)
    if pos < size and data.count(0, pos) != size - pos:
        raise BhttpError("the message is followed by data that is not zero padding")
    return headers, content, trailers


def _framing(data: bytes) -> tuple[int, int]:
    framing, pos = _varint(data, 0, "the framing indicator")
    if framing > INDETERMINATE_LENGTH_RESPONSE:
        raise BhttpError(f"unknown framing indicator {framing}")
    return framing, pos


def decode_request(data: bytes) -> BhttpRequest:
    """A `message/bhttp` request, in either framing."""
    data = bytes(data)
    framing, pos = _framing(data)
    if framing not in (KNOWN_LENGTH_REQUEST, INDETERMINATE_LENGTH_REQUEST):
        raise BhttpError("the message is a response, not a request")
    # Each part must be visible ASCII as soon as it is read; a token method and a URI scheme (both
    # visible ASCII) pass that at once, anything else goes through `_ascii` and then `_check_control`.
    raw, pos = _vector(data, pos, "the method", "the method length")
    control_ok = _TOKEN_RE.fullmatch(raw) is not None
    method = raw.decode("ascii") if control_ok else _ascii(raw, "method")
    raw, pos = _vector(data, pos, "the scheme", "the scheme length")
    if _SCHEME_RE.fullmatch(raw) is not None:
        scheme = raw.decode("ascii")
    else:
        control_ok = False
        scheme = _ascii(raw, "scheme")
    raw, pos = _vector(data, pos, "the authority", "the authority length")
    authority = _ascii(raw, "authority")
    raw, pos = _vector(data, pos, "the path", "the path length")
    path = _ascii(raw, "path")
    if not control_ok:
        _check_control(method, scheme, authority, path)
    headers, content, trailers = _body(data, pos, framing == INDETERMINATE_LENGTH_REQUEST)
    return BhttpRequest(method, scheme, authority, path, headers, content, trailers)


def decode_response(data: bytes) -> BhttpResponse:
    """A `message/bhttp` response, in either framing, with any informational (1xx) responses."""
    data = bytes(data)
    framing, pos = _framing(data)
    if framing not in (KNOWN_LENGTH_RESPONSE, INDETERMINATE_LENGTH_RESPONSE):
        raise BhttpError("the message is a request, not a response")
    indeterminate = framing == INDETERMINATE_LENGTH_RESPONSE
    informational: list[tuple[int, Fields]] = []
    while True:
        status, pos = _varint(data, pos, "the status code")
        if not 100 <= status <= 199:
            break
        if len(informational) >= MAX_INFORMATIONAL:
            raise BhttpError(f"more than {MAX_INFORMATIONAL} informational responses")
        fields, pos = _field_section(data, pos, indeterminate, _INFORMATIONAL)
        informational.append((status, fields))
    _check_status(status, informational=False)
    headers, content, trailers = _body(data, pos, indeterminate)
    return BhttpResponse(status, headers, content, tuple(informational), trailers)


# --- encoding ------------------------------------------------------------------------------------------


def _lower(fields: Fields) -> list[tuple[bytes, bytes]]:
    return [(bytes(name).lower(), bytes(value)) for name, value in fields]


def _encode_fields(fields: list[tuple[bytes, bytes]], indeterminate: bool, where: str) -> bytes:
    """The field section's bytes, each line checked first (refused: names not lowercase tokens, values
    HTTP/2 would refuse, more than MAX_FIELD_LINES lines)."""
    if len(fields) > MAX_FIELD_LINES:
        raise BhttpError(f"the {where} have more than {MAX_FIELD_LINES} field lines")
    if not fields:
        return b"\x00"  # an empty section: a zero length, or just the terminator
    parts: list[bytes] = []
    for name, value in fields:
        _check_field(name, value)
        size = len(name)
        parts += (_ONE_BYTE_VARINTS[size] if size < 64 else encode_varint(size), name)
        size = len(value)
        parts += (_ONE_BYTE_VARINTS[size] if size < 64 else encode_varint(size), value)
    lines = b"".join(parts)
    if indeterminate:
        return lines + b"\x00"
    return _length(len(lines)) + lines


def _encode_content(content: bytes, indeterminate: bool) -> bytes:
    if indeterminate:
        return (_length(len(content)) + content if content else b"") + b"\x00"
    return _length(len(content)) + content


def _padding(padding: int) -> bytes:
    if padding < 0:
        raise BhttpError("padding cannot be negative")
    return bytes(padding)


def encode_request(request: BhttpRequest, *, indeterminate: bool = False, padding: int = 0) -> bytes:
    """`message/bhttp` bytes for `request`, with every section present. Field names are lower-cased (HTTP
    names are case-insensitive; binary HTTP requires lowercase); anything else invalid is refused."""
    _check_control(request.method, request.scheme, request.authority, request.path)
    headers, trailers = _lower(request.headers), _lower(request.trailers)
    header_section = _encode_fields(headers, indeterminate, "header fields")
    trailer_section = _encode_fields(trailers, indeterminate, "trailer fields")
    method = request.method.encode("ascii")
    scheme = request.scheme.encode("ascii")
    authority = request.authority.encode("ascii")
    path = request.path.encode("ascii")
    return b"".join(
        (
            _ONE_BYTE_VARINTS[INDETERMINATE_LENGTH_REQUEST if indeterminate else KNOWN_LENGTH_REQUEST],
            _length(len(method)),
            method,
            _length(len(scheme)),
            scheme,
            _length(len(authority)),
            authority,
            _length(len(path)),
            path,
            header_section,
            _encode_content(bytes(request.content), indeterminate),
            trailer_section,
            _padding(padding),
        )
    )


def encode_response(response: BhttpResponse, *, indeterminate: bool = False, padding: int = 0) -> bytes:
    """`message/bhttp` bytes for `response` (informational responses first), with every section present."""
    _check_status(response.status, informational=False)
    if len(response.informational) > MAX_INFORMATIONAL:
        raise BhttpError(f"more than {MAX_INFORMATIONAL} informational responses")
    headers, trailers = _lower(response.headers), _lower(response.trailers)
    header_section = _encode_fields(headers, indeterminate, "header fields")
    trailer_section = _encode_fields(trailers, indeterminate, "trailer fields")
    parts = [_ONE_BYTE_VARINTS[INDETERMINATE_LENGTH_RESPONSE if indeterminate else KNOWN_LENGTH_RESPONSE]]
    for status, fields in response.informational:
        _check_status(status, informational=True)
        parts += (
            encode_varint(status),
            _encode_fields(_lower(fields), indeterminate, "informational header fields"),
        )
    parts += (
        encode_varint(response.status),
        header_section,
        _encode_content(bytes(response.content), indeterminate),
        trailer_section,
        _padding(padding),
    )
    return b"".join(parts)
