"""Issue 11: each attack found against the contracts, played by an attacker and refused with its typed error.

Each numbered test (and the epoch, two-step admin and pull-refund tests) plays an attack that succeeded on
the contracts before issue 11; its docstring says what happened there. Tests that change chain state use
`snapshot`, which reverts the chain afterwards.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from eth_account import Account
from eth_typing import Hash32
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError
from web3.logs import DISCARD
from web3.types import TxParams, Wei

from attestation import Policy, TrustedRoot
from enclave.signer import EnclaveKey
from protocol import merkle
from protocol.addresses import checksum_address
from protocol.hashing import keccak256
from protocol.onchain import fulfilment_id, output_layout
from protocol.receipts import Receipt, SignedReceipt
from protocol.tensors import BY_V2, decode_tensors, encode_tensors
from relay.chain import ChainError, TxSender, custom_error, deploy
from relay.registration import (
    NO_ENCRYPTION_KEY,
    Registration,
    attest_enclave,
    registration_digest,
    sign_registration,
    submit_registration,
)
from verinfer.processes import bearer

from .chain_fixtures import Chain, sender
from .conftest import BATCH_TOKEN
from .test_contracts import fulfil_through_enclave, infer, lenet_request_input, receipt_tuple

FEE = 10**16


def refused(error: str, attempt: Callable[[], Any], contract: str = "InferenceVerifier") -> None:
    """`attempt` (a call or a transaction) reverts with the custom error `error` of `contract`'s ABI."""
    with pytest.raises((ChainError, ContractCustomError, ContractLogicError)) as info:
        attempt()
    exc = info.value
    name = exc.error if isinstance(exc, ChainError) else custom_error(exc, contract)
    assert name == error, exc


def revert_args(exc: ContractCustomError) -> list[bytes]:
    """The 32-byte words of a custom error's arguments (after the 4-byte selector)."""
    data = exc.data if isinstance(exc.data, str) else ""
    raw = bytes.fromhex(data.removeprefix("0x"))[4:]
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def request_id_of(chain: Chain, tx: Any) -> bytes:
    events = chain.contract.events.InferenceRequested().process_receipt(tx, errors=DISCARD)
    return bytes(events[0]["args"]["requestId"])


def fulfilled_event(chain: Chain, tx: Any) -> Any:
    return chain.contract.events.InferenceFulfilled().process_receipt(tx, errors=DISCARD)[0]["args"]


def warp(chain: Chain, seconds: int) -> None:
    chain.rpc("evm_increaseTime", seconds)
    chain.rpc("evm_mine")


def attacker(chain: Chain) -> TxSender:
    """Anvil account 4: no role anywhere."""
    return sender(chain.w3, 4)


def server_policy(server_pki: Path) -> Policy:
    return Policy(root=TrustedRoot.from_file(server_pki / "root.pem"))


def send_with_gas(tx_sender: TxSender, call: ContractFunction, gas: int) -> Any:
    """Send `call` with exactly `gas` (TxSender adds a margin; an attacker or a careless relay need not)."""
    tx = call.build_transaction(
        TxParams(
            {
                "from": tx_sender.account.address,
                "gas": gas,
                "nonce": tx_sender.w3.eth.get_transaction_count(tx_sender.account.address, "pending"),
                "gasPrice": Wei(tx_sender.w3.eth.gas_price),
                "chainId": tx_sender.w3.eth.chain_id,
            }
        )
    )
    signed = tx_sender.account.sign_transaction(dict(tx))  # type: ignore[arg-type]
    tx_hash = tx_sender.w3.eth.send_raw_transaction(signed.raw_transaction)
    tx_sender.forget_nonce()
    return tx_sender.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)


