"""Oblivious HTTP (RFC 9458): key configurations, the gateway's decapsulation and response sealing, and the
client's encapsulation, on the HPKE layer in `protocol.hpke`.

Request (section 4.3): hdr = key_id (1) || kem_id (2) || kdf_id (2) || aead_id (2);
info = "message/bhttp request" || 0x00 || hdr; enc_request = hdr || enc || HPKE-Seal(aad="", request).
Response (section 4.4): secret = Export("message/bhttp response", max(Nn, Nk)); response_nonce = random
max(Nn, Nk) bytes; prk = HKDF-Extract(salt = enc || response_nonce, secret); key = Expand(prk, "key", Nk);
nonce = Expand(prk, "nonce", Nn); enc_response = response_nonce || AEAD-Seal(key, nonce, "", response).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from protocol.errors import ProtocolError
from protocol.hpke import (
    AEAD_AES_128_GCM,
    AEAD_CHACHA20_POLY1305,
    ENC_SIZE,
    KDF_HKDF_SHA256,
    KEM_X25519_SHA256,
    PUBLIC_KEY_SIZE,
    TAG_SIZE,
    HpkeContext,
    HpkeError,
    SealingKey,
    aead_sizes,
    sender_context,
)

REQUEST_MEDIA_TYPE = "message/ohttp-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-res"
KEYS_MEDIA_TYPE = "application/ohttp-keys"

REQUEST_INFO_LABEL = b"message/bhttp request"
RESPONSE_EXPORT_LABEL = b"message/bhttp response"
HEADER_SIZE = 7  # key_id (1) || kem_id (2) || kdf_id (2) || aead_id (2)

DEFAULT_SUITES: tuple[tuple[int, int], ...] = (
    (KDF_HKDF_SHA256, AEAD_AES_128_GCM),
    (KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305),
)

_Aead = AESGCM | ChaCha20Poly1305

# Npk of the KEMs in the IANA "HPKE KEM Identifiers" registry defined by RFC 9180 section 7.1, so that a
# configuration for another KEM can still be read (and skipped) from an application/ohttp-keys list.
_KEM_PUBLIC_KEY_SIZES = {0x0010: 65, 0x0011: 97, 0x0012: 133, 0x0020: 32, 0x0021: 56}


class OhttpError(ProtocolError):
    """An Oblivious HTTP message refused. `code`: "unknown_key" (key id or KEM not ours),
    "unsupported_suite" (KDF/AEAD not offered), "decryption_failed" (wrong key, tampered or truncated
    ciphertext) or "malformed"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- key configurations (section 3) --------------------------------------------------------------------


@dataclass(frozen=True)
class KeyConfig:
    """One key configuration (RFC 9458 section 3.1). `suites` are (kdf_id, aead_id) pairs."""

    key_id: int
    kem_id: int
    public_key: bytes
    suites: tuple[tuple[int, int], ...]

    def encode(self) -> bytes:
        if not 0 <= self.key_id <= 0xFF:
            raise OhttpError("malformed", f"key id {self.key_id} is not an 8-bit value")
        if not 0 <= self.kem_id <= 0xFFFF:
            raise OhttpError("malformed", f"KEM id {self.kem_id} is not a 16-bit value")
        expected = _KEM_PUBLIC_KEY_SIZES.get(self.kem_id)
        if expected is not None and len(self.public_key) != expected:
            raise OhttpError("malformed", f"KEM 0x{self.kem_id:04x} public keys are {expected} bytes")
        if not 1 <= len(self.suites) <= 16383:
            raise OhttpError("malformed", "a key configuration lists 1 to 16383 symmetric algorithms")
        for kdf_id, aead_id in self.suites:
            if not (0 <= kdf_id <= 0xFFFF and 0 <= aead_id <= 0xFFFF):
                raise OhttpError("malformed", "KDF and AEAD ids are 16-bit values")
        algorithms = b"".join(struct.pack(">HH", kdf, aead) for kdf, aead in self.suites)
        return (
            struct.pack(">BH", self.key_id, self.kem_id)
            + bytes(self.public_key)
            + struct.pack(">H", len(algorithms))
            + algorithms
        )

    def supports(self, kdf_id: int, aead_id: int) -> bool:
        return self.kem_id == KEM_X25519_SHA256 and (kdf_id, aead_id) in self.suites


def _public_key_size(kem_id: int, config: bytes) -> int:
    """Npk for `kem_id`; for a KEM this module does not know, the one length that makes `config` parse."""
    known = _KEM_PUBLIC_KEY_SIZES.get(kem_id)
    if known is not None:
        return known
    candidates = [
        npk
        for npk in range(len(config) - 3 - 2 - 4 + 1)
        if struct.unpack_from(">H", config, 3 + npk)[0] == len(config) - 5 - npk
    ]
    if len(candidates) != 1:
        raise OhttpError("malformed", f"cannot delimit the public key of unknown KEM 0x{kem_id:04x}")
    return candidates[0]


