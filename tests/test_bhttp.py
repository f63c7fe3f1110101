"""protocol.bhttp: RFC 9292's examples byte for byte, truncation and padding, refusals, round trips, fuzz."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.bhttp import (
    MAX_FIELD_LINES,
    MAX_INFORMATIONAL,
    BhttpError,
    BhttpRequest,
    BhttpResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    encode_varint,
)
from protocol.errors import ProtocolError

_DATA = json.loads((Path(__file__).parent / "vectors" / "bhttp_rfc9292.json").read_text())
EXAMPLES = {e["name"]: bytes.fromhex("".join(e["hex_lines"]).replace(" ", "")) for e in _DATA["examples"]}

# The messages of RFC 9292 section 5, as the RFC shows them in HTTP/1.1 form (names lowercased).
RFC_REQUEST = BhttpRequest(
    method="GET",
    scheme="https",
    authority="",
    path="/hello.txt",
    headers=(
        (b"user-agent", b"curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"),
        (b"host", b"www.example.com"),
        (b"accept-language", b"en, mi"),
    ),
)
RFC_RESPONSE = BhttpResponse(
    status=200,
    informational=(
        (102, ((b"running", b'"sleep 15"'),)),
        (
            103,
            (
                (b"link", b"</style.css>; rel=preload; as=style"),
                (b"link", b"</script.js>; rel=preload; as=script"),
            ),
        ),
    ),
    headers=(
        (b"date", b"Mon, 27 Jul 2009 12:28:53 GMT"),
        (b"server", b"Apache"),
        (b"last-modified", b"Wed, 22 Jul 2009 19:15:56 GMT"),
        (b"etag", b'"34aa387-d-1568eb00"'),
        (b"accept-ranges", b"bytes"),
        (b"content-length", b"51"),
        (b"vary", b"Accept-Encoding"),
        (b"content-type", b"text/plain"),
    ),
    content=b"Hello World! My content includes a trailing CRLF.\r\n",
)
RFC_CHUNKED_RESPONSE = BhttpResponse(
    status=200, content=b"This content contains CRLF.\r\n", trailers=((b"trailer", b"text"),)
)


# --- RFC 9292 section 5 ---------------------------------------------------------------------------------


def test_known_length_request_example() -> None:
    data = EXAMPLES["known_length_request"]
    assert decode_request(data) == RFC_REQUEST
    assert encode_request(RFC_REQUEST) == data
    assert RFC_REQUEST.header(b"host") == b"www.example.com"
    assert RFC_REQUEST.header(b"cookie") is None


def test_known_length_request_truncated_as_the_rfc_says() -> None:
    """'the last two bytes -- corresponding to content and a trailer section -- can each be removed'."""
    data = EXAMPLES["known_length_request"]
    assert decode_request(data[:-1]) == RFC_REQUEST
    assert decode_request(data[:-2]) == RFC_REQUEST


def test_indeterminate_length_request_example_with_padding() -> None:
    data = EXAMPLES["indeterminate_length_request"]
    assert decode_request(data) == RFC_REQUEST
    # 10 bytes of padding after the three terminators
    assert encode_request(RFC_REQUEST, indeterminate=True, padding=10) == data
    assert encode_request(RFC_REQUEST, indeterminate=True) == data[:-10]
    # 'anything up to 12 bytes can be removed from this message without affecting its meaning'
    for cut in range(13):
        assert decode_request(data[: len(data) - cut]) == RFC_REQUEST
    # the header section's terminator cannot be removed
    with pytest.raises(BhttpError, match="truncated"):
        decode_request(data[: len(data) - 13])


def test_response_with_informational_responses_example() -> None:
    data = EXAMPLES["indeterminate_length_response_with_informational"]
    response = decode_response(data)
    assert response == RFC_RESPONSE
    assert response.header(b"content-type") == b"text/plain"
    assert encode_response(RFC_RESPONSE, indeterminate=True) == data


def test_known_length_response_with_trailer_example() -> None:
    data = EXAMPLES["known_length_response_with_trailer"]
    assert decode_response(data) == RFC_CHUNKED_RESPONSE
    assert encode_response(RFC_CHUNKED_RESPONSE) == data


def test_rfc9458_minimal_messages_truncated_after_control_data() -> None:
    request = bytes.fromhex(_DATA["from_rfc9458"]["request"])
    response = bytes.fromhex(_DATA["from_rfc9458"]["response"])
    assert decode_request(request) == BhttpRequest("GET", "https", "example.com", "/")
    assert decode_response(response) == BhttpResponse(200)
    assert encode_request(BhttpRequest("GET", "https", "example.com", "/")) == request + b"\x00\x00\x00"
    assert encode_response(BhttpResponse(200)) == response + b"\x00\x00\x00"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_refuse_other_message_kind(name: str) -> None:
    data = EXAMPLES[name]
    with pytest.raises(BhttpError):
        (decode_response if "request" in name else decode_request)(data)


# --- variable-length integers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        # RFC 9000 Appendix A.1's examples
        (151288809941952652, "c2197c5eff14e88c"),
        (494878333, "9d7f3e7d"),
        (15293, "7bbd"),
        (37, "25"),
        (0, "00"),
        (63, "3f"),
        (64, "4040"),
        ((1 << 62) - 1, "ffffffffffffffff"),
    ],
)
def test_varint_encoding(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded


def test_varint_out_of_range() -> None:
    for value in (-1, 1 << 62):
        with pytest.raises(BhttpError):
            encode_varint(value)


def test_non_minimal_varints_are_accepted() -> None:
    """RFC 9292 section 3: 'Integer values do not need to be encoded on the minimum number of bytes'."""
    # framing 0 as 0x4000, method length 3 as 0x80000003, ...
    data = bytes.fromhex("4000") + bytes.fromhex("80000003") + b"GET" + b"\x05https\x00\x01/"
    assert decode_request(data) == BhttpRequest("GET", "https", "", "/")
    data = bytes.fromhex("01") + bytes.fromhex("c0000000000000c8")
    assert decode_response(data) == BhttpResponse(200)


# --- refusals -------------------------------------------------------------------------------------------

GET = b"\x00\x03GET\x05https\x0bexample.com\x01/"


def _known_request(fields: bytes, rest: bytes = b"\x00\x00") -> bytes:
    return GET + encode_varint(len(fields)) + fields + rest


def _field(name: bytes, value: bytes) -> bytes:
    return encode_varint(len(name)) + name + encode_varint(len(value)) + value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "framing indicator is missing"),
        (b"\x04", "unknown framing indicator"),
        (b"\x40", "cut short"),
        (b"\x00", "method length is missing"),
        (b"\x00\x03GE", "method claims 3 bytes"),
        (b"\x00\x00\x05https\x00\x01/", "not an HTTP token"),
        (b"\x00\x03G T\x05https\x00\x01/", "outside visible ASCII"),
        (b"\x00\x03GET\x051ttps\x00\x01/", "not a URI scheme"),
        (b"\x00\x03GET\x05https\x00\x02/\x7f", "outside visible ASCII"),
        (b"\x00\x03GET\x05https\x00\x02/\xff", "outside visible ASCII"),
        (_known_request(b"", b""), None),  # truncated after the header section: fine
        (GET + b"\x05", "header fields claim 5 bytes"),
        (GET + b"\x03\x01a\x05\x00\x00", "field value in the header fields claims 5 bytes"),
        (_known_request(b"\x00\x00"), "field name in the header fields is empty"),
        (_known_request(_field(b"Host", b"x")), "uppercase"),
        (_known_request(_field(b":path", b"/")), "pseudo-field"),
        (_known_request(_field(b"a b", b"x")), "not allowed in an HTTP field name"),
        (_known_request(_field(b"a\x00", b"x")), "not allowed in an HTTP field name"),
        (_known_request(_field(b"a", b"x\r\ny: z")), "NUL, CR or LF"),
        (_known_request(_field(b"a", b"x\x00")), "NUL, CR or LF"),
        (_known_request(_field(b"a", b" x")), "whitespace"),
        (_known_request(_field(b"a", b"x\t")), "whitespace"),
        (_known_request(b"", b"\x05abc"), "content claims 5 bytes"),
        (_known_request(b"", b"\x00\x03\x01a"), "trailer fields' declared length|trailer fields"),
        (_known_request(b"", b"\x00\x00\x00\x01"), "not zero padding"),
        (_known_request(b"", b"\x00\x00" + b"\x00" * 5 + b"\x01"), "not zero padding"),
        (b"\x02\x03GET\x05https\x00\x01/\x01a\x01b", "no terminator"),
        (b"\x02\x03GET\x05https\x00\x01/\x00\x03abc", "content has no terminator"),
        (b"\x02\x03GET\x05https\x00\x01/\x00\x05abc", "content chunk claims 5 bytes"),
        (b"\x02\x03GET\x05https\x00\x01/\x00\x00\x01a\x01b", "trailer fields have no terminator"),
    ],
)
def test_malformed_requests(data: bytes, message: str | None) -> None:
    if message is None:
        decode_request(data)
        return
    with pytest.raises(BhttpError, match=message):
        decode_request(data)


def test_field_line_overrunning_its_section_is_refused() -> None:
    # the section says 3 bytes, but the field line inside is 4 bytes long
    data = GET + b"\x03" + _field(b"a", b"bc") + b"\x00\x00"
    with pytest.raises(BhttpError, match="overruns"):
        decode_request(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01", "status code is missing"),
        (b"\x01\x40\x63", "not a final status"),  # 99
        (b"\x01\x42\x58", "not a final status"),  # 600
        (b"\x01\x40\x66", "informational header fields length is missing"),  # 102, then nothing
        (b"\x01\x40\x66\x00", "status code is missing"),  # 102 with empty headers, no final response
        (b"\x03\x40\x66\x00", "status code is missing"),
        (b"\x03\x40\x66", "informational header fields have no terminator"),
        (b"\x03\x40\xc8\x00\x00\x00\xff", "not zero padding"),
        (b"\x00\x03GET\x05https\x00\x01/", "request, not a response"),
    ],
)
def test_malformed_responses(data: bytes, message: str) -> None:
    with pytest.raises(BhttpError, match=message):
        decode_response(data)


def test_bounds_on_counts() -> None:
    many = b"".join(_field(b"a", b"") for _ in range(MAX_FIELD_LINES + 1))
    with pytest.raises(BhttpError, match="more than"):
        decode_request(_known_request(many))
    decode_request(_known_request(b"".join(_field(b"a", b"") for _ in range(MAX_FIELD_LINES))))
    interim = b"\x40\x64\x00" * (MAX_INFORMATIONAL + 1)  # 100 Continue, empty headers
    with pytest.raises(BhttpError, match="informational"):
        decode_response(b"\x01" + interim + b"\x40\xc8")
    decode_response(b"\x01" + b"\x40\x64\x00" * MAX_INFORMATIONAL + b"\x40\xc8")


def test_huge_claimed_lengths_allocate_nothing() -> None:
    big = encode_varint((1 << 62) - 1)
    for data in (
        b"\x00" + big,
        GET + big,
        _known_request(b"", big),
        b"\x02\x03GET\x05https\x00\x01/\x00" + big,
        b"\x01\x40\xc8" + big,
    ):
        with pytest.raises(BhttpError, match="truncated"):
            (decode_response if data[0] == 1 else decode_request)(data)


# --- encoding -------------------------------------------------------------------------------------------


def test_encoder_lowercases_names_and_refuses_invalid_fields() -> None:
    request = BhttpRequest("POST", "https", "h", "/infer", headers=((b"Content-Type", b"application/json"),))
    assert decode_request(encode_request(request)).headers == ((b"content-type", b"application/json"),)
    for bad in (
        BhttpRequest("GET", "https", "", "/", headers=((b"", b"x"),)),
        BhttpRequest("GET", "https", "", "/", headers=((b":path", b"/"),)),
        BhttpRequest("GET", "https", "", "/", trailers=((b"a", b"x\n"),)),
        BhttpRequest("", "https", "", "/"),
        BhttpRequest("GET", "https", "", "/ x"),
        BhttpRequest("GET", "https", "é", "/"),
    ):
        with pytest.raises(BhttpError):
            encode_request(bad)
    for bad_response in (
        BhttpResponse(199),
        BhttpResponse(600),
        BhttpResponse(200, informational=((200, ()),)),
        BhttpResponse(200, headers=((b"x", b" y"),)),
    ):
        with pytest.raises(BhttpError):
            encode_response(bad_response)
    with pytest.raises(BhttpError):
        encode_request(RFC_REQUEST, padding=-1)


# --- properties -----------------------------------------------------------------------------------------

_NAME_ALPHABET = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
names = st.text(_NAME_ALPHABET, min_size=1, max_size=20).map(str.encode)
values = st.binary(max_size=40).filter(
    lambda v: not (set(v) & {0, 10, 13}) and not (v and (v[0] in (9, 32) or v[-1] in (9, 32)))
)
fields = st.lists(st.tuples(names, values), max_size=6).map(tuple)
visible = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
requests = st.builds(
    BhttpRequest,
    method=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=10),
    scheme=st.sampled_from(["https", "http", "", "coap+tcp"]),
    authority=visible,
    path=visible,
    headers=fields,
    content=st.binary(max_size=200),
    trailers=fields,
)
responses = st.builds(
    BhttpResponse,
    status=st.integers(200, 599),
    headers=fields,
    content=st.binary(max_size=200),
    informational=st.lists(st.tuples(st.integers(100, 199), fields), max_size=3).map(tuple),
    trailers=fields,
)


@given(requests, st.booleans(), st.integers(0, 20))
def test_request_round_trip(request: BhttpRequest, indeterminate: bool, padding: int) -> None:
    data = encode_request(request, indeterminate=indeterminate, padding=padding)
    assert decode_request(data) == request


@given(responses, st.booleans(), st.integers(0, 20))
def test_response_round_trip(response: BhttpResponse, indeterminate: bool, padding: int) -> None:
    data = encode_response(response, indeterminate=indeterminate, padding=padding)
    assert decode_response(data) == response


@given(requests, st.booleans(), st.data())
def test_every_cut_of_a_request_decodes_the_same_or_is_refused(
    request: BhttpRequest, indeterminate: bool, data: st.DataObject
) -> None:
    """A prefix of a message is either the same message (only empty parts were cut) or refused."""
    encoded = encode_request(request, indeterminate=indeterminate)
    cut = data.draw(st.integers(0, len(encoded)))
    try:
        decoded = decode_request(encoded[:cut])
    except BhttpError:
        return
    # only whole trailing sections can go, and then they read as empty (RFC 9292 section 3.8)
    allowed = [
        request,
        replace(request, trailers=()),
        replace(request, content=b"", trailers=()),
        replace(request, headers=(), content=b"", trailers=()),
    ]
    assert decoded in allowed


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_bhttp_error(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        try:
            decode(data)
        except BhttpError as exc:
            assert isinstance(exc, ProtocolError)


@settings(max_examples=300)
@given(st.sampled_from(sorted(EXAMPLES)), st.data())
def test_mutated_examples_raise_only_bhttp_error(name: str, data: st.DataObject) -> None:
    original = bytearray(EXAMPLES[name])
    position = data.draw(st.integers(0, len(original) - 1))
    original[position] = data.draw(st.integers(0, 255))
    for decode in (decode_request, decode_response):
        with contextlib.suppress(BhttpError):
            decode(bytes(original))
