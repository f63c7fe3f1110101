"""protocol.ohttp against RFC 9458 Appendix A byte for byte, the independent reference client
(tests/ohttp_reference.py) against RFC 9180 and RFC 9458, and the two against each other."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given
from hypothesis import strategies as st

from protocol.bhttp import BhttpRequest, BhttpResponse, decode_request, decode_response, encode_response
from protocol.errors import ProtocolError
from protocol.hpke import AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305, KDF_HKDF_SHA256, SealingKey
from protocol.ohttp import (
    KEYS_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
    Gateway,
    KeyConfig,
    OhttpError,
    decode_key_config,
    decode_key_configs,
    encapsulate_request,
    encode_key_configs,
)
from tests import ohttp_reference as ref

VECTORS = Path(__file__).parent / "vectors"
A = json.loads((VECTORS / "ohttp_rfc9458.json").read_text())
HPKE = json.loads((VECTORS / "hpke_rfc9180.json").read_text())["vectors"]
h = bytes.fromhex
AEADS = (AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305)


def _rfc_gateway() -> Gateway:
    return Gateway(SealingKey.from_private_bytes(h(A["server_secret_key"])), key_id=1)


def test_media_types() -> None:
    assert (REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE, KEYS_MEDIA_TYPE) == (
        "message/ohttp-req",
        "message/ohttp-res",
        "application/ohttp-keys",
    )


# --- RFC 9458 Appendix A through the gateway ------------------------------------------------------------


def test_rfc9458_key_configuration() -> None:
    gateway = _rfc_gateway()
    assert gateway.config.encode() == h(A["key_config"])
    assert gateway.keys_body == struct.pack(">H", len(h(A["key_config"]))) + h(A["key_config"])
    assert decode_key_configs(gateway.keys_body) == [gateway.config]
    assert decode_key_config(h(A["key_config"])) == gateway.config
    assert gateway.config.suites == ((1, 1), (1, 3))


def test_rfc9458_request_and_response_through_the_gateway() -> None:
    gateway = _rfc_gateway()
    request, sealer = gateway.decapsulate(h(A["encapsulated_request"]))
    assert request == h(A["request"])
    assert decode_request(request) == BhttpRequest("GET", "https", "example.com", "/")
    assert sealer.enc == h(A["ephemeral_public_key"])
    assert sealer.aead_id == A["aead_id"] == AEAD_AES_128_GCM
    assert decode_response(h(A["response"])) == BhttpResponse(200)
    enc_response = sealer.seal(h(A["response"]), response_nonce=h(A["response_nonce"]))
    assert enc_response == h(A["encapsulated_response"])
    assert h(A["salt"]) == sealer.enc + h(A["response_nonce"])


def test_rfc9458_request_from_the_client_side() -> None:
    config = decode_key_configs(_rfc_gateway().keys_body)[0]
    enc_request, opener = encapsulate_request(
        config, h(A["request"]), AEAD_AES_128_GCM, ephemeral_private=h(A["ephemeral_secret_key"])
    )
    assert enc_request == h(A["encapsulated_request"])
    assert opener.open(h(A["encapsulated_response"])) == h(A["response"])


def test_rfc9458_intermediate_values() -> None:
    """The exported secret, PRK, AEAD key and nonce of Appendix A, from the gateway's own context."""
    _, sealer = _rfc_gateway().decapsulate(h(A["encapsulated_request"]))
    context = sealer._context
    assert context.export(b"message/bhttp response", 16) == h(A["exported_secret"])
    prk = ref.hkdf_extract(h(A["salt"]), h(A["exported_secret"]))
    assert prk == h(A["prk"])
    assert ref.hkdf_expand(prk, b"key", 16) == h(A["aead_key"])
    assert ref.hkdf_expand(prk, b"nonce", 12) == h(A["aead_nonce"])


# --- the reference client against the RFCs --------------------------------------------------------------