def send_ether(tx_sender: TxSender, to: str, value: int) -> None:
    w3 = tx_sender.w3
    tx: dict[str, Any] = {
        "from": tx_sender.account.address,
        "to": to,
        "value": value,
        "gas": 100_000,
        "nonce": w3.eth.get_transaction_count(tx_sender.account.address, "pending"),
        "gasPrice": w3.eth.gas_price,
        "chainId": w3.eth.chain_id,
    }
    tx_hash = w3.eth.send_raw_transaction(tx_sender.account.sign_transaction(tx).raw_transaction)
    tx_sender.forget_nonce()
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 1


@dataclass
class OwnEnclave:
    """An enclave key this test controls, registered through an attestation verifier it also controls."""

    key: EnclaveKey
    address: str
    image: bytes

    def sign(self, receipt: Receipt) -> bytes:
        return self.key.sign_digest(receipt.digest())


def register_own_enclave(chain: Chain, encryption_key: bytes = NO_ENCRYPTION_KEY) -> OwnEnclave:
    """Register a key of ours (for outputs no real model makes): our verifier key, a made-up image id."""
    verifier = Account.create()
    image = os.urandom(32)
    chain.admin.transact(chain.contract.functions.addVerifier(verifier.address))
    chain.admin.transact(chain.contract.functions.approveImage(image))
    key = EnclaveKey()
    timestamp_ms = int(chain.w3.eth.get_block("latest")["timestamp"]) * 1000
    user_data_hash = keccak256(b"own enclave manifest")
    digest = registration_digest(
        chain_id=chain.w3.eth.chain_id,
        contract=chain.contract.address,
        public_key=key.public_key64,
        image=image,
        timestamp_ms=timestamp_ms,
        user_data_hash=user_data_hash,
        encryption_key=encryption_key,
    )
    signed = verifier.unsafe_sign_hash(Hash32(digest))
    signature = signed.r.to_bytes(32, "big") + signed.s.to_bytes(32, "big") + bytes((signed.v,))
    registration = Registration(
        key.public_key64, image, timestamp_ms, user_data_hash, encryption_key, signature
    )
    address = submit_registration(chain.admin, chain.contract, registration)
    assert address == checksum_address(key.address)
    return OwnEnclave(key, address, image)


def fulfil_call(
    chain: Chain, request_id: bytes, output: bytes, signed: SignedReceipt, enclave: str | None = None
) -> ContractFunction:
    return chain.contract.functions.fulfill(
        request_id,
        output,
        signed.receipt.timestamp_ms,
        enclave or checksum_address(signed.enclave),
        signed.signature,
    )


# --- 1. partial output ---------------------------------------------------------------------------------


def v2_subset(
    server: str, model: str, name: str, tensor: np.ndarray, outputs: list[str], request_id: bytes
) -> tuple[bytes, SignedReceipt]:
    """What the enclave's KServe V2 endpoint signs when asked for only some outputs."""
    body = httpx.post(
        f"{server}/v2/models/{model}/infer",
        json={
            "inputs": [
                {
                    "name": name,
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "data": tensor.ravel().tolist(),
                }
            ],
            "outputs": [{"name": o} for o in outputs],
            "parameters": {"request_id": "0x" + request_id.hex()},
        },
    ).json()
    signed = SignedReceipt.from_json(body["parameters"]["receipt"])
    output = encode_tensors(
        [
            (o["name"], np.asarray(o["data"], dtype=BY_V2[o["datatype"]].numpy).reshape(o["shape"]))
            for o in body["outputs"]
        ]
    )
    assert keccak256(output) == signed.receipt.output_hash  # a genuine receipt over the subset
    return output, signed


