"""The contracts on a real anvil: shared vectors, receipts from the real enclave, every custom error."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from web3.logs import DISCARD

from attestation import Policy, TrustedRoot
from protocol import merkle
from protocol.hashing import keccak256
from protocol.onchain import fulfilment_id, output_layout
from protocol.receipts import SignedReceipt
from protocol.tensors import BY_V2, DTYPES, DType, decode_tensors, encode_tensors
from relay.chain import ChainError, custom_error, deploy
from relay.registration import attest_enclave, registration_digest, sign_registration, submit_registration
from verinfer.processes import ANVIL_KEYS, bearer

from .chain_fixtures import Chain
from .conftest import BATCH_TOKEN

REPO = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).parent / "vectors"
IRIS = {"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}


def receipt_tuple(signed: SignedReceipt) -> tuple:
    r = signed.receipt
    return (r.request_id, r.model_hash, r.input_hash, r.output_hash, r.timestamp_ms)


def infer(server: str, request: dict = IRIS) -> tuple[dict, SignedReceipt]:
    body = httpx.post(f"{server}/infer", json=request).json()
    return body, SignedReceipt.from_json(body["receipt"])


def reverts_with(error: str, call, sender_=None, value: int = 0) -> None:
    """The call (a transaction when `sender_` is given) reverts with the custom error `error`."""
    with pytest.raises(Exception) as info:
        if sender_ is None:
            call.call()
        else:
            sender_.transact(call, value=value)
    name = info.value.error if isinstance(info.value, ChainError) else custom_error(info.value)
    assert name == error, info.value


# --- artifacts and shared vectors -------------------------------------------------------------------------


def test_committed_artifacts_are_fresh() -> None:
    result = subprocess.run(
        ["node", "contracts/build.mjs", "--check"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize(
    "vector", json.loads((VECTORS / "tensors.json").read_text()), ids=lambda v: v["label"]
)
def test_solidity_decodes_the_tensor_vectors(chain: Chain, vector: dict) -> None:
    encoding = bytes.fromhex(vector["encoding"][2:])
    names, dtypes, shapes, data = chain.harness.functions.decode(encoding).call()
    expected = decode_tensors(encoding)
    assert names == [n for n, _ in expected]
    assert shapes == [list(a.shape) for _, a in expected]
    for raw, (_, array), dtype in zip(data, expected, dtypes, strict=True):
        little = (
            np.ascontiguousarray(array).view(f"<u{array.dtype.itemsize}")
            if array.dtype != np.bool_
            else array
        )
        assert raw == [int(x) for x in np.asarray(little).ravel()]
        assert dtype in (1, 2, 6, 7, 9, 11)


@pytest.mark.parametrize("bad", ["", "02", "0101", "010101", "01010161070100", "0101016101010000000100"])
def test_solidity_rejects_bad_encodings(chain: Chain, bad: str) -> None:
    for function in (chain.harness.functions.decode, chain.harness.functions.layoutHash):
        with pytest.raises(Exception) as info:
            function(bytes.fromhex(bad)).call()
        assert custom_error(info.value, "CodecHarness") == "InvalidTensorEncoding"


def test_layout_hash_survives_hostile_dimensions(chain: Chain) -> None:
    """Dimensions whose product overflows 256 bits are an encoding error, not an arithmetic panic."""
    dims = (0xFFFFFFFF).to_bytes(4, "big") * 9
    bad = bytes.fromhex("0101016101") + bytes((9,)) + dims
    with pytest.raises(Exception) as info:
        chain.harness.functions.layoutHash(bad).call()
    assert custom_error(info.value, "CodecHarness") == "InvalidTensorEncoding"
    empty = bytes.fromhex("0101016101") + bytes((3,)) + (0xFFFFFFFF).to_bytes(4, "big") * 2 + bytes(4)
    assert chain.harness.functions.layoutHash(empty).call() == output_layout([("a", "float32")])


def test_solidity_argmax_float32(chain: Chain) -> None:
    probabilities = np.array([[0.1, -3.0, 0.7, 0.2]], dtype=np.float32)
    encoding = encode_tensors([("p", probabilities)])
    assert chain.harness.functions.argmaxFloat32(encoding, "p").call() == 2


def test_solidity_receipt_digest_matches_the_vectors(chain: Chain) -> None:
    vectors = json.loads((VECTORS / "receipts.json").read_text())
    for case in vectors["receipts"]:
        receipt = tuple(
            bytes.fromhex(case[k][2:]) for k in ("requestId", "modelHash", "inputHash", "outputHash")
        )
        digest = chain.harness.functions.receiptDigest((*receipt, case["timestampMs"])).call()
        assert "0x" + digest.hex() == case["digest"]
        signer = chain.harness.functions.recover(digest, bytes.fromhex(case["signature"][2:])).call()
        assert signer == vectors["signer"]


def test_solidity_merkle_matches_python(chain: Chain) -> None:
    leaves = [os.urandom(32) for _ in range(7)]
    root = merkle.root(leaves)
    for index in range(7):
        assert chain.harness.functions.verifyProof(merkle.proof(leaves, index), root, leaves[index]).call()
    assert not chain.harness.functions.verifyProof(merkle.proof(leaves, 0), root, leaves[1]).call()


ONCHAIN = json.loads((VECTORS / "onchain.json").read_text())


@pytest.mark.parametrize("vector", ONCHAIN["layouts"], ids=lambda v: v["label"])
def test_output_layout_vectors_on_both_sides(chain: Chain, vector: dict) -> None:
    """protocol.onchain.output_layout and TensorCodec.layoutHash (from an encoding) agree with the vector."""
    outputs = [(o["name"], o["dtype"]) for o in vector["outputs"]]
    assert "0x" + output_layout(outputs).hex() == vector["layout"]
    encoding = bytes.fromhex(vector["encoding"][2:])
    assert [(n, str(a.dtype)) for n, a in decode_tensors(encoding)] == outputs
    assert "0x" + chain.harness.functions.layoutHash(encoding).call().hex() == vector["layout"]


def test_output_layout_vectors_match_the_approved_models(chain: Chain) -> None:
    by_label = {v["label"]: bytes.fromhex(v["layout"][2:]) for v in ONCHAIN["layouts"]}
    assert by_label["iris-ols"] == chain.layouts[chain.models["iris-ols"]]
    assert by_label["iris-mlp output"] == chain.layouts[chain.models["iris-mlp"]]
    assert by_label["mnist-lenet"] == chain.layouts[chain.models["mnist-lenet"]]
    assert by_label["iris-mlp outputs reordered"] != by_label["iris-mlp output"]


@pytest.mark.parametrize("vector", ONCHAIN["fulfilmentIds"], ids=lambda v: v["label"])
def test_fulfilment_id_vectors_on_both_sides(chain: Chain, vector: dict) -> None:
    request_id = bytes.fromhex(vector["requestId"][2:])
    assert "0x" + fulfilment_id(request_id, vector["fulfiller"]).hex() == vector["fulfilmentId"]
    ours = chain.contract.functions.fulfilmentId(request_id, vector["fulfiller"]).call()
    assert "0x" + ours.hex() == vector["fulfilmentId"]


# --- registration ------------------------------------------------------------------------------------------


def test_registration_digest_matches_the_contract(chain: Chain) -> None:
    key, image, ts, user, sealing = os.urandom(64), os.urandom(32), 1234, os.urandom(32), os.urandom(32)
    ours = registration_digest(
        chain_id=chain.w3.eth.chain_id,
        contract=chain.contract.address,
        public_key=key,
        image=image,
        timestamp_ms=ts,
        user_data_hash=user,
        encryption_key=sealing,
    )
    assert chain.contract.functions.registrationDigest(key, image, ts, user, sealing).call() == ours


def test_registered_enclave(chain: Chain, server: str) -> None:
    record = chain.contract.functions.enclaves(chain.enclave).call()
    image, expires_at, epoch, user_data_hash, encryption_key = record
    assert image == chain.image and expires_at > 0 and epoch == 0 and len(user_data_hash) == 32
    # The encryption key on chain is the one the attestation binds after the manifest digest.
    answer = httpx.get(f"{server}/attestation").json()
    user_data = bytes.fromhex(answer["summary"]["user_data"])
    assert user_data_hash == keccak256(user_data) and encryption_key == user_data[32:64]
    assert "0x" + encryption_key.hex() == answer["encryptionKey"]
    assert chain.contract.functions.encryptionKeyOf(chain.enclave).call() == encryption_key


def test_registration_by_an_untrusted_verifier(snapshot: Chain, server: str, server_pki: Path) -> None:
    attested = attest_enclave(server, Policy(root=TrustedRoot.from_file(server_pki / "root.pem")))
    stranger = Account.from_key(ANVIL_KEYS[5])
    registration = sign_registration(
        stranger, attested, chain_id=snapshot.w3.eth.chain_id, contract=snapshot.contract.address
    )
    with pytest.raises(ChainError) as info:
        submit_registration(snapshot.admin, snapshot.contract, registration)
    assert info.value.error == "UntrustedVerifier"


def test_stale_attestation(snapshot: Chain, server: str, server_pki: Path) -> None:
    attested = attest_enclave(server, Policy(root=TrustedRoot.from_file(server_pki / "root.pem")))
    registration = sign_registration(
        snapshot.verifier_key, attested, chain_id=snapshot.w3.eth.chain_id, contract=snapshot.contract.address
    )
    snapshot.rpc("evm_increaseTime", 11 * 60)  # past the 10-minute maximum age
    snapshot.rpc("evm_mine")
    with pytest.raises(ChainError) as info:
        submit_registration(snapshot.admin, snapshot.contract, registration)
    assert info.value.error == "StaleAttestation"


def test_registration_of_an_unapproved_image(snapshot: Chain, server: str, server_pki: Path) -> None:
    snapshot.admin.transact(snapshot.contract.functions.revokeImage(snapshot.image))
    attested = attest_enclave(server, Policy(root=TrustedRoot.from_file(server_pki / "root.pem")))
    registration = sign_registration(
        snapshot.verifier_key, attested, chain_id=snapshot.w3.eth.chain_id, contract=snapshot.contract.address
    )
    with pytest.raises(ChainError) as info:
        submit_registration(snapshot.admin, snapshot.contract, registration)
    assert info.value.error == "ImageNotApproved"


def test_registration_with_a_short_key(snapshot: Chain) -> None:
    reverts_with(
        "InvalidPublicKey",
        snapshot.contract.functions.registerEnclave(
            b"\x04" * 65, snapshot.image, 1, bytes(32), bytes(32), bytes(65)
        ),
        snapshot.admin,
    )


def test_admin_only(snapshot: Chain) -> None:
    reverts_with(
        "OwnableUnauthorizedAccount", snapshot.contract.functions.approveImage(bytes(32)), snapshot.user
    )


# --- receipts ----------------------------------------------------------------------------------------------


def test_verify_receipt_from_the_real_enclave(chain: Chain, server: str) -> None:
    _, signed = infer(server)
    assert (
        chain.contract.functions.verifyReceipt(receipt_tuple(signed), signed.signature).call()
        == chain.enclave
    )
    assert chain.contract.functions.receiptDigest(receipt_tuple(signed)).call() == signed.receipt.digest()


def test_receipt_signed_by_an_unregistered_key(chain: Chain, server: str) -> None:
    _, signed = infer(server)
    other = Account.create()
    signature = other.unsafe_sign_hash(signed.receipt.digest())
    raw = signature.r.to_bytes(32, "big") + signature.s.to_bytes(32, "big") + bytes((signature.v,))
    reverts_with("UnknownEnclave", chain.contract.functions.verifyReceipt(receipt_tuple(signed), raw))


def test_receipt_of_a_revoked_image(snapshot: Chain, server: str) -> None:
    _, signed = infer(server)
    snapshot.admin.transact(snapshot.contract.functions.revokeImage(snapshot.image))
    reverts_with(
        "EnclaveImageRevoked",
        snapshot.contract.functions.verifyReceipt(receipt_tuple(signed), signed.signature),
    )


def test_receipt_for_an_unapproved_model(snapshot: Chain, server: str) -> None:
    _, signed = infer(server)
    snapshot.admin.transact(snapshot.contract.functions.revokeModel(signed.receipt.model_hash))
    reverts_with(
        "ModelNotApproved", snapshot.contract.functions.verifyReceipt(receipt_tuple(signed), signed.signature)
    )


def test_expired_enclave(snapshot: Chain, server: str) -> None:
    _, signed = infer(server)
    snapshot.rpc("evm_increaseTime", 25 * 3600)
    snapshot.rpc("evm_mine")
    reverts_with(
        "EnclaveExpired", snapshot.contract.functions.verifyReceipt(receipt_tuple(signed), signed.signature)
    )


def test_malleable_or_garbage_signature(chain: Chain, server: str) -> None:
    _, signed = infer(server)
    reverts_with(
        "InvalidSignature", chain.contract.functions.verifyReceipt(receipt_tuple(signed), b"\x01" * 65)
    )
    reverts_with(
        "InvalidSignature", chain.contract.functions.verifyReceipt(receipt_tuple(signed), b"\x01" * 64)
    )


def test_anchor_single_receipt(snapshot: Chain, server: str) -> None:
    _, signed = infer(server)
    receipt = snapshot.relay.transact(
        snapshot.contract.functions.anchorReceipt(receipt_tuple(signed), signed.signature)
    )
    event = snapshot.contract.events.ReceiptAnchored().process_receipt(receipt, errors=DISCARD)[0]["args"]
    assert event["digest"] == signed.receipt.digest() and event["outputHash"] == signed.receipt.output_hash
    assert snapshot.contract.functions.anchoredReceipts(signed.receipt.digest()).call() == snapshot.enclave
    reverts_with(
        "AlreadyAnchored",
        snapshot.contract.functions.anchorReceipt(receipt_tuple(signed), signed.signature),
        snapshot.relay,
    )


def test_anchor_batch_and_prove_inclusion(snapshot: Chain, server: str) -> None:
    for _ in range(6):
        infer(server)
    batch = httpx.post(
        f"{server}/receipts/batch", headers=bearer(BATCH_TOKEN), json={"from": 0, "max": 4096}
    ).json()
    root = bytes.fromhex(batch["root"][2:])
    snapshot.relay.transact(
        snapshot.contract.functions.anchorBatch(root, batch["count"], bytes.fromhex(batch["signature"][2:]))
    )
    receipts = [SignedReceipt.from_json(r) for r in batch["receipts"]]
    digests = [r.receipt.digest() for r in receipts]
    for index in (0, len(receipts) // 2, len(receipts) - 1):
        proof = merkle.proof(digests, index)
        assert (
            snapshot.contract.functions.proveReceipt(receipt_tuple(receipts[index]), root, proof).call()
            == snapshot.enclave
        )
    forged = receipts[0].receipt
    tampered = (
        forged.request_id,
        forged.model_hash,
        forged.input_hash,
        keccak256(b"other"),
        forged.timestamp_ms,
    )
    reverts_with(
        "InvalidProof", snapshot.contract.functions.proveReceipt(tampered, root, merkle.proof(digests, 0))
    )
    reverts_with(
        "UnknownBatch", snapshot.contract.functions.proveReceipt(receipt_tuple(receipts[0]), bytes(32), [])
    )


# --- requests ----------------------------------------------------------------------------------------------


def lenet_request_input() -> tuple[bytes, int]:
    data = np.load(REPO / "models" / "data" / "mnist-eval.npz")
    image = (data["x"][:1, None] / 255.0).astype(np.float32)
    return encode_tensors([("image", image)]), int(data["y"][0])


def fulfil_through_enclave(
    chain: Chain, server: str, request_id: bytes, model: str, encoding: bytes, fulfiller: str | None = None
) -> tuple:
    """The output encoding and the enclave's receipt over it, for `fulfiller` (the relay by default) to
    fulfil on-chain request `request_id`: the receipt carries fulfilment_id(request_id, fulfiller)."""
    tensors = decode_tensors(encoding)
    receipt_id = fulfilment_id(request_id, fulfiller or chain.relay.account.address)
    body = httpx.post(
        f"{server}/infer",
        json={
            "model": model,
            "request_id": "0x" + receipt_id.hex(),
            "inputs": [{"name": n, "shape": list(a.shape), "data": a.ravel().tolist()} for n, a in tensors],
        },
    ).json()
    signed = SignedReceipt.from_json(body["receipt"])
    outputs = [
        (o["name"], np.asarray(o["data"], dtype=BY_V2[o["datatype"]].numpy).reshape(o["shape"]))
        for o in body["outputs"]
    ]
    output = encode_tensors(outputs)
    assert keccak256(output) == signed.receipt.output_hash
    return output, signed


def test_consumer_request_fulfil_callback(snapshot: Chain, server: str) -> None:
    lenet = snapshot.models["mnist-lenet"]
    consumer = deploy(snapshot.admin, "ClassifierConsumer", snapshot.contract.address, lenet, "digit")
    encoding, digit = lenet_request_input()
    fee = 10**15
    receipt = snapshot.user.transact(consumer.functions.classify(encoding, 300_000, 3600), value=fee)
    requested = snapshot.contract.events.InferenceRequested().process_receipt(receipt, errors=DISCARD)[0][
        "args"
    ]
    assert requested["input"] == encoding and requested["inputHash"] == keccak256(encoding)
    request_id = requested["requestId"]
    output, signed = fulfil_through_enclave(snapshot, server, request_id, "mnist-lenet", encoding)
    balance = snapshot.w3.eth.get_balance(snapshot.relay.account.address)
    fulfil = snapshot.contract.functions.fulfill(
        request_id, output, signed.receipt.timestamp_ms, snapshot.enclave, signed.signature
    )
    tx = snapshot.relay.transact(fulfil)
    event = snapshot.contract.events.InferenceFulfilled().process_receipt(tx, errors=DISCARD)[0]["args"]
    assert event["callbackSucceeded"] and event["enclave"] == snapshot.enclave
    assert consumer.functions.answered(request_id).call()
    assert consumer.functions.labels(request_id).call() == digit
    gas_cost = tx["gasUsed"] * tx["effectiveGasPrice"]
    assert snapshot.w3.eth.get_balance(snapshot.relay.account.address) == balance + fee - gas_cost
    # The same request id again: a replay.
    reverts_with("RequestNotPending", fulfil, snapshot.relay)


def test_wrong_output_for_the_signature(snapshot: Chain, server: str) -> None:
    lenet = snapshot.models["mnist-lenet"]
    encoding, _ = lenet_request_input()
    receipt = snapshot.user.transact(snapshot.contract.functions.requestInference(lenet, encoding, 0, 3600))
    request_id = snapshot.contract.events.InferenceRequested().process_receipt(receipt, errors=DISCARD)[0][
        "args"
    ]["requestId"]
    output, signed = fulfil_through_enclave(snapshot, server, request_id, "mnist-lenet", encoding)
    forged = bytearray(output)
    forged[-1] ^= 1
    reverts_with(
        "ReceiptSignerMismatch",
        snapshot.contract.functions.fulfill(
            request_id, bytes(forged), signed.receipt.timestamp_ms, snapshot.enclave, signed.signature
        ),
        snapshot.relay,
    )


def test_reverting_callback_does_not_revert_fulfilment(snapshot: Chain, server: str) -> None:
    mlp = snapshot.models["iris-mlp"]
    encoding = encode_tensors([("features", np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))])
    for burn in (False, True):
        consumer = deploy(snapshot.admin, "RevertingConsumer", burn)
        receipt = snapshot.user.transact(
            consumer.functions.ask(snapshot.contract.address, mlp, encoding, 100_000, 3600)
        )
        request_id = snapshot.contract.events.InferenceRequested().process_receipt(receipt, errors=DISCARD)[
            0
        ]["args"]["requestId"]
        output, signed = fulfil_through_enclave(snapshot, server, request_id, "iris-mlp", encoding)
        tx = snapshot.relay.transact(
            snapshot.contract.functions.fulfill(
                request_id, output, signed.receipt.timestamp_ms, snapshot.enclave, signed.signature
            )
        )
        event = snapshot.contract.events.InferenceFulfilled().process_receipt(tx, errors=DISCARD)[0]["args"]
        assert not event["callbackSucceeded"]
        assert snapshot.contract.functions.requests(request_id).call()[3] == 2  # Fulfilled


def test_cancel_after_timeout_refunds(snapshot: Chain) -> None:
    mlp = snapshot.models["iris-mlp"]
    encoding = encode_tensors([("features", np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))])
    receipt = snapshot.user.transact(
        snapshot.contract.functions.requestInference(mlp, encoding, 0, 60), value=10**16
    )
    request_id = snapshot.contract.events.InferenceRequested().process_receipt(receipt, errors=DISCARD)[0][
        "args"
    ]["requestId"]
    cancel = snapshot.contract.functions.cancel(request_id)
    reverts_with("RequestNotExpired", cancel, snapshot.user)
    reverts_with("NotRequester", cancel, snapshot.relay)
    snapshot.rpc("evm_increaseTime", 61)
    snapshot.rpc("evm_mine")
    before = snapshot.w3.eth.get_balance(snapshot.user.account.address)
    tx = snapshot.user.transact(cancel)
    assert (
        snapshot.w3.eth.get_balance(snapshot.user.account.address)
        == before + 10**16 - tx["gasUsed"] * tx["effectiveGasPrice"]
    )
    reverts_with("RequestNotPending", cancel, snapshot.user)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((bytes(32), b"\x01\x00", 0, 3600), "ModelNotApproved"),
        (("iris-mlp", b"\x01\x00", 3_000_000, 3600), "CallbackGasTooHigh"),
        (("iris-mlp", b"\x01\x00", 0, 10), "InvalidTimeout"),
        (("iris-mlp", b"\x00" * (64 * 1024 + 1), 0, 3600), "InputTooLarge"),
    ],
)
def test_request_validation(chain: Chain, args: tuple, error: str) -> None:
    model = chain.models[args[0]] if isinstance(args[0], str) else args[0]
    reverts_with(error, chain.contract.functions.requestInference(model, *args[1:]), chain.user)


def test_unknown_request(chain: Chain) -> None:
    reverts_with(
        "UnknownRequest",
        chain.contract.functions.fulfill(bytes(32), b"", 0, chain.enclave, bytes(65)),
        chain.relay,
    )


TENSORS = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=12),
        st.sampled_from(DTYPES),
        st.lists(st.integers(min_value=0, max_value=3), max_size=3),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=40, deadline=None)
@given(TENSORS)
def test_solidity_layout_hash_matches_python_for_any_encoding(
    chain: Chain, tensors: list[tuple[str, DType, list[int]]]
) -> None:
    """TensorCodec.layoutHash of an encoding is output_layout of its (name, dtype) pairs, whatever the
    shapes (zero-sized included) and dtypes: the rule fulfil uses to refuse partial outputs."""
    arrays = [(name, np.zeros(shape, dtype=dtype.numpy)) for name, dtype, shape in tensors]
    expected = output_layout([(name, dtype) for name, dtype, _ in tensors])
    assert chain.harness.functions.layoutHash(encode_tensors(arrays)).call() == expected