@pytest.mark.parametrize("vector", HPKE, ids=[v["section"] for v in HPKE])
def test_reference_hpke_against_rfc9180(vector: dict) -> None:
    assert ref.derive_key_pair(h(vector["ikmE"])) == (h(vector["skEm"]), h(vector["pkEm"]))
    assert ref.derive_key_pair(h(vector["ikmR"])) == (h(vector["skRm"]), h(vector["pkRm"]))
    aead_id = vector["aead_id"]
    enc, context = ref.setup_base_s(h(vector["pkRm"]), h(vector["info"]), aead_id, h(vector["skEm"]))
    assert enc == h(vector["enc"])
    assert context.shared_secret == h(vector["shared_secret"])
    assert context.key == h(vector["key"])
    assert context.base_nonce == h(vector["base_nonce"])
    assert context.exporter_secret == h(vector["exporter_secret"])
    recipient = ref.setup_base_r(enc, h(vector["skRm"]), h(vector["info"]), aead_id)
    assert (recipient.key, recipient.base_nonce) == (context.key, context.base_nonce)
    for case in vector["encryptions"]:
        context.seq = recipient.seq = case["sequence_number"]
        assert context.nonce(context.seq) == h(case["nonce"])
        assert context.seal(h(case["aad"]), h(case["pt"])) == h(case["ct"])
        assert recipient.open(h(case["aad"]), h(case["ct"])) == h(case["pt"])
    for case in vector["exports"]:
        assert context.export(h(case["exporter_context"]), case["L"]) == h(case["exported_value"])


def test_reference_client_against_rfc9458() -> None:
    assert ref.public_key_of(h(A["ephemeral_secret_key"])) == h(A["ephemeral_public_key"])
    assert ref.split_keys_body(_rfc_gateway().keys_body) == [h(A["key_config"])]
    enc_request, open_response = ref.encapsulate(
        h(A["key_config"]), h(A["request"]), 1, ephemeral_private=h(A["ephemeral_secret_key"])
    )
    assert enc_request == h(A["encapsulated_request"])
    assert h(A["info"]) == b"message/bhttp request\x00" + enc_request[:7]
    assert open_response(h(A["encapsulated_response"])) == h(A["response"])


def test_reference_client_refuses_tampered_response() -> None:
    _, open_response = ref.encapsulate(
        h(A["key_config"]), h(A["request"]), 1, ephemeral_private=h(A["ephemeral_secret_key"])
    )
    tampered = bytearray(h(A["encapsulated_response"]))
    tampered[-1] ^= 1
    with pytest.raises(InvalidTag):
        open_response(bytes(tampered))


# --- interoperation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("aead_id", AEADS)
def test_reference_client_round_trips_through_the_gateway(aead_id: int) -> None:
    gateway = Gateway(SealingKey.generate(), key_id=0x5A)
    (config_bytes,) = ref.split_keys_body(gateway.keys_body)
    inner = b"\x00\x04POST\x05https\x00\x06/infer" + b"\x00\x05hello\x00"
    enc_request, open_response = ref.encapsulate(config_bytes, inner, aead_id)
    request, sealer = gateway.decapsulate(enc_request)
    assert request == inner
    assert decode_request(request).content == b"hello"
    assert sealer.enc == enc_request[7:39]
    response = encode_response(BhttpResponse(200, ((b"content-type", b"application/json"),), b'{"ok":1}'))
    enc_response = sealer.seal(response)
    assert len(enc_response) == max(ref.AEADS[aead_id]) + len(response) + 16
    assert open_response(enc_response) == response


@pytest.mark.parametrize("aead_id", AEADS)
def test_protocol_client_round_trips_through_the_gateway(aead_id: int) -> None:
    gateway = Gateway(SealingKey.generate(), key_id=7)
    config = decode_key_configs(gateway.keys_body)[0]
    enc_request, opener = encapsulate_request(config, b"inner request", aead_id)
    assert enc_request[:7] == struct.pack(">BHHH", 7, 0x20, 1, aead_id)
    request, sealer = gateway.decapsulate(enc_request)
    assert request == b"inner request"
    assert opener.open(sealer.seal(b"inner response")) == b"inner response"