def test_1_receipt_over_a_subset_of_the_outputs_is_refused(snapshot: Chain, server: str) -> None:
    """Before: the subset fulfil succeeded; the callback failed (no "digit") and the fee was paid."""
    lenet = snapshot.models["mnist-lenet"]
    consumer = deploy(snapshot.admin, "ClassifierConsumer", snapshot.contract.address, lenet, "digit")
    encoding, _ = lenet_request_input()
    request_id = request_id_of(
        snapshot, snapshot.user.transact(consumer.functions.classify(encoding, 300_000, 3600), value=FEE)
    )
    output, signed = v2_subset(
        server,
        "mnist-lenet",
        "image",
        decode_tensors(encoding)[0][1],
        ["logits"],  # without "digit", the tensor the consumer reads
        fulfilment_id(request_id, snapshot.relay.account.address),
    )
    assert signed.receipt.input_hash == keccak256(encoding)
    expected = snapshot.layouts[lenet]
    refused(
        "IncompleteOutput", lambda: snapshot.relay.transact(fulfil_call(snapshot, request_id, output, signed))
    )
    with pytest.raises(ContractCustomError) as info:
        fulfil_call(snapshot, request_id, output, signed).call({"from": snapshot.relay.account.address})
    assert revert_args(info.value)[0] == expected  # IncompleteOutput(expected, actual): the approved layout
    assert snapshot.contract.functions.getRequest(request_id).call()[3] == 1  # still Pending
    # The complete output of the same model and input is accepted.
    complete, honest = fulfil_through_enclave(snapshot, server, request_id, "mnist-lenet", encoding)
    assert fulfilled_event(
        snapshot, snapshot.relay.transact(fulfil_call(snapshot, request_id, complete, honest))
    )["callbackSucceeded"]


def test_output_layout_checks_names_dtypes_and_order(snapshot: Chain, server: str) -> None:
    """The layout check, on the real enclave's iris-mlp output, against reordered and retyped forgeries."""
    mlp = snapshot.models["iris-mlp"]
    encoding = encode_tensors([("features", np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))])
    request_id = request_id_of(
        snapshot, snapshot.user.transact(snapshot.contract.functions.requestInference(mlp, encoding, 0, 3600))
    )
    output, signed = fulfil_through_enclave(snapshot, server, request_id, "iris-mlp", encoding)
    probabilities = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    label = np.array([0], dtype=np.int64)
    forgeries: list[list[tuple[str, np.ndarray]]] = [
        [("label", label), ("probabilities", probabilities)],  # reordered
        [("probabilities", probabilities), ("label", label.astype(np.int32))],  # another dtype
        [("probabilities", probabilities), ("label", label), ("extra", label)],  # one too many
    ]
    for forged in forgeries:
        call = fulfil_call(snapshot, request_id, encode_tensors(forged), signed)
        refused("IncompleteOutput", partial(snapshot.relay.transact, call))
    refused(
        "InvalidTensorEncoding",
        lambda: snapshot.relay.transact(fulfil_call(snapshot, request_id, output + b"\x00", signed)),
    )
    snapshot.relay.transact(fulfil_call(snapshot, request_id, output, signed))


# --- 2. ClassifierConsumer.cancel -------------------------------------------------------------------------


def test_2_only_the_asker_cancels_and_gets_only_its_refund(snapshot: Chain) -> None:
    """Before: a stranger's cancel succeeded and paid it the asker's fee plus the consumer's whole balance."""
    lenet = snapshot.models["mnist-lenet"]
    consumer = deploy(snapshot.admin, "ClassifierConsumer", snapshot.contract.address, lenet, "digit")
    # The consumer holds ether that is not this request's (a donation, someone else's refund in flight...).
    held = 10**18
    send_ether(snapshot.admin, consumer.address, held)
    encoding, _ = lenet_request_input()
    request_id = request_id_of(
        snapshot, snapshot.user.transact(consumer.functions.classify(encoding, 300_000, 60), value=FEE)
    )
    warp(snapshot, 61)
    thief = attacker(snapshot)
    refused(
        "NotAsker",
        lambda: consumer.functions.cancel(request_id).call({"from": thief.account.address}),
        "ClassifierConsumer",
    )
    before = snapshot.w3.eth.get_balance(snapshot.user.account.address)
    tx = snapshot.user.transact(consumer.functions.cancel(request_id))
    gas_cost = tx["gasUsed"] * tx["effectiveGasPrice"]
    assert snapshot.w3.eth.get_balance(snapshot.user.account.address) == before + FEE - gas_cost
    assert snapshot.w3.eth.get_balance(consumer.address) == held  # the rest stays
    refused(
        "NotAsker",
        lambda: consumer.functions.cancel(request_id).call({"from": snapshot.user.account.address}),
        "ClassifierConsumer",
    )


