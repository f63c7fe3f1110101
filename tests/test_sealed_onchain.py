"""Sealed on-chain requests (issue 14, docs/PROTOCOL.md): the enclave's encryption key is registered from its
attestation, a user seals an input to it, the relay serves the request through the real enclave's
POST /infer/sealed without ever holding the plaintext, and the contract takes only that enclave's receipt."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from web3.logs import DISCARD

from attestation import Policy, TrustedRoot
from protocol.addresses import checksum_address
from protocol.hashing import keccak256
from protocol.hpke import SealingKey
from protocol.onchain import fulfilment_id
from protocol.receipts import Receipt, SignedReceipt
from protocol.sealing import open_output, seal_input
from protocol.tensors import decode_tensors, encode_tensors
from relay.chain import deploy
from relay.registration import attest_enclave
from relay.runner import Relay, output_encoding
from relay.state import RequestRow
from verinfer.processes import running_server

from .chain_fixtures import Chain
from .relay_db import RelayDb, statuses
from .test_contract_attacks import OwnEnclave, fulfil_call, refused, register_own_enclave
from .test_relay import FEE, Miner, after, local_relay, miner, relay_process, wait_for

__all__ = ["miner"]  # a fixture, imported for the relay tests

# Distinctive values, so that finding their text or bytes anywhere cannot be a coincidence.
CLEAR_ANSWER = [6.3141592, 2.7182818, 4.6692016, 1.4142135]
SEALED_ANSWER = [6.8123457, 3.0987654, 5.6172839, 2.2345678]
CALLBACK_GAS = 300_000
TIMEOUT = 3600


def features(values: list[float]) -> bytes:
    return encode_tensors([("features", np.array([values], dtype=np.float32))])


def clear_output(server: str, values: list[float]) -> bytes:
    """What a clear /infer of the same input answers: the output a sealed request must carry."""
    tensors = [{"name": "features", "shape": [1, 4], "data": values}]
    body = httpx.post(f"{server}/infer", json={"model": "iris-mlp", "inputs": tensors}).json()
    return output_encoding(body["outputs"])


def secrets_of(values: list[float]) -> list[bytes]:
    """Every form the plaintext input could take: its canonical encoding and its float32 bytes (raw and hex),
    and its numbers as the user wrote them and as a relay would send them in JSON."""
    encoding = features(values)
    raw = np.array(values, dtype=np.float32).tobytes()
    numbers = [repr(v) for v in values] + [repr(float(np.float32(v))) for v in values]
    return [encoding, encoding.hex().encode(), raw, raw.hex().encode(), *(n.encode() for n in numbers)]


def chain_data(chain: Chain, first_block: int) -> bytes:
    """Everything the chain shows from `first_block` on: every transaction's calldata, every log."""
    head = chain.w3.eth.block_number
    parts = []
    for number in range(first_block, head + 1):
        for tx in chain.w3.eth.get_block(number, full_transactions=True)["transactions"]:
            assert isinstance(tx, Mapping)  # full transactions, not hashes
            parts.append(bytes(tx["input"]))
    for log in chain.w3.eth.get_logs({"fromBlock": first_block, "toBlock": head}):
        parts += [bytes(log["data"]), *(bytes(topic) for topic in log["topics"])]
    return b"".join(parts)


def files_under(directory: Path) -> bytes:
    """The relay's files, as bytes: its logs, and its SQLite database, WAL and shared memory."""
    return b"".join(path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file())


def encryption_key(chain: Chain) -> bytes:
    return bytes(chain.contract.functions.encryptionKeyOf(chain.enclave).call())


def sealed_request(
    chain: Chain, sealed: bytes, *, enclave: str | None = None, output_key: bytes = bytes(32)
) -> bytes:
    """The user's requestSealedInference of iris-mlp, mined; its request id."""
    call = chain.contract.functions.requestSealedInference(
        chain.models["iris-mlp"], enclave or chain.enclave, sealed, output_key, 0, TIMEOUT
    )
    receipt = chain.user.transact(call, value=FEE)
    return bytes(
        chain.contract.events.InferenceRequested().process_receipt(receipt, errors=DISCARD)[0]["args"][
            "requestId"
        ]
    )


