"""Reading documents as people pass them around: raw bytes, hex, base64, or the JSON of GET /attestation.

One reader for every command that takes a document (`verinfer attest inspect|verify`, `verinfer verify
--attestation`), so a file that one of them accepts, all of them accept.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

_HEX = re.compile(rb"^(0x)?[0-9a-fA-F]+$")
_B64 = re.compile(rb"^[A-Za-z0-9+/_-]+={0,2}$")


class DocumentFormatError(ValueError):
    """The input looks like the JSON of GET /attestation but carries no readable document."""


def read_document_bytes(data: bytes) -> bytes:
    """The COSE_Sign1 bytes of a document given in any of the forms it travels in:

    - raw COSE bytes (`GET /attestation` with `Accept: application/cbor`, `attest simulate --format raw`),
      returned as they are;
    - the JSON answer of `GET /attestation`: an object whose "document" is standard base64;
    - hex text (optional 0x), or base64 text (standard or URL-safe, padding optional); whitespace ignored.

    Anything else is returned unchanged, so decoding reports what is wrong with it (`malformed:cose`).
    Raises DocumentFormatError for a JSON object without a base64 "document".
    """
    if data[:1] in (b"\x84", b"\xd2"):  # CBOR array(4) or tag 18: already raw
        return data
    stripped = data.strip()
    if stripped.startswith(b"{"):
        return _from_json(stripped)
    text = b"".join(data.split())
    if _HEX.match(text) and len(text.removeprefix(b"0x")) % 2 == 0:
        return bytes.fromhex(text.removeprefix(b"0x").decode())
    if _B64.match(text):
        try:
            padded = text + b"=" * (-len(text) % 4)
            return base64.b64decode(padded.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
        except binascii.Error:
            pass
    return data


def _from_json(text: bytes) -> bytes:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DocumentFormatError(f"attestation JSON does not parse: {exc}") from exc
    document = value.get("document") if isinstance(value, dict) else None
    if not isinstance(document, str):
        raise DocumentFormatError("attestation JSON has no base64 'document' (the GET /attestation answer)")
    try:
        return base64.b64decode("".join(document.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DocumentFormatError(f"attestation JSON 'document' is not base64: {exc}") from exc