# --- 3. registration replay ------------------------------------------------------------------------------


def test_3_removed_enclave_cannot_be_registered_again(snapshot: Chain, server: str, server_pki: Path) -> None:
    """Before: a stranger resubmitted the registration and the removed key verified receipts again."""
    attested = attest_enclave(server, server_policy(server_pki))
    registration = sign_registration(
        snapshot.verifier_key, attested, chain_id=snapshot.w3.eth.chain_id, contract=snapshot.contract.address
    )
    submit_registration(snapshot.admin, snapshot.contract, registration)  # a refresh: fine
    _, signed = infer(server)
    snapshot.admin.transact(snapshot.contract.functions.removeEnclave(snapshot.enclave))
    # Anyone can resubmit the verifier's signed registration (it is public calldata).
    thief = attacker(snapshot)
    refused("RegistrationReplayed", lambda: submit_registration(thief, snapshot.contract, registration))
    # Nor does a fresh attestation of the same key bring it back: a removed key is banned.
    fresh = sign_registration(
        snapshot.verifier_key,
        attest_enclave(server, server_policy(server_pki)),
        chain_id=snapshot.w3.eth.chain_id,
        contract=snapshot.contract.address,
    )
    refused("EnclaveBanned", lambda: submit_registration(snapshot.admin, snapshot.contract, fresh))
    refused(
        "UnknownEnclave",
        lambda: snapshot.contract.functions.verifyReceipt(receipt_tuple(signed), signed.signature).call(),
    )


def test_registration_is_single_use_without_removal(snapshot: Chain, server: str, server_pki: Path) -> None:
    registration = sign_registration(
        snapshot.verifier_key,
        attest_enclave(server, server_policy(server_pki)),
        chain_id=snapshot.w3.eth.chain_id,
        contract=snapshot.contract.address,
    )
    submit_registration(snapshot.admin, snapshot.contract, registration)
    refused(
        "RegistrationReplayed", lambda: submit_registration(snapshot.admin, snapshot.contract, registration)
    )


# --- 4. front-running ------------------------------------------------------------------------------------


def test_4_copied_fulfil_calldata_from_another_address_is_refused(snapshot: Chain, server: str) -> None:
    """Before: the copy from another address fulfilled the request and that address took the fee."""
    mlp = snapshot.models["iris-mlp"]
    encoding = encode_tensors([("features", np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))])
    request_id = request_id_of(
        snapshot,
        snapshot.user.transact(
            snapshot.contract.functions.requestInference(mlp, encoding, 0, 3600), value=FEE
        ),
    )
    # The honest relay's receipt names it: request_id = fulfilment_id(requestId, relay).
    output, signed = fulfil_through_enclave(snapshot, server, request_id, "iris-mlp", encoding)
    assert signed.receipt.request_id == fulfilment_id(request_id, snapshot.relay.account.address)
    assert snapshot.contract.functions.fulfilmentId(request_id, snapshot.relay.account.address).call() == (
        signed.receipt.request_id
    )
    honest = fulfil_call(snapshot, request_id, output, signed)
    # The front-runner sends the very same calldata from its own address, with a higher gas price.
    thief = attacker(snapshot)
    calldata = honest.build_transaction(TxParams({"from": snapshot.relay.account.address}))["data"]
    with pytest.raises(ContractCustomError) as info:
        snapshot.w3.eth.call(
            TxParams({"from": thief.account.address, "to": snapshot.contract.address, "data": calldata})
        )
    assert custom_error(info.value) == "ReceiptSignerMismatch"
    refused("ReceiptSignerMismatch", lambda: thief.transact(honest))
    before = snapshot.w3.eth.get_balance(snapshot.relay.account.address)
    tx = snapshot.relay.transact(honest)
    assert fulfilled_event(snapshot, tx)["fulfiller"] == snapshot.relay.account.address
    gas_cost = tx["gasUsed"] * tx["effectiveGasPrice"]
    assert snapshot.w3.eth.get_balance(snapshot.relay.account.address) == before + FEE - gas_cost


