"""What an enclave's attestation document binds besides its signing key (docs/PROTOCOL.md section 4).

`user_data` is `manifestDigest (32 bytes) || encryption key (32 bytes, X25519)`: the models it serves and the
key requests are sealed to. Documents from before sealing carry the manifest digest alone (32 bytes); they
verify, and have no encryption key, so nothing may be sealed to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ProtocolError

DIGEST_SIZE = 32
ENCRYPTION_KEY_SIZE = 32
USER_DATA_SIZE = DIGEST_SIZE + ENCRYPTION_KEY_SIZE


class BindingError(ProtocolError):
    """user_data that is neither a manifest digest nor a digest and an encryption key."""


@dataclass(frozen=True, slots=True)
class AttestedData:
    manifest_digest: bytes
    encryption_key: bytes | None  # None: a document from before sealing; never seal to it


def attested_user_data(manifest_digest: bytes, encryption_key: bytes) -> bytes:
    if len(manifest_digest) != DIGEST_SIZE or len(encryption_key) != ENCRYPTION_KEY_SIZE:
        raise BindingError("user_data binds a 32-byte manifest digest and a 32-byte X25519 key")
    return manifest_digest + encryption_key


def split_user_data(user_data: bytes | None) -> AttestedData:
    """The manifest digest and encryption key a document's user_data attests."""
    if user_data is not None and len(user_data) == USER_DATA_SIZE:
        return AttestedData(user_data[:DIGEST_SIZE], user_data[DIGEST_SIZE:])
    if user_data is not None and len(user_data) == DIGEST_SIZE:
        return AttestedData(user_data, None)
    size = "no" if user_data is None else f"{len(user_data)} bytes of"
    raise BindingError(
        f"the document has {size} user_data; expected the manifest digest (32 bytes), "
        "optionally followed by the X25519 encryption key (32 bytes)"
    )