@pytest.fixture(scope="module")
def other_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second enclave (its own keys) that the relay also serves: nothing sealed to the first reaches it."""
    pki = tmp_path_factory.mktemp("other-pki")
    with running_server("--nsm", "sim", "--pki-dir", str(pki)) as url:
        yield url


# --- the encryption key on chain --------------------------------------------------------------------------


def test_the_registered_encryption_key_is_the_attested_one(
    chain: Chain, server: str, server_pki: Path
) -> None:
    attested = attest_enclave(server, Policy(root=TrustedRoot.from_file(server_pki / "root.pem")))
    assert attested.user_data is not None and len(attested.user_data) == 64
    assert encryption_key(chain) == attested.user_data[32:64] != bytes(32)
    registered = chain.contract.events.EnclaveRegistered().get_logs(
        from_block=0, argument_filters={"enclave": chain.enclave}
    )
    assert bytes(registered[-1]["args"]["encryptionKey"]) == attested.user_data[32:64]


# --- end to end: the user, the relay process, the real enclave, a consumer contract -----------------------


def test_sealed_requests_are_served_and_nobody_but_the_enclave_sees_the_input(
    chain: Chain, server: str, other_server: str, miner: Miner, relay_db: RelayDb
) -> None:
    model_hash = chain.models["iris-mlp"]
    consumer = deploy(chain.admin, "SealedInferenceConsumer", chain.contract.address, model_hash)
    requester = SealingKey.generate()
    first_block = chain.w3.eth.block_number + 1
    db = relay_db

    sealed_clear = seal_input(encryption_key(chain), model_hash, features(CLEAR_ANSWER))
    sealed_sealed = seal_input(encryption_key(chain), model_hash, features(SEALED_ANSWER))
    asked = {}
    with relay_process(chain, [other_server, server], db):
        for name, sealed, output_key in (
            ("clear output", sealed_clear, bytes(32)),
            ("sealed output", sealed_sealed, requester.public_key),
        ):
            tx = chain.user.transact(
                consumer.functions.ask(chain.enclave, sealed, output_key, CALLBACK_GAS, TIMEOUT), value=FEE
            )
            sent = chain.contract.events.InferenceSealed().process_receipt(tx, errors=DISCARD)[0]["args"]
            assert sent["enclave"] == chain.enclave and bytes(sent["outputKey"]) == output_key
            asked[name] = bytes(sent["requestId"])
        wait_for(
            lambda: all(consumer.functions.answered(rid).call() for rid in asked.values()), what="callbacks"
        )
        wait_for(lambda: set(statuses(db).values()) == {"fulfilled"}, what="the relay's confirmations")

    # The consumer has the output; the requester opens the sealed one with its key. Both are what a clear
    # run of the same inputs answers.
    clear = bytes(consumer.functions.outputs(asked["clear output"]).call())
    assert clear == clear_output(server, CLEAR_ANSWER)
    posted = bytes(consumer.functions.outputs(asked["sealed output"]).call())
    opened = open_output(requester, sealed_sealed, posted)
    assert opened == clear_output(server, SEALED_ANSWER) != posted
    assert dict(decode_tensors(opened))["label"].tolist() == [2]  # virginica
    # The fulfilments are the sealed-to enclave's own receipts, over the ciphertexts.
    for rid in asked.values():
        [fulfilled] = chain.contract.events.InferenceFulfilled().get_logs(
            from_block=first_block, argument_filters={"requestId": rid}
        )
        assert fulfilled["args"]["enclave"] == chain.enclave

    # Nothing the relay wrote, logged or sent, and nothing on chain, holds the inputs or the sealed output.
    # (On PostgreSQL: the database's files, after a checkpoint, and the server's write-ahead log.)
    seen = {
        "the relay's database and log": files_under(db.folder) + db.stored_bytes(),
        "the chain": chain_data(chain, first_block),
    }
    assert b"verinfer.relay" in seen["the relay's database and log"]  # the log is among them
    for where, data in seen.items():
        for secret in [*secrets_of(CLEAR_ANSWER), *secrets_of(SEALED_ANSWER), opened, opened.hex().encode()]:
            assert secret not in data, f"{secret!r} found in {where}"
    for where, data in seen.items():  # ... where the ciphertexts are, as a check that the search works
        assert sealed_clear in data and sealed_sealed in data and posted in data, where


# --- refusals: the contract -------------------------------------------------------------------------------


def own_receipt(
    chain: Chain, own: OwnEnclave, request_id: bytes, sealed: bytes, output: bytes
) -> SignedReceipt:
    """A receipt of `own` for the relay's fulfilment of `request_id` with `output`."""
    receipt = Receipt(
        fulfilment_id(request_id, chain.relay.account.address),
        chain.models["iris-mlp"],
        keccak256(sealed),
        keccak256(output),
        int(chain.w3.eth.get_block("latest")["timestamp"]) * 1000,
    )
    return SignedReceipt(receipt, bytes.fromhex(own.address[2:]), own.sign(receipt))