@pytest.mark.parametrize("aead_id", AEADS)
def test_gateway_response_opens_with_the_reference_and_vice_versa(aead_id: int) -> None:
    """The gateway's secret key drives the reference recipient: the protocol client's request opens there."""
    raw = bytes(range(32))
    gateway = Gateway(SealingKey.from_private_bytes(raw), key_id=3)
    enc_request, _ = encapsulate_request(gateway.config, b"abc", aead_id)
    context = ref.setup_base_r(
        enc_request[7:39], raw, b"message/bhttp request\x00" + enc_request[:7], aead_id
    )
    assert context.open(b"", enc_request[39:]) == b"abc"


def test_every_request_is_fresh() -> None:
    gateway = Gateway(SealingKey.generate(), key_id=1)
    first, _ = encapsulate_request(gateway.config, b"same")
    second, _ = encapsulate_request(gateway.config, b"same")
    assert first[7:39] != second[7:39] and first[39:] != second[39:]
    _, sealer_a = gateway.decapsulate(first)
    _, sealer_b = gateway.decapsulate(first)  # a replay decapsulates too: the caller's cache keys on .enc
    assert sealer_a.enc == sealer_b.enc
    assert sealer_a.seal(b"r")[:16] != sealer_b.seal(b"r")[:16]


# --- refusals -------------------------------------------------------------------------------------------


def _code(call: object) -> str:
    assert callable(call)
    with pytest.raises(OhttpError) as info:
        call()
    assert isinstance(info.value, ProtocolError)
    return info.value.code


@pytest.mark.parametrize("aead_id", AEADS)
def test_tampered_request_fails_to_decrypt(aead_id: int) -> None:
    gateway = Gateway(SealingKey.generate(), key_id=1)
    enc_request, _ = encapsulate_request(gateway.config, b"some request bytes", aead_id)
    for position in (7, 20, 38, 39, 45, len(enc_request) - 1):
        tampered = bytearray(enc_request)
        tampered[position] ^= 0x01
        assert _code(lambda t=bytes(tampered): gateway.decapsulate(t)) == "decryption_failed"
    # cutting ciphertext bytes leaves a tag that no longer matches
    assert _code(lambda: gateway.decapsulate(enc_request[:-1])) == "decryption_failed"
    # the header is authenticated through info: the other AEAD with the same bytes fails
    other = AEAD_CHACHA20_POLY1305 if aead_id == AEAD_AES_128_GCM else AEAD_AES_128_GCM
    swapped = enc_request[:5] + struct.pack(">H", other) + enc_request[7:]
    assert _code(lambda: gateway.decapsulate(swapped)) == "decryption_failed"


def test_request_for_another_key_fails_to_decrypt() -> None:
    gateway = Gateway(SealingKey.generate(), key_id=1)
    impostor = Gateway(SealingKey.generate(), key_id=1)
    enc_request, _ = encapsulate_request(impostor.config, b"x")
    assert _code(lambda: gateway.decapsulate(enc_request)) == "decryption_failed"


@pytest.mark.parametrize("aead_id", AEADS)
def test_tampered_or_truncated_response(aead_id: int) -> None:
    gateway = Gateway(SealingKey.generate(), key_id=1)
    enc_request, opener = encapsulate_request(gateway.config, b"q", aead_id)
    _, sealer = gateway.decapsulate(enc_request)
    enc_response = sealer.seal(b"the answer")
    for position in (0, 5, len(enc_response) - 1):
        tampered = bytearray(enc_response)
        tampered[position] ^= 0x80
        assert _code(lambda t=bytes(tampered): opener.open(t)) == "decryption_failed"
    nonce_size = max(ref.AEADS[aead_id])
    assert _code(lambda: opener.open(enc_response[: nonce_size + 15])) == "malformed"
    assert _code(lambda: opener.open(b"")) == "malformed"
    assert _code(lambda: opener.open(enc_response[:-1])) == "decryption_failed"
    # a response sealed for a different request does not open
    other_request, _ = encapsulate_request(gateway.config, b"q", aead_id)
    _, other_sealer = gateway.decapsulate(other_request)
    assert _code(lambda: opener.open(other_sealer.seal(b"the answer"))) == "decryption_failed"