def decode_key_config(config: bytes) -> KeyConfig:
    """One key configuration that fills `config` exactly."""
    if len(config) < 3 + 2 + 4:
        raise OhttpError("malformed", "a key configuration is too short")
    key_id, kem_id = struct.unpack_from(">BH", config, 0)
    npk = _public_key_size(kem_id, config)
    if len(config) < 3 + npk + 2:
        raise OhttpError("malformed", "a key configuration's public key is truncated")
    public_key = config[3 : 3 + npk]
    (length,) = struct.unpack_from(">H", config, 3 + npk)
    algorithms = config[3 + npk + 2 :]
    if length != len(algorithms) or length < 4 or length % 4:
        raise OhttpError("malformed", "a key configuration's symmetric algorithms length is wrong")
    suites = tuple(struct.unpack_from(">HH", algorithms, i) for i in range(0, length, 4))
    return KeyConfig(key_id, kem_id, bytes(public_key), suites)


def encode_key_configs(configs: Sequence[KeyConfig]) -> bytes:
    """An `application/ohttp-keys` body (section 3.2): each configuration prefixed by its u16 length."""
    if not configs:
        raise OhttpError("malformed", "an application/ohttp-keys body holds at least one configuration")
    out = []
    for config in configs:
        encoded = config.encode()
        if len(encoded) > 0xFFFF:
            raise OhttpError("malformed", "a key configuration is longer than 65535 bytes")
        out.append(struct.pack(">H", len(encoded)) + encoded)
    return b"".join(out)