# --- 5. proveReceipt liveness ----------------------------------------------------------------------------


def anchored_receipt(chain: Chain, server: str) -> ContractFunction:
    """proveReceipt for a fresh receipt of the real enclave, in a batch anchored just now."""
    signed = [infer(server)[1] for _ in range(3)][-1]
    batch = httpx.post(
        f"{server}/receipts/batch", headers=bearer(BATCH_TOKEN), json={"from": 0, "max": 4096}
    ).json()
    root = bytes.fromhex(batch["root"][2:])
    chain.relay.transact(
        chain.contract.functions.anchorBatch(root, batch["count"], bytes.fromhex(batch["signature"][2:]))
    )
    digests = [SignedReceipt.from_json(r).receipt.digest() for r in batch["receipts"]]
    proof = merkle.proof(digests, digests.index(signed.receipt.digest()))
    prove = chain.contract.functions.proveReceipt(receipt_tuple(signed), root, proof)
    assert prove.call() == chain.enclave
    return prove


@pytest.mark.parametrize("change", ["revoke image", "expire", "remove enclave"])
def test_5_prove_receipt_needs_a_live_enclave(snapshot: Chain, server: str, change: str) -> None:
    """Before: proveReceipt still returned the enclave after each of these changes."""
    prove = anchored_receipt(snapshot, server)
    contract = snapshot.contract.functions
    if change == "revoke image":
        snapshot.admin.transact(contract.revokeImage(snapshot.image))
        error = "EnclaveImageRevoked"
    elif change == "expire":
        warp(snapshot, 25 * 3600)
        error = "EnclaveExpired"
    else:
        snapshot.admin.transact(contract.removeEnclave(snapshot.enclave))
        error = "UnknownEnclave"
    refused(error, prove.call)


def test_prove_receipt_still_needs_an_approved_model(snapshot: Chain, server: str) -> None:
    """Kept from before issue 11 (proveReceipt already checked the model): now through _requireValid."""
    prove = anchored_receipt(snapshot, server)
    snapshot.admin.transact(snapshot.contract.functions.revokeModel(prove.args[0][1]))
    refused("ModelNotApproved", prove.call)


# --- 6. argmax over non-finite floats --------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_6_argmax_refuses_nan_and_infinity(chain: Chain, bad: float) -> None:
    """Before: argmax picked the NaN or +inf element (index 1) and silently skipped -inf."""
    scores = np.array([[0.1, bad, 0.7, 0.2]], dtype=np.float32)
    encoding = encode_tensors([("p", scores)])
    refused("NonFiniteElement", chain.harness.functions.argmaxFloat32(encoding, "p").call, "CodecHarness")
    with pytest.raises(ContractCustomError) as info:
        chain.harness.functions.argmaxFloat32(encoding, "p").call()
    assert int.from_bytes(revert_args(info.value)[0]) == 1  # NonFiniteElement(index)
    finite = np.array([[-0.0, -3.0, 3.4e38, 0.0]], dtype=np.float32)
    assert chain.harness.functions.argmaxFloat32(encode_tensors([("p", finite)]), "p").call() == 2


# --- 7. callback gas -------------------------------------------------------------------------------------

BIG_MODEL = keccak256(b"a made-up model with one large float32 output")
BIG_LAYOUT = output_layout([("big", "float32")])
BIG_ELEMENTS = 64 * 1024  # 256 KiB of output: its ABI-encoded calldata costs ~180,000 gas of memory
# The most a request may ask for. It also keeps execution above EIP-7623's calldata floor (Prague), which
# would otherwise hand a data-heavy transaction spare gas and hide the starvation on any limit.
CALLBACK_GAS = 2_000_000