def test_unknown_key_id_and_kem() -> None:
    gateway = Gateway(SealingKey.generate(), key_id=9)
    enc_request, _ = encapsulate_request(gateway.config, b"x")
    assert _code(lambda: gateway.decapsulate(b"\x08" + enc_request[1:])) == "unknown_key"
    assert (
        _code(lambda: gateway.decapsulate(enc_request[:1] + b"\x00\x10" + enc_request[3:])) == "unknown_key"
    )


def test_unsupported_suites() -> None:
    gateway = Gateway(SealingKey.generate(), key_id=9)
    enc_request, _ = encapsulate_request(gateway.config, b"x")
    for kdf_id, aead_id in ((2, 1), (1, 2), (1, 0xFFFF), (3, 3)):
        forged = enc_request[:3] + struct.pack(">HH", kdf_id, aead_id) + enc_request[7:]
        assert _code(lambda f=forged: gateway.decapsulate(f)) == "unsupported_suite"
    aes_only = Gateway(SealingKey.generate(), key_id=1, suites=((KDF_HKDF_SHA256, AEAD_AES_128_GCM),))
    assert aes_only.config.suites == ((1, 1),)
    chacha_request, _ = encapsulate_request(
        KeyConfig(1, 0x20, aes_only.config.public_key, ((1, 1), (1, 3))), b"x", AEAD_CHACHA20_POLY1305
    )
    assert _code(lambda: aes_only.decapsulate(chacha_request)) == "unsupported_suite"
    # the client side refuses what the configuration does not offer, or what it cannot do
    assert (
        _code(lambda: encapsulate_request(aes_only.config, b"x", AEAD_CHACHA20_POLY1305))
        == "unsupported_suite"
    )
    p256 = KeyConfig(1, 0x0010, b"\x04" + bytes(64), ((1, 1),))
    assert _code(lambda: encapsulate_request(p256, b"x")) == "unsupported_suite"
    assert _code(lambda: encapsulate_request(gateway.config, b"x", 0x0002)) == "unsupported_suite"
    assert _code(lambda: encapsulate_request(gateway.config, b"x", kdf_id=2)) == "unsupported_suite"
    with pytest.raises(ProtocolError):
        Gateway(SealingKey.generate(), key_id=1, suites=((2, 1),))
    with pytest.raises(ProtocolError):
        Gateway(SealingKey.generate(), key_id=1, suites=((1, 2),))


def test_truncated_requests_are_malformed() -> None:
    gateway = Gateway(SealingKey.generate(), key_id=1)
    enc_request, _ = encapsulate_request(gateway.config, b"")
    assert len(enc_request) == 7 + 32 + 16
    for cut in (0, 1, 6):
        assert _code(lambda c=cut: gateway.decapsulate(enc_request[:c])) == "malformed"
    for cut in (7, 20, 39, 54):
        assert _code(lambda c=cut: gateway.decapsulate(enc_request[:c])) == "malformed"
    assert gateway.decapsulate(enc_request)[0] == b""


def test_response_sealer_is_single_use_and_checks_its_nonce() -> None:
    gateway = Gateway(SealingKey.generate(), key_id=1)
    enc_request, _ = encapsulate_request(gateway.config, b"x")
    _, sealer = gateway.decapsulate(enc_request)
    assert _code(lambda: sealer.seal(b"r", response_nonce=bytes(15))) == "malformed"
    sealer.seal(b"r")
    assert _code(lambda: sealer.seal(b"r")) == "malformed"


def test_gateway_does_not_leak_its_key() -> None:
    raw = bytes(range(32))
    gateway = Gateway(SealingKey.from_private_bytes(raw), key_id=1)
    assert raw.hex() not in repr(gateway)
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(gateway)


