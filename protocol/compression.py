"""HTTP content codings for request and response bodies: gzip and deflate (RFC 9110 section 8.4.1).

KServe V2 clients (tritonclient's `request_compression_algorithm` / `response_compression_algorithm`) send
`Content-Encoding: gzip|deflate` bodies and ask for compressed answers with `Accept-Encoding`. "deflate" is
the zlib format (RFC 1950), as HTTP defines it and as tritonclient and browsers send it. A compressed body is
inflated incrementally and refused as soon as it grows past the server's body limit, so a small compressed
body cannot make the server hold more than an uncompressed one could (a decompression bomb).
"""

from __future__ import annotations

import zlib

from .errors import RequestError

GZIP = "gzip"
DEFLATE = "deflate"
# zlib's wbits: 16 + 15 reads a gzip header and trailer, 15 the zlib format.
_WBITS = {GZIP: 16 + zlib.MAX_WBITS, DEFLATE: zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}
# Answers shorter than this are sent as they are: compressing them costs more than it saves.
MIN_COMPRESSED_SIZE = 256
_CHUNK = 64 * 1024


def unsupported(encoding: str) -> RequestError:
    return RequestError(
        415,
        "unsupported_content_encoding",
        f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate",
        headers={"Accept-Encoding": "gzip, deflate"},
    )


def decode_body(encoding: str, body: bytes, limit: int, too_large: RequestError) -> bytes:
    """The body without its content coding; `too_large` once the decoded body passes `limit` bytes."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return body
    wbits = _WBITS.get(name)
    if wbits is None:
        raise unsupported(encoding)
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    data = body
    try:
        while data:
            part = inflater.decompress(data, _CHUNK)
            size += len(part)
            if size > limit:
                raise too_large
            parts.append(part)
            data = inflater.unconsumed_tail
        tail = inflater.flush()
    except zlib.error as exc:
        raise RequestError(400, "invalid_content_encoding", f"the body is not valid {name}: {exc}") from exc
    size += len(tail)
    if size > limit:
        raise too_large
    if not inflater.eof or inflater.unused_data:
        raise RequestError(400, "invalid_content_encoding", f"the body is not one complete {name} stream")
    parts.append(tail)
    return b"".join(parts)


def accepted_encoding(accept: bytes) -> str | None:
    """gzip or deflate if the client's Accept-Encoding admits it (q > 0), gzip first; else None."""
    best: str | None = None
    for item in accept.decode("latin-1").lower().split(","):
        name, _, params = item.partition(";")
        name = name.strip()
        if name not in (GZIP, DEFLATE):
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0 and (best is None or name == GZIP):
            best = name
    return best


def encode_body(encoding: str, body: bytes) -> bytes:
    """Level 1: answers are small and latency matters more than the last few percent of size."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, _WBITS[encoding])
    return compressor.compress(body) + compressor.flush()