def big_request(
    chain: Chain, consumer: Contract, own: OwnEnclave, fulfiller: str
) -> tuple[bytes, bytes, bytes]:
    """A request by `consumer` for the big model, its output and our enclave's receipt for `fulfiller`."""
    chain.admin.transact(chain.contract.functions.approveModel(BIG_MODEL, BIG_LAYOUT))
    request_input = b"\x01\x00"  # no input tensors: the made-up model ignores its input
    request_id = request_id_of(
        chain,
        chain.user.transact(
            consumer.functions.ask(chain.contract.address, BIG_MODEL, request_input, CALLBACK_GAS, 3600),
            value=FEE,
        ),
    )
    output = encode_tensors([("big", np.zeros(BIG_ELEMENTS, dtype=np.float32))])
    receipt = Receipt(
        fulfilment_id(request_id, fulfiller),
        BIG_MODEL,
        keccak256(request_input),
        keccak256(output),
        int(chain.w3.eth.get_block("latest")["timestamp"]) * 1000,
    )
    return request_id, output, own.sign(receipt)


def test_7_callback_gets_the_gas_it_asked_for_at_the_estimated_limit(snapshot: Chain) -> None:
    """Before: at eth_estimateGas the callback was starved (it reverted: callbackSucceeded false) while the
    relay was paid the fee."""
    own = register_own_enclave(snapshot)
    consumer = deploy(snapshot.admin, "GasRecordingConsumer")
    relay = snapshot.relay.account.address
    request_id, output, signature = big_request(snapshot, consumer, own, relay)
    timestamp_ms = int(snapshot.w3.eth.get_block("latest")["timestamp"]) * 1000
    call = snapshot.contract.functions.fulfill(request_id, output, timestamp_ms, own.address, signature)
    estimate = call.estimate_gas(TxParams({"from": relay}))
    # Short of the estimate, the fulfil reverts instead of starving the callback while taking the fee.
    refused(
        "InsufficientGasForCallback", lambda: call.call(TxParams({"from": relay, "gas": estimate - 100_000}))
    )
    before = snapshot.w3.eth.get_balance(relay)
    tx = send_with_gas(snapshot.relay, call, estimate)
    assert tx["status"] == 1
    assert fulfilled_event(snapshot, tx)["callbackSucceeded"]  # GasRecordingConsumer reverts when starved
    asked = consumer.functions.askedGas().call()
    assert consumer.functions.gasAtEntry().call() + consumer.functions.DISPATCH_GAS().call() >= asked
    assert snapshot.w3.eth.get_balance(relay) == before + FEE - tx["gasUsed"] * tx["effectiveGasPrice"]


