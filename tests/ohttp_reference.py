"""An independent Oblivious HTTP client, written from RFC 9458 and RFC 9180 on `cryptography` primitives only.

It shares no code with `protocol/` (nor uses pyhpke): its own DHKEM(X25519, HKDF-SHA256), LabeledExtract /
LabeledExpand, base-mode key schedule, sequence-numbered Seal and Export, key configuration parsing and
section 4.3/4.4 encapsulation. Tests check it against the RFCs' vectors and then use it to show the gateway
interoperates with a client that is not itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

# RFC 9180 section 7
KEM_ID = 0x0020
KDF_ID = 0x0001
AEADS = {0x0001: (16, 12), 0x0003: (32, 12)}  # aead_id: (Nk, Nn); Nt = 16 for both
NH = 32  # HKDF-SHA256 output size
NSECRET = 32
NENC = NPK = 32


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 section 2.2: HMAC-Hash(salt, IKM); an empty salt means Nh zero bytes."""
    return hmac.new(salt or bytes(NH), ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 section 2.3, written out: T(i) = HMAC(PRK, T(i-1) || info || i)."""
    assert length <= 255 * NH
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info, length)


KEM_SUITE_ID = b"KEM" + KEM_ID.to_bytes(2, "big")


def derive_key_pair(ikm: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 section 7.1.3 for X25519: (skXm, pkXm)."""
    dkp_prk = labeled_extract(KEM_SUITE_ID, b"", b"dkp_prk", ikm)
    sk = labeled_expand(KEM_SUITE_ID, dkp_prk, b"sk", b"", 32)
    return sk, public_key_of(sk)


def public_key_of(sk: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()


def encap(pk_r: bytes, sk_e: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 section 4.1 Encap with a given ephemeral key: (shared_secret, enc)."""
    dh = X25519PrivateKey.from_private_bytes(sk_e).exchange(X25519PublicKey.from_public_bytes(pk_r))
    enc = public_key_of(sk_e)
    eae_prk = labeled_extract(KEM_SUITE_ID, b"", b"eae_prk", dh)
    shared_secret = labeled_expand(KEM_SUITE_ID, eae_prk, b"shared_secret", enc + pk_r, NSECRET)
    return shared_secret, enc


@dataclass
class Context:
    """An RFC 9180 section 5.2 encryption context (sender side)."""

    suite_id: bytes
    aead_id: int
    key: bytes
    base_nonce: bytes
    exporter_secret: bytes
    shared_secret: bytes = b""
    seq: int = field(default=0)

    def _aead(self) -> AESGCM | ChaCha20Poly1305:
        return AESGCM(self.key) if self.aead_id == 0x0001 else ChaCha20Poly1305(self.key)

    def nonce(self, seq: int) -> bytes:
        return bytes(
            a ^ b for a, b in zip(self.base_nonce, seq.to_bytes(len(self.base_nonce), "big"), strict=True)
        )

    def seal(self, aad: bytes, pt: bytes) -> bytes:
        ct = self._aead().encrypt(self.nonce(self.seq), pt, aad)
        self.seq += 1
        return ct

    def open(self, aad: bytes, ct: bytes) -> bytes:
        pt = self._aead().decrypt(self.nonce(self.seq), ct, aad)
        self.seq += 1
        return pt

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return labeled_expand(self.suite_id, self.exporter_secret, b"sec", exporter_context, length)


def key_schedule(shared_secret: bytes, info: bytes, aead_id: int) -> Context:
    """RFC 9180 section 5.1, mode_base (psk and psk_id empty)."""
    nk, nn = AEADS[aead_id]
    suite_id = b"HPKE" + KEM_ID.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + aead_id.to_bytes(2, "big")
    psk_id_hash = labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(suite_id, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(suite_id, shared_secret, b"secret", b"")
    return Context(
        suite_id=suite_id,
        aead_id=aead_id,
        key=labeled_expand(suite_id, secret, b"key", context, nk),
        base_nonce=labeled_expand(suite_id, secret, b"base_nonce", context, nn),
        exporter_secret=labeled_expand(suite_id, secret, b"exp", context, NH),
        shared_secret=shared_secret,
    )


def setup_base_s(pk_r: bytes, info: bytes, aead_id: int, sk_e: bytes | None = None) -> tuple[bytes, Context]:
    """RFC 9180 section 5.1.1 SetupBaseS: (enc, context)."""
    shared_secret, enc = encap(pk_r, sk_e if sk_e is not None else os.urandom(32))
    return enc, key_schedule(shared_secret, info, aead_id)


def setup_base_r(enc: bytes, sk_r: bytes, info: bytes, aead_id: int) -> Context:
    """RFC 9180 section 5.1.1 SetupBaseR (Decap, then the same key schedule)."""
    dh = X25519PrivateKey.from_private_bytes(sk_r).exchange(X25519PublicKey.from_public_bytes(enc))
    eae_prk = labeled_extract(KEM_SUITE_ID, b"", b"eae_prk", dh)
    shared_secret = labeled_expand(
        KEM_SUITE_ID, eae_prk, b"shared_secret", enc + public_key_of(sk_r), NSECRET
    )
    return key_schedule(shared_secret, info, aead_id)


# --- RFC 9458 -----------------------------------------------------------------------------------------


def split_keys_body(body: bytes) -> list[bytes]:
    """The key configurations in an application/ohttp-keys body (RFC 9458 section 3.2)."""
    configs, pos = [], 0
    while pos < len(body):
        length = int.from_bytes(body[pos : pos + 2], "big")
        if length == 0 or pos + 2 + length > len(body):
            raise ValueError("bad application/ohttp-keys body")
        configs.append(body[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return configs


def parse_key_config(config: bytes) -> tuple[int, bytes, list[tuple[int, int]]]:
    """(key_id, public key, [(kdf_id, aead_id)]) of an X25519 key configuration (RFC 9458 section 3.1)."""
    key_id = config[0]
    if int.from_bytes(config[1:3], "big") != KEM_ID:
        raise ValueError("not a DHKEM(X25519, HKDF-SHA256) key configuration")
    public_key = config[3 : 3 + NPK]
    length = int.from_bytes(config[3 + NPK : 5 + NPK], "big")
    algorithms = config[5 + NPK :]
    if len(public_key) != NPK or length != len(algorithms) or length % 4 or not length:
        raise ValueError("bad key configuration")
    suites = [
        (int.from_bytes(algorithms[i : i + 2], "big"), int.from_bytes(algorithms[i + 2 : i + 4], "big"))
        for i in range(0, length, 4)
    ]
    return key_id, public_key, suites


def encapsulate(
    key_config_bytes: bytes, bhttp_request: bytes, aead_id: int, *, ephemeral_private: bytes | None = None
) -> tuple[bytes, Callable[[bytes], bytes]]:
    """RFC 9458 section 4.3: enc_request, and a function that opens the enc_response (section 4.4)."""
    key_id, pk_r, suites = parse_key_config(key_config_bytes)
    if (KDF_ID, aead_id) not in suites:
        raise ValueError(f"the key configuration does not offer HKDF-SHA256 with AEAD {aead_id}")
    hdr = bytes([key_id]) + KEM_ID.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + aead_id.to_bytes(2, "big")
    info = b"message/bhttp request" + b"\x00" + hdr
    enc, sctxt = setup_base_s(pk_r, info, aead_id, ephemeral_private)
    ct = sctxt.seal(b"", bhttp_request)
    nk, nn = AEADS[aead_id]

    def open_response(enc_response: bytes) -> bytes:
        secret = sctxt.export(b"message/bhttp response", max(nn, nk))
        response_nonce, ct_response = enc_response[: max(nn, nk)], enc_response[max(nn, nk) :]
        prk = hkdf_extract(enc + response_nonce, secret)
        aead_key = hkdf_expand(prk, b"key", nk)
        aead_nonce = hkdf_expand(prk, b"nonce", nn)
        aead = AESGCM(aead_key) if aead_id == 0x0001 else ChaCha20Poly1305(aead_key)
        return aead.decrypt(aead_nonce, ct_response, b"")

    return hdr + enc + ct, open_response