def fulfil(chain: Chain, request_id: bytes, output: bytes, signed: SignedReceipt) -> Any:
    return chain.relay.transact(fulfil_call(chain, request_id, output, signed))


def test_a_sealed_request_needs_a_live_enclave_with_an_encryption_key(snapshot: Chain) -> None:
    without_key = register_own_enclave(snapshot)
    assert snapshot.contract.functions.encryptionKeyOf(without_key.address).call() == bytes(32)
    refused("NoEncryptionKey", lambda: sealed_request(snapshot, b"sealed", enclave=without_key.address))
    stranger = checksum_address(os.urandom(20))
    refused("UnknownEnclave", lambda: sealed_request(snapshot, b"sealed", enclave=stranger))
    refused("InputTooLarge", lambda: sealed_request(snapshot, bytes(64 * 1024 + 1)))


def test_a_sealed_request_is_recorded_and_announced(snapshot: Chain) -> None:
    output_key = os.urandom(32)
    call = snapshot.contract.functions.requestSealedInference(
        snapshot.models["iris-mlp"], snapshot.enclave, b"ciphertext", output_key, 0, TIMEOUT
    )
    receipt = snapshot.user.transact(call, value=FEE)
    requested = snapshot.contract.events.InferenceRequested().process_receipt(receipt, errors=DISCARD)[0][
        "args"
    ]
    sealed = snapshot.contract.events.InferenceSealed().process_receipt(receipt, errors=DISCARD)[0]["args"]
    assert bytes(requested["input"]) == b"ciphertext" and bytes(requested["inputHash"]) == keccak256(
        b"ciphertext"
    )
    assert sealed["requestId"] == requested["requestId"] and sealed["enclave"] == snapshot.enclave
    stored = snapshot.contract.functions.getRequest(requested["requestId"]).call()
    assert stored.sealedTo == snapshot.enclave and bytes(stored.outputKey) == output_key
    clear = snapshot.contract.functions.requestInference(snapshot.models["iris-mlp"], b"x", 0, TIMEOUT)
    clear_id = snapshot.contract.events.InferenceRequested().process_receipt(
        snapshot.user.transact(clear), errors=DISCARD
    )[0]["args"]["requestId"]
    stored = snapshot.contract.functions.getRequest(clear_id).call()
    assert int(stored.sealedTo, 16) == 0 and bytes(stored.outputKey) == bytes(32)


def test_only_the_sealed_to_enclave_may_fulfil(snapshot: Chain, server: str) -> None:
    """Another registered enclave's receipt is refused, genuine as it is: it could not open the input."""
    own = register_own_enclave(snapshot, encryption_key=os.urandom(32))
    sealed = b"sealed to the session's enclave"
    request_id = sealed_request(snapshot, sealed)
    output = clear_output(server, CLEAR_ANSWER)
    refused(
        "SealedToAnotherEnclave",
        lambda: fulfil(snapshot, request_id, output, own_receipt(snapshot, own, request_id, sealed, output)),
    )
    assert snapshot.contract.functions.getRequest(request_id).call().status == 1  # still pending