def test_7_reserve_after_the_callback_covers_the_worst_case(snapshot: Chain) -> None:
    """Measure, with a trace, the gas fulfil spends after the callback returns in the worst case: the
    callback burns all its gas, and the fulfiller is a contract whose receive() burns the payment stipend,
    so the fee is credited to a fresh `owed` slot. AFTER_CALLBACK_RESERVE (InferenceVerifier.sol) covers
    it."""
    own = register_own_enclave(snapshot)
    consumer = deploy(snapshot.admin, "RevertingConsumer", True)
    relay_contract = deploy(snapshot.admin, "ContractRelay")
    request_id, output, signature = big_request(snapshot, consumer, own, relay_contract.address)
    timestamp_ms = int(snapshot.w3.eth.get_block("latest")["timestamp"]) * 1000
    call = relay_contract.functions.fulfill(
        snapshot.contract.address, request_id, output, timestamp_ms, own.address, signature
    )
    # Traced as a call on the state the transaction will run on (anvil records no steps of mined ones).
    trace = snapshot.rpc(
        "debug_traceCall",
        {
            "from": snapshot.relay.account.address,
            "to": relay_contract.address,
            "data": relay_contract.encode_abi(
                "fulfill",
                [snapshot.contract.address, request_id, output, timestamp_ms, own.address, signature],
            ),
            "gas": hex(8_000_000),
        },
        "latest",
        {"disableStack": True, "disableStorage": True, "enableMemory": False},
    )
    tx = snapshot.relay.transact(call)
    deferred = snapshot.contract.events.PaymentDeferred().process_receipt(tx, errors=DISCARD)
    assert deferred[0]["args"]["payee"] == relay_contract.address
    assert snapshot.contract.functions.owed(relay_contract.address).call() == FEE
    steps: list[dict[str, Any]] = trace["structLogs"]  # type: ignore[index]
    verifier_depth = 2  # the EOA calls ContractRelay (depth 1), which calls the verifier
    call_index = next(i for i, s in enumerate(steps) if s["depth"] == verifier_depth and s["op"] == "CALL")
    assert steps[call_index + 1]["depth"] == verifier_depth + 1  # the callback
    callee_gas = steps[call_index + 1]["gas"]
    assert callee_gas >= CALLBACK_GAS
    # From the gasleft() of the check to the CALL: what CALLBACK_OVERHEAD must cover.
    check = max(
        i for i in range(call_index) if steps[i]["depth"] == verifier_depth and steps[i]["op"] == "GAS"
    )
    overhead = steps[check]["gas"] - steps[call_index]["gas"]
    print(f"gas from the check to the CALL: {overhead}")
    assert overhead < snapshot.contract.functions.CALLBACK_OVERHEAD().call()
    back = next(i for i in range(call_index + 1, len(steps)) if steps[i]["depth"] == verifier_depth)
    last = max(i for i, s in enumerate(steps) if s["depth"] == verifier_depth)
    after_callback = steps[back]["gas"] - steps[last]["gas"] + steps[last]["gasCost"]
    print(f"gas after the callback (worst case): {after_callback}")
    assert after_callback < snapshot.contract.functions.AFTER_CALLBACK_RESERVE().call()
    # The fulfiller withdraws its credited fee.
    payee = Account.create().address
    snapshot.relay.transact(relay_contract.functions.withdraw(snapshot.contract.address, payee))
    assert snapshot.w3.eth.get_balance(payee) == FEE
    assert snapshot.contract.functions.owed(relay_contract.address).call() == 0


# --- image epochs ----------------------------------------------------------------------------------------


def test_reapproving_a_revoked_image_does_not_revive_its_enclaves(
    snapshot: Chain, server: str, server_pki: Path
) -> None:
    """Before: after revokeImage and approveImage, the old registration verified receipts again."""
    _, signed = infer(server)
    verify = snapshot.contract.functions.verifyReceipt(receipt_tuple(signed), signed.signature)
    assert verify.call() == snapshot.enclave
    snapshot.admin.transact(snapshot.contract.functions.revokeImage(snapshot.image))
    snapshot.admin.transact(snapshot.contract.functions.approveImage(snapshot.image))
    refused("EnclaveImageRevoked", verify.call)
    # A fresh attestation under the new epoch brings it back.
    registration = sign_registration(
        snapshot.verifier_key,
        attest_enclave(server, server_policy(server_pki)),
        chain_id=snapshot.w3.eth.chain_id,
        contract=snapshot.contract.address,
    )
    submit_registration(snapshot.admin, snapshot.contract, registration)
    assert verify.call() == snapshot.enclave
    assert snapshot.contract.functions.enclaves(snapshot.enclave).call()[2] == 1  # epoch


# --- two-step admin --------------------------------------------------------------------------------------