def decode_key_configs(data: bytes) -> list[KeyConfig]:
    """Every configuration in an `application/ohttp-keys` body. Strict: any encoding error refuses the whole
    body (section 3.2: Clients MUST discard incorrectly encoded collections). Configurations for KEMs or
    suites this module cannot use are kept; `KeyConfig.supports` says which are usable."""
    data = bytes(data)
    configs: list[KeyConfig] = []
    pos = 0
    if not data:
        raise OhttpError("malformed", "an application/ohttp-keys body is empty")
    while pos < len(data):
        if pos + 2 > len(data):
            raise OhttpError("malformed", "a key configuration length is truncated")
        (length,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if pos + length > len(data):
            raise OhttpError("malformed", "a key configuration is truncated")
        configs.append(decode_key_config(data[pos : pos + length]))
        pos += length
    return configs


# --- shared pieces --------------------------------------------------------------------------------------


def _header(key_id: int, kem_id: int, kdf_id: int, aead_id: int) -> bytes:
    return struct.pack(">BHHH", key_id, kem_id, kdf_id, aead_id)


def _request_info(header: bytes) -> bytes:
    return REQUEST_INFO_LABEL + b"\x00" + header


def _response_nonce_size(aead_id: int) -> int:
    nk, nn = aead_sizes(aead_id)
    return max(nn, nk)


def _response_keys(
    context: HpkeContext, aead_id: int, enc: bytes, response_nonce: bytes
) -> tuple[_Aead, bytes]:
    """The AEAD (keyed) and nonce of section 4.4, derived from the request's HPKE context."""
    nk, nn = aead_sizes(aead_id)
    secret = context.export(RESPONSE_EXPORT_LABEL, max(nn, nk))
    prk = hmac.new(enc + response_nonce, secret, hashlib.sha256).digest()  # HKDF-Extract(salt, ikm)
    key = HKDFExpand(hashes.SHA256(), nk, b"key").derive(prk)
    nonce = HKDFExpand(hashes.SHA256(), nn, b"nonce").derive(prk)
    return (AESGCM(key) if aead_id == AEAD_AES_128_GCM else ChaCha20Poly1305(key)), nonce


# --- gateway (server) -----------------------------------------------------------------------------------


class ResponseSealer:
    """Seals the one response to one decapsulated request (section 4.4). Single use: a second response
    under the same request context is refused rather than risk reusing a response nonce."""

    __slots__ = ("_context", "_used", "aead_id", "enc", "key_id")

    def __init__(self, context: HpkeContext, enc: bytes, key_id: int, aead_id: int) -> None:
        self._context = context
        self._used = False
        self.enc = enc  # the request's encapsulated key: unique per request, what a replay cache keys on
        self.key_id = key_id
        self.aead_id = aead_id

    def seal(self, response: bytes, *, response_nonce: bytes | None = None) -> bytes:
        """enc_response = response_nonce || AEAD-Seal(response). `response_nonce` is for published
        vectors only; by default it is fresh randomness."""
        if self._used:
            raise OhttpError("malformed", "this request's response has already been sealed")
        size = _response_nonce_size(self.aead_id)
        nonce_bytes = os.urandom(size) if response_nonce is None else bytes(response_nonce)
        if len(nonce_bytes) != size:
            raise OhttpError("malformed", f"the response nonce must be {size} bytes")
        self._used = True
        aead, nonce = _response_keys(self._context, self.aead_id, self.enc, nonce_bytes)
        return nonce_bytes + aead.encrypt(nonce, bytes(response), b"")

    def __repr__(self) -> str:
        return f"ResponseSealer(key_id={self.key_id}, aead_id=0x{self.aead_id:04x})"


class Gateway:
    """The Oblivious Gateway Resource's key: decapsulates requests sealed to one key configuration."""

    def __init__(
        self, key: SealingKey, key_id: int, suites: Sequence[tuple[int, int]] = DEFAULT_SUITES
    ) -> None:
        for kdf_id, aead_id in suites:
            if kdf_id != KDF_HKDF_SHA256:
                raise OhttpError("unsupported_suite", f"KDF 0x{kdf_id:04x} is not supported")
            aead_sizes(aead_id)  # raises HpkeError("unsupported_suite") for an AEAD HPKE here cannot do
        self._key = key
        self.config = KeyConfig(key_id, KEM_X25519_SHA256, key.public_key, tuple(suites))
        self.keys_body: bytes = encode_key_configs([self.config])

    @property
    def key_id(self) -> int:
        return self.config.key_id

    def decapsulate(self, enc_request: bytes) -> tuple[bytes, ResponseSealer]:
        """The inner (binary HTTP) request, and a sealer for its response (section 4.3)."""
        data = bytes(enc_request)
        if len(data) < HEADER_SIZE:
            raise OhttpError("malformed", "the encapsulated request is shorter than its header")
        key_id, kem_id, kdf_id, aead_id = struct.unpack_from(">BHHH", data, 0)
        if key_id != self.config.key_id or kem_id != self.config.kem_id:
            raise OhttpError(
                "unknown_key", f"no key with id {key_id} and KEM 0x{kem_id:04x}; fetch the key configuration"
            )
        if (kdf_id, aead_id) not in self.config.suites:
            raise OhttpError(
                "unsupported_suite",
                f"KDF 0x{kdf_id:04x} with AEAD 0x{aead_id:04x} is not offered by this key",
            )
        if len(data) < HEADER_SIZE + ENC_SIZE + TAG_SIZE:
            raise OhttpError("malformed", "the encapsulated request is truncated")
        header = data[:HEADER_SIZE]
        enc = data[HEADER_SIZE : HEADER_SIZE + ENC_SIZE]
        try:
            context = self._key.recipient_context(enc, _request_info(header), aead_id)
            request = context.open(data[HEADER_SIZE + ENC_SIZE :], b"")
        except HpkeError as exc:
            raise OhttpError("decryption_failed", "the encapsulated request could not be decrypted") from exc
        return request, ResponseSealer(context, enc, key_id, aead_id)

    def __repr__(self) -> str:
        return f"Gateway(key_id={self.config.key_id}, public_key={self.config.public_key.hex()})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("the gateway holds the sealing key and cannot be pickled")


# --- client ---------------------------------------------------------------------------------------------


class ResponseOpener:
    """Opens the encapsulated response to one encapsulated request (the client's side of section 4.4)."""

    __slots__ = ("_context", "aead_id", "enc")

    def __init__(self, context: HpkeContext, enc: bytes, aead_id: int) -> None:
        self._context = context
        self.enc = enc
        self.aead_id = aead_id

    def open(self, enc_response: bytes) -> bytes:
        data = bytes(enc_response)
        size = _response_nonce_size(self.aead_id)
        if len(data) < size + TAG_SIZE:
            raise OhttpError("malformed", "the encapsulated response is truncated")
        aead, nonce = _response_keys(self._context, self.aead_id, self.enc, data[:size])
        try:
            return aead.decrypt(nonce, data[size:], b"")
        except InvalidTag:
            raise OhttpError(
                "decryption_failed", "the encapsulated response could not be decrypted"
            ) from None

    def __repr__(self) -> str:
        return f"ResponseOpener(aead_id=0x{self.aead_id:04x})"


def encapsulate_request(
    config: KeyConfig,
    request: bytes,
    aead_id: int = AEAD_AES_128_GCM,
    *,
    kdf_id: int = KDF_HKDF_SHA256,
    ephemeral_private: bytes | None = None,
) -> tuple[bytes, ResponseOpener]:
    """enc_request for `request` (binary HTTP) sealed to `config`, and the opener for its response.
    `ephemeral_private` is for published vectors only; by default the HPKE ephemeral key is fresh."""
    if config.kem_id != KEM_X25519_SHA256:
        raise OhttpError("unsupported_suite", f"KEM 0x{config.kem_id:04x} is not supported")
    if len(config.public_key) != PUBLIC_KEY_SIZE:
        raise OhttpError("malformed", "the key configuration's public key is not an X25519 key")
    if kdf_id != KDF_HKDF_SHA256 or aead_id not in (AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305):
        raise OhttpError(
            "unsupported_suite", f"KDF 0x{kdf_id:04x} with AEAD 0x{aead_id:04x} is not supported"
        )
    if (kdf_id, aead_id) not in config.suites:
        raise OhttpError("unsupported_suite", f"the key configuration does not offer AEAD 0x{aead_id:04x}")
    header = _header(config.key_id, config.kem_id, kdf_id, aead_id)
    try:
        enc, context = sender_context(
            config.public_key, _request_info(header), aead_id, ephemeral_private=ephemeral_private
        )
    except HpkeError as exc:
        raise OhttpError(exc.code, exc.message) from exc
    return header + enc + context.seal(bytes(request), b""), ResponseOpener(context, enc, aead_id)