def test_the_output_layout_is_checked_unless_the_output_is_sealed(snapshot: Chain, server: str) -> None:
    own = register_own_enclave(snapshot, encryption_key=os.urandom(32))
    output = clear_output(server, CLEAR_ANSWER)
    sealed = b"sealed to our own enclave"
    # A clear output of a sealed request must still be the model's complete output.
    request_id = sealed_request(snapshot, sealed, enclave=own.address)
    garbage = encode_tensors([("label", np.array([1], dtype=np.int64))])  # a valid encoding, one tensor short
    refused(
        "IncompleteOutput",
        lambda: fulfil(
            snapshot, request_id, garbage, own_receipt(snapshot, own, request_id, sealed, garbage)
        ),
    )
    fulfil(snapshot, request_id, output, own_receipt(snapshot, own, request_id, sealed, output))
    # A sealed output is ciphertext: the enclave checked the layout before sealing it.
    request_id = sealed_request(snapshot, sealed, enclave=own.address, output_key=os.urandom(32))
    garbage = os.urandom(80)
    tx = fulfil(snapshot, request_id, garbage, own_receipt(snapshot, own, request_id, sealed, garbage))
    fulfilled = snapshot.contract.events.InferenceFulfilled().process_receipt(tx, errors=DISCARD)[0]["args"]
    assert bytes(fulfilled["outputHash"]) == keccak256(garbage)


# --- refusals: the relay ----------------------------------------------------------------------------------


def stored(relay: Relay, request_id: str) -> RequestRow:
    row = relay.state.request(request_id)
    assert row is not None, "the relay has not seen the request"
    return row


def step_until(chain: Chain, relay: Relay, check: Callable[[], bool], what: str) -> None:
    """Mine a block (the relay waits for one confirmation) and run one relay step, until `check()`."""

    def step() -> None:
        chain.rpc("evm_mine")
        relay.step()

    wait_for(after(step, check), timeout=30, what=what)


def test_a_tampered_ciphertext_is_refused_by_the_enclave_and_nothing_is_posted(
    snapshot: Chain, server: str, relay_db: RelayDb
) -> None:
    first_block = snapshot.w3.eth.block_number + 1
    sealed = bytearray(
        seal_input(encryption_key(snapshot), snapshot.models["iris-mlp"], features(CLEAR_ANSWER))
    )
    sealed[-1] ^= 1
    request_id = "0x" + sealed_request(snapshot, bytes(sealed)).hex()
    relay = local_relay(snapshot, server, relay_db, start_block=first_block)
    seen = lambda: relay.state.request(request_id) is not None  # noqa: E731
    step_until(
        snapshot, relay, lambda: seen() and stored(relay, request_id).status == "failed", "the refusal"
    )
    assert "sealed_input_rejected" in (stored(relay, request_id).detail or "")  # the enclave's 4xx, quoted
    assert relay.state.txs.latest_for("fulfil", request_id) is None
    assert snapshot.contract.functions.getRequest(bytes.fromhex(request_id[2:])).call().status == 1
    relay.state.close()


def test_the_relay_serves_a_sealed_request_only_with_its_enclave(
    snapshot: Chain, server: str, relay_db: RelayDb
) -> None:
    """Sealed to an enclave the relay does not serve: no enclave is asked to run it, it waits (another relay
    may serve that enclave) until its deadline."""
    first_block = snapshot.w3.eth.block_number + 1
    own = register_own_enclave(snapshot, encryption_key=os.urandom(32))
    request_id = "0x" + sealed_request(snapshot, b"sealed to our own enclave", enclave=own.address).hex()
    relay = local_relay(snapshot, server, relay_db, start_block=first_block)
    seen = lambda: relay.state.request(request_id) is not None  # noqa: E731
    step_until(snapshot, relay, lambda: seen() and stored(relay, request_id).attempts >= 1, "a try")
    row = stored(relay, request_id)
    assert row.status == "pending" and "none of this relay's enclaves" in (row.detail or "")
    assert relay.state.txs.latest_for("fulfil", request_id) is None
    relay.state.close()
