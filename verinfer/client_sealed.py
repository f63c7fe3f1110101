"""The I/O-free half of sealed calls (Oblivious HTTP to the enclave's attested key, docs/PROTOCOL.md).

Nothing is sealed before the key is checked: the gateway's key configuration must name the X25519 key the
verified attestation binds (`user_data[32:64]`, protocol/binding.py); another key, or an enclave whose
document binds none, is an AttestationError. Each request carries a fresh 32-byte salt in the sealed
`Verinfer-Input-Salt` header, so its receipt commits to the input and output hashes with it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from attestation import VerifiedAttestation
from protocol import bhttp, ohttp
from protocol.binding import BindingError, split_user_data
from protocol.errors import ProtocolError
from protocol.hpke import AEAD_AES_128_GCM, KDF_HKDF_SHA256, KEM_X25519_SHA256
from protocol.sealing import SALT_HEADER, SALT_SIZE

from .client_errors import AttestationError, ServerError, server_error

GATEWAY_PATH = "/.well-known/ohttp-gateway"
KEYS_HEADERS = {"Accept": ohttp.KEYS_MEDIA_TYPE}
REQUEST_HEADERS = {"Content-Type": ohttp.REQUEST_MEDIA_TYPE}


def bound_key_config(
    verified: VerifiedAttestation, keys_body: bytes, aead_id: int = AEAD_AES_128_GCM
) -> ohttp.KeyConfig:
    """The gateway's configuration for the attested encryption key, or AttestationError."""
    try:
        bound = split_user_data(verified.user_data).encryption_key
    except BindingError as exc:
        raise AttestationError("no_encryption_key", str(exc)) from exc
    if bound is None:
        raise AttestationError(
            "no_encryption_key", "the attestation binds no encryption key: nothing is sealed"
        )
    try:
        configs = ohttp.decode_key_configs(keys_body)
    except ProtocolError as exc:
        raise AttestationError(
            "key_not_bound", f"the gateway's key configuration does not parse: {exc}"
        ) from exc
    for config in configs:
        if (
            config.kem_id == KEM_X25519_SHA256
            and config.public_key == bound
            and config.supports(KDF_HKDF_SHA256, aead_id)
        ):
            return config
    raise AttestationError(
        "key_not_bound",
        "the gateway offers no key the attestation binds (user_data[32:64]): refusing to seal to it",
    )


@dataclass(frozen=True)
class SealedExchange:
    """One sealed request in flight: what to POST, and how to open and check its answer."""

    enc_request: bytes
    salt: bytes
    opener: ohttp.ResponseOpener

    def open(self, status: int, content: bytes) -> bytes:
        """The inner answer's body, or ServerError (the gateway's refusal, or the inner route's)."""
        if status != 200:
            raise server_error(status, content)
        try:
            inner = bhttp.decode_response(self.opener.open(content))
        except ProtocolError as exc:
            raise ServerError(
                status, "sealed_response_invalid", f"the sealed answer does not open: {exc}"
            ) from exc
        if inner.status >= 400:
            raise server_error(inner.status, inner.content)
        echoed = inner.header(SALT_HEADER.encode())
        if echoed is not None and echoed.decode(errors="replace") != "0x" + self.salt.hex():
            raise ServerError(inner.status, "salt_mismatch", "the enclave answered with another salt")
        return inner.content


def seal_request(
    config: ohttp.KeyConfig, path: str, body: bytes, *, content_type: str = "application/json"
) -> SealedExchange:
    """A sealed POST of `body` to `path`, with a fresh salt and the current Date (replay window)."""
    salt = secrets.token_bytes(SALT_SIZE)
    date = format_datetime(datetime.now(UTC), usegmt=True)
    request = bhttp.BhttpRequest(
        method="POST",
        scheme="https",
        authority="verinfer.enclave",
        path=path,
        headers=(
            (b"content-type", content_type.encode()),
            (b"date", date.encode()),
            (SALT_HEADER.encode(), ("0x" + salt.hex()).encode()),
        ),
        content=body,
    )
    enc_request, opener = ohttp.encapsulate_request(
        config, bhttp.encode_request(request), config_aead(config)
    )
    return SealedExchange(enc_request, salt, opener)


def config_aead(config: ohttp.KeyConfig) -> int:
    """AES-128-GCM where offered (hardware AES), else the configuration's first AEAD."""
    aeads = [aead for kdf, aead in config.suites if kdf == KDF_HKDF_SHA256]
    return AEAD_AES_128_GCM if AEAD_AES_128_GCM in aeads or not aeads else aeads[0]
