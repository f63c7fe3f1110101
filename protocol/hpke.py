"""HPKE (RFC 9180), base mode, for the one KEM and KDF the service uses: a thin typed layer over `pyhpke`.

Suite: DHKEM(X25519, HKDF-SHA256) = 0x0020, HKDF-SHA256 = 0x0001, and AES-128-GCM (0x0001) or
ChaCha20-Poly1305 (0x0003). Every failure is an `HpkeError` with a stable `code`; messages never carry key
material, shared secrets or plaintext.
"""

from __future__ import annotations

from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhpke import AEADId, CipherSuite, ContextInterface, KDFId, KEMId, KEMKey, KEMKeyPair

from protocol.errors import ProtocolError

KEM_X25519_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_CHACHA20_POLY1305 = 0x0003
SUPPORTED_AEADS = (AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305)

PUBLIC_KEY_SIZE = 32  # Npk = Nenc for DHKEM(X25519)
ENC_SIZE = 32
TAG_SIZE = 16  # Nt for both AEADs

_AEAD_SIZES = {AEAD_AES_128_GCM: (16, 12), AEAD_CHACHA20_POLY1305: (32, 12)}
_AEAD_IDS = {AEAD_AES_128_GCM: AEADId.AES128_GCM, AEAD_CHACHA20_POLY1305: AEADId.CHACHA20_POLY1305}


class HpkeError(ProtocolError):
    """An HPKE operation refused: `code` is "unsupported_suite", "decryption_failed" or "malformed"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HpkeContext(Protocol):
    """An HPKE encryption context (RFC 9180 §5.2/§5.3): a sender only seals, a recipient only opens."""

    def seal(self, pt: bytes, aad: bytes = b"") -> bytes: ...

    def open(self, ct: bytes, aad: bytes = b"") -> bytes: ...

    def export(self, exporter_context: bytes, length: int) -> bytes: ...


def aead_sizes(aead_id: int) -> tuple[int, int]:
    """(Nk, Nn) of a supported AEAD."""
    sizes = _AEAD_SIZES.get(aead_id)
    if sizes is None:
        raise HpkeError("unsupported_suite", f"unsupported HPKE AEAD id 0x{aead_id:04x}")
    return sizes


# A CipherSuite holds no per-message state (each context gets its own KDF and key), so one per AEAD serves
# every request.
_SUITES = {
    aead_id: CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, aead)
    for aead_id, aead in _AEAD_IDS.items()
}


def _suite(aead_id: int) -> CipherSuite:
    suite = _SUITES.get(aead_id)
    if suite is None:
        raise HpkeError("unsupported_suite", f"unsupported HPKE AEAD id 0x{aead_id:04x}")
    return suite


class _Context:
    """Wraps a pyhpke context so that its failures surface as `HpkeError`, never a library exception."""

    __slots__ = ("_inner",)

    def __init__(self, inner: ContextInterface) -> None:
        self._inner = inner

    def seal(self, pt: bytes, aad: bytes = b"") -> bytes:
        try:
            return self._inner.seal(pt, aad)
        except Exception as err:
            raise HpkeError("malformed", "HPKE seal failed") from err

    def open(self, ct: bytes, aad: bytes = b"") -> bytes:
        try:
            return self._inner.open(ct, aad)
        except Exception:
            raise HpkeError(
                "decryption_failed", "HPKE open failed: wrong key, tampered or truncated"
            ) from None

    def export(self, exporter_context: bytes, length: int) -> bytes:
        if not 0 <= length <= 255 * 32:
            raise HpkeError("malformed", f"HPKE export length {length} out of range")
        return self._inner.export(exporter_context, length)

    def __repr__(self) -> str:
        return "HpkeContext(<secret>)"

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("an HPKE context holds secret keys and cannot be pickled")


class SealingKey:
    """An X25519 HPKE recipient key. The private key stays in this object: never serialised, logged or
    returned (the enclave makes one at boot; the attestation binds `public_key`)."""

    __slots__ = ("_kem_key", "_key", "public_key")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._key = private
        self._kem_key = KEMKey.from_pyca_cryptography_key(private)
        self.public_key: bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> SealingKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SealingKey:
        """For tests and published vectors only: a production key is always `generate()`d."""
        if len(raw) != 32:
            raise HpkeError("malformed", f"an X25519 private key is 32 bytes, got {len(raw)}")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def recipient_context(self, enc: bytes, info: bytes, aead_id: int) -> HpkeContext:
        """SetupBaseR (RFC 9180 §5.1.1)."""
        suite = _suite(aead_id)
        if len(enc) != ENC_SIZE:
            raise HpkeError("malformed", f"HPKE enc must be {ENC_SIZE} bytes, got {len(enc)}")
        try:
            inner = suite.create_recipient_context(enc, self._kem_key, info)
        except Exception:
            # a low-order point gives an all-zero DH output (RFC 9180 §7.1.4): refused like a bad ciphertext
            raise HpkeError("decryption_failed", "HPKE decapsulation failed") from None
        return _Context(inner)

    def open(self, enc: bytes, ciphertext: bytes, info: bytes, aead_id: int, aad: bytes = b"") -> bytes:
        """Single-shot Open (RFC 9180 §6.1)."""
        return self.recipient_context(enc, info, aead_id).open(ciphertext, aad)

    def __repr__(self) -> str:
        return f"SealingKey(public_key={self.public_key.hex()})"

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("the sealing key cannot be pickled or copied out of the process")


def _public_key(public_key: bytes) -> Any:
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise HpkeError(
            "malformed", f"an X25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}"
        )
    return KEMKey.from_pyca_cryptography_key(X25519PublicKey.from_public_bytes(public_key))


def sender_context(
    public_key: bytes, info: bytes, aead_id: int, *, ephemeral_private: bytes | None = None
) -> tuple[bytes, HpkeContext]:
    """SetupBaseS (RFC 9180 §5.1.1): (enc, context). `ephemeral_private` is for published vectors only."""
    suite = _suite(aead_id)
    pkr = _public_key(public_key)
    eks: KEMKeyPair | None = None
    if ephemeral_private is not None:
        if len(ephemeral_private) != 32:
            raise HpkeError("malformed", "an X25519 ephemeral private key is 32 bytes")
        ek = X25519PrivateKey.from_private_bytes(ephemeral_private)
        eks = KEMKeyPair(
            KEMKey.from_pyca_cryptography_key(ek), KEMKey.from_pyca_cryptography_key(ek.public_key())
        )
    try:
        enc, inner = suite.create_sender_context(pkr, info, eks=eks)
    except Exception:
        # only a low-order recipient public key makes encapsulation fail
        raise HpkeError("malformed", "HPKE encapsulation failed: invalid recipient public key") from None
    return enc, _Context(inner)


def seal(
    public_key: bytes, info: bytes, plaintext: bytes, aead_id: int, aad: bytes = b""
) -> tuple[bytes, bytes]:
    """Single-shot Seal (RFC 9180 §6.1): (enc, ciphertext)."""
    enc, context = sender_context(public_key, info, aead_id)
    return enc, context.seal(plaintext, aad)