def test_admin_handover_needs_the_new_admin_to_accept(snapshot: Chain) -> None:
    """Before: transferAdmin to a mistyped address took effect at once and the admin was locked out."""
    contract = snapshot.contract.functions
    admin = snapshot.admin.account.address
    typo = "0x000000000000000000000000000000000000dEaD"
    snapshot.admin.transact(contract.transferOwnership(typo))
    assert contract.owner().call() == admin and contract.pendingOwner().call() == typo
    snapshot.admin.transact(contract.approveImage(os.urandom(32)))  # the admin still administers
    thief = attacker(snapshot)
    refused("OwnableUnauthorizedAccount", lambda: thief.transact(contract.acceptOwnership()))
    refused("RenounceDisabled", lambda: snapshot.admin.transact(contract.renounceOwnership()))
    new_admin = snapshot.user
    snapshot.admin.transact(contract.transferOwnership(new_admin.account.address))  # corrects the typo
    new_admin.transact(contract.acceptOwnership())
    assert contract.owner().call() == new_admin.account.address
    refused("OwnableUnauthorizedAccount", lambda: snapshot.admin.transact(contract.approveImage(bytes(32))))


# --- pull payments ---------------------------------------------------------------------------------------


def test_refund_to_a_requester_without_receive_is_credited_and_withdrawn(snapshot: Chain) -> None:
    """Before: cancel reverted TransferFailed, so the fee stayed locked in the verifier for good."""
    requester = deploy(snapshot.admin, "NoReceiveRequester")
    mlp = snapshot.models["iris-mlp"]
    request_id = request_id_of(
        snapshot,
        snapshot.user.transact(
            requester.functions.ask(snapshot.contract.address, mlp, b"\x01\x00", 60), value=FEE
        ),
    )
    warp(snapshot, 61)
    tx = snapshot.user.transact(requester.functions.cancel(snapshot.contract.address, request_id))
    cancelled = snapshot.contract.events.InferenceCancelled().process_receipt(tx, errors=DISCARD)[0]["args"]
    assert cancelled["refund"] == FEE
    deferred = snapshot.contract.events.PaymentDeferred().process_receipt(tx, errors=DISCARD)[0]["args"]
    assert deferred["payee"] == requester.address and deferred["amount"] == FEE
    assert snapshot.contract.functions.owed(requester.address).call() == FEE
    thief = attacker(snapshot)  # nothing is owed to anyone else
    refused(
        "NothingOwed", lambda: thief.transact(snapshot.contract.functions.withdraw(thief.account.address))
    )
    payee = Account.create().address
    snapshot.user.transact(requester.functions.withdraw(snapshot.contract.address, payee))
    assert snapshot.w3.eth.get_balance(payee) == FEE
    assert snapshot.contract.functions.owed(requester.address).call() == 0
    assert snapshot.contract.functions.getRequest(request_id).call()[3] == 3  # Cancelled


# --- userDataHash ----------------------------------------------------------------------------------------


def test_user_data_hash_is_recorded_and_covered_by_the_verifier_signature(
    snapshot: Chain, server: str, server_pki: Path
) -> None:
    """Not an attack: userDataHash stays on-chain evidence, which only the verifier's signature makes true."""
    attested = attest_enclave(server, server_policy(server_pki))
    registration = sign_registration(
        snapshot.verifier_key, attested, chain_id=snapshot.w3.eth.chain_id, contract=snapshot.contract.address
    )
    # user_data is the manifest digest and the encryption key; the record keeps its hash for auditors.
    manifest_digest = bytes.fromhex(httpx.get(f"{server}/models").json()["digest"][2:])
    assert attested.user_data is not None and attested.user_data[:32] == manifest_digest
    assert registration.user_data_hash == keccak256(attested.user_data)
    assert registration.encryption_key == attested.user_data[32:64]
    for altered in (
        dataclasses.replace(registration, user_data_hash=keccak256(b"another model set")),
        dataclasses.replace(registration, encryption_key=os.urandom(32)),  # a key the enclave does not hold
    ):
        refused("UntrustedVerifier", partial(submit_registration, snapshot.admin, snapshot.contract, altered))
    submit_registration(snapshot.admin, snapshot.contract, registration)
    record = snapshot.contract.functions.enclaves(snapshot.enclave).call()
    assert record[3] == keccak256(attested.user_data) and record[4] == registration.encryption_key
