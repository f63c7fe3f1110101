"""Schemathesis hooks for bench/api_fuzz.py (loaded through SCHEMATHESIS_HOOKS): the media types of the
OHTTP gateway, which schemathesis does not know, travel as the raw bytes it generates."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.transport.serialization import serialize_binary


@schemathesis.serializer("message/ohttp-req")
def ohttp_request(_context: Any, value: Any) -> bytes:
    return serialize_binary(value)