# --- key configurations ---------------------------------------------------------------------------------


def test_key_configs_keep_unknown_kems_and_flag_them() -> None:
    x25519 = _rfc_gateway().config
    p256 = KeyConfig(2, 0x0010, b"\x04" + bytes(range(64)), ((1, 1),))
    unknown = KeyConfig(3, 0x7777, b"\xaa" * 1000, ((1, 1), (1, 3)))
    body = encode_key_configs([p256, x25519, unknown])
    decoded = decode_key_configs(body)
    assert decoded == [p256, x25519, unknown]
    assert [c.supports(1, 1) for c in decoded] == [False, True, False]
    assert not x25519.supports(1, 2)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00",
        b"\x00\x00",  # zero-length configuration
        b"\x00\x05\x01\x00\x20\x00\x00",
        struct.pack(">H", 40) + bytes(39),  # claims more than there is
        encode_key_configs([KeyConfig(1, 0x20, bytes(32), ((1, 1),))]) + b"\x00",  # trailing byte
        struct.pack(">H", 39) + b"\x01\x00\x20" + bytes(32) + b"\x00\x00" + b"\x00\x01",  # no suites
        struct.pack(">H", 41) + b"\x01\x00\x20" + bytes(32) + b"\x00\x06" + bytes(4),  # wrong suites length
        struct.pack(">H", 43) + b"\x01\x00\x20" + bytes(32) + b"\x00\x06" + bytes(6),  # not a multiple of 4
    ],
)
def test_malformed_key_config_bodies(body: bytes) -> None:
    assert _code(lambda: decode_key_configs(body)) == "malformed"


def test_key_config_encode_refuses_bad_fields() -> None:
    for config in (
        KeyConfig(256, 0x20, bytes(32), ((1, 1),)),
        KeyConfig(1, 0x20, bytes(31), ((1, 1),)),
        KeyConfig(1, 0x20, bytes(32), ()),
        KeyConfig(1, 0x20, bytes(32), ((1, 0x10000),)),
        KeyConfig(1, 0x10000, bytes(32), ((1, 1),)),
    ):
        assert _code(config.encode) == "malformed"
    assert _code(lambda: encode_key_configs([])) == "malformed"


key_configs = st.builds(
    KeyConfig,
    key_id=st.integers(0, 255),
    kem_id=st.sampled_from([0x0010, 0x0011, 0x0012, 0x0020, 0x0021]),
    public_key=st.just(b""),
    suites=st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), min_size=1, max_size=8).map(
        tuple
    ),
).flatmap(
    lambda c: st.binary(
        min_size={0x10: 65, 0x11: 97, 0x12: 133, 0x20: 32, 0x21: 56}[c.kem_id],
        max_size={0x10: 65, 0x11: 97, 0x12: 133, 0x20: 32, 0x21: 56}[c.kem_id],
    ).map(lambda pk: KeyConfig(c.key_id, c.kem_id, pk, c.suites))
)


@given(st.lists(key_configs, min_size=1, max_size=4))
def test_key_configs_round_trip(configs: list[KeyConfig]) -> None:
    body = encode_key_configs(configs)
    assert decode_key_configs(body) == configs
    for config in configs:
        assert decode_key_config(config.encode()) == config


@given(st.binary(max_size=200))
def test_random_key_config_bodies_raise_only_ohttp_error(body: bytes) -> None:
    try:
        decode_key_configs(body)
    except OhttpError as exc:
        assert exc.code == "malformed"


@given(st.binary(max_size=120))
def test_random_encapsulated_requests_raise_only_ohttp_error(data: bytes) -> None:
    gateway = _rfc_gateway()
    for candidate in (data, h(A["encapsulated_request"])[:7] + data):
        try:
            gateway.decapsulate(candidate)
        except OhttpError as exc:
            assert exc.code in {"unknown_key", "unsupported_suite", "decryption_failed", "malformed"}
