"""Reading documents that people pass around as raw bytes, hex or base64."""

from __future__ import annotations

import base64
import binascii
import re

_HEX = re.compile(rb"^(0x)?[0-9a-fA-F]+$")
_B64 = re.compile(rb"^[A-Za-z0-9+/_-]+={0,2}$")


def read_document_bytes(data: bytes) -> bytes:
    """Raw COSE bytes as they are; otherwise hex (optional 0x) or base64 (standard or URL-safe) text."""
    if data[:1] in (b"\x84", b"\xd2"):  # CBOR array(4) or tag 18: already raw
        return data
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
