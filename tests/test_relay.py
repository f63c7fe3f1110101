"""The real relay process against anvil and real enclave servers: end to end, crashes, outages, reorgs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from web3.logs import DISCARD

from attestation import Policy, TrustedRoot
from protocol import merkle
from protocol.receipts import SignedReceipt
from protocol.tensors import encode_tensors
from relay.chain import SignedTx, TxSender, connect, deploy
from relay.policy import FeePolicy
from relay.registration import attest_enclave, sign_registration, submit_registration
from relay.runner import Relay
from relay.state import RelayState
from verinfer.processes import ANVIL_KEYS, VERINFER, free_port, running_anvil, running_server, stop

from .chain_fixtures import Chain, build_chain
from .conftest import BATCH_TOKEN
from .relay_db import RelayDb, rows, statuses


@pytest.fixture(scope="module")
def chain(server: str, server_pki: Path) -> Iterator[Chain]:
    """A chain of this module's own: its anvil_reorg would leave the session chain with a head anvil cannot
    return (BlockNotFound for later tests' relays), as test_relay_hostile.py found too."""
    with running_anvil() as url:
        yield build_chain(url, server, server_pki)


REPO = Path(__file__).resolve().parent.parent
MNIST = np.load(REPO / "models" / "data" / "mnist-eval.npz")


def digit_input(index: int) -> tuple[bytes, int]:
    image = (MNIST["x"][index : index + 1, None] / 255.0).astype(np.float32)
    return encode_tensors([("image", image)]), int(MNIST["y"][index])


def iris_input() -> bytes:
    return encode_tensors([("features", np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))])


class Miner:
    """Mines a block every `interval` seconds, as a live chain would, until stopped."""

    def __init__(self, chain: Chain, interval: float = 0.2) -> None:
        self.chain = chain
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Miner:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        w3 = connect(self.chain.url)
        while not self._stop.wait(self.interval):
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def __enter__(self) -> Miner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def no_automine(chain: Chain) -> Iterator[None]:
    """Transactions wait in the pool until a block is mined explicitly (or by a Miner)."""
    chain.rpc("evm_setAutomine", False)
    try:
        yield
    finally:
        chain.rpc("evm_setAutomine", True)
        chain.rpc("evm_mine")
        chain.user.forget_nonce()


@pytest.fixture
def miner(chain: Chain) -> Iterator[Miner]:
    m = Miner(chain).start()
    yield m
    m.stop()


ANCHORING = ("--anchor-min", "1", "--anchor-max", "4096", "--batch-token-env", "RELAY_BATCH_TOKEN")
FEE = 10**15  # pays for 300,000 callback gas under the relay's default policy (1 gwei per gas + overhead)
CHAIN_ID = 31337  # anvil's


@contextmanager
def relay_process(
    chain: Chain, enclaves: list[str], db: RelayDb, *, key: int = 2, extra: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "VERINFER_KEY": ANVIL_KEYS[key], "RELAY_BATCH_TOKEN": BATCH_TOKEN}
    log = db.log().open("wb")
    process = subprocess.Popen(
        [
            VERINFER,
            "relay",
            "run",
            "--rpc",
            chain.url,
            "--contract",
            chain.contract.address,
            "--enclave",
            ",".join(enclaves),
            "--db",
            db.url,
            "--confirmations",
            "1",
            "--poll",
            "0.1",
            "--start-block",
            str(chain.w3.eth.block_number),
            "--chain-id",
            str(CHAIN_ID),
            "--stuck-after",
            "2",
            *extra,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            stop(process)
        log.close()


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def after(action: Callable[[], object], check: Callable[[], bool]) -> Callable[[], bool]:
    """A wait_for condition that first runs `action` (one relay step), then checks."""

    def run() -> bool:
        action()
        return check()

    return run


def request(
    chain: Chain, model: str, data: bytes, sender: TxSender | None = None, *, fee: int = FEE, gas: int = 0
) -> str:
    sender = sender or chain.user
    call = chain.contract.functions.requestInference(chain.models[model], data, gas, 3600)
    return requested_id(chain, sender.transact(call, value=fee))


def mined_request(chain: Chain) -> tuple[SignedTx, str, int]:
    """An iris-mlp request sent by the user and mined: its signed transaction (to re-include in a reorg),
    its request id and its block."""
    signed = chain.user.sign(
        chain.contract.functions.requestInference(chain.models["iris-mlp"], iris_input(), 0, 3600), value=FEE
    )
    chain.user.broadcast(signed)
    wait_for(lambda: chain.user.receipt(signed.tx_hash) is not None, what="request mined")
    receipt = chain.user.receipt(signed.tx_hash)
    return signed, requested_id(chain, receipt), int(receipt["blockNumber"])


def requested_id(chain: Chain, receipt: Any) -> str:
    """The request id of the InferenceRequested event in a transaction receipt."""
    event = chain.contract.events.InferenceRequested().process_receipt(receipt, errors=DISCARD)[0]
    return "0x" + bytes(event["args"]["requestId"]).hex()


def fulfilments(chain: Chain, request_id: str, from_block: int = 0) -> list:
    logs = chain.contract.events.InferenceFulfilled().get_logs(
        from_block=from_block, argument_filters={"requestId": bytes.fromhex(request_id[2:])}
    )
    return list(logs)


def chain_status(chain: Chain, request_id: str) -> int:
    return int(chain.contract.functions.getRequest(bytes.fromhex(request_id[2:])).call().status)


def local_relay(chain: Chain, server: str, db: RelayDb, **options: object) -> Relay:
    """The relay's loop in this process (for steps a test controls), as `relay run` would build it."""
    return Relay(
        chain.w3,
        chain.contract,
        chain.relay.account,
        [server],
        RelayState(db.url),
        chain_id=CHAIN_ID,
        confirmations=1,
        **options,  # type: ignore[arg-type]
    )


def test_consumer_request_is_served_end_to_end(
    chain: Chain, server: str, miner: Miner, relay_db: RelayDb
) -> None:
    consumer = deploy(
        chain.admin, "ClassifierConsumer", chain.contract.address, chain.models["mnist-lenet"], "digit"
    )
    iris = deploy(
        chain.admin, "ClassifierConsumer", chain.contract.address, chain.models["iris-mlp"], "label"
    )
    db = relay_db
    with relay_process(chain, [server], db):
        asked = []
        for index in range(3):
            data, digit = digit_input(index)
            tx = chain.user.transact(consumer.functions.classify(data, 300_000, 3600), value=FEE)
            asked.append((requested_id(chain, tx), digit))
        tx = chain.user.transact(iris.functions.classify(iris_input(), 300_000, 3600), value=FEE)
        iris_id = bytes.fromhex(requested_id(chain, tx)[2:])
        wait_for(lambda: all(statuses(db).get(rid) == "fulfilled" for rid, _ in asked), what="fulfilment")
        wait_for(lambda: iris.functions.answered(iris_id).call(), what="iris callback")
    for request_id, digit in asked:
        assert consumer.functions.answered(bytes.fromhex(request_id[2:])).call()
        assert consumer.functions.labels(bytes.fromhex(request_id[2:])).call() == digit
        assert len(fulfilments(chain, request_id)) == 1
    assert iris.functions.labels(iris_id).call() == 2  # virginica


def test_kill_9_between_submit_and_confirmation(chain: Chain, server: str, relay_db: RelayDb) -> None:
    """The relay dies with its fulfil transaction in the mempool; the restarted relay confirms it, once."""
    db = relay_db
    start = ("--start-block", str(chain.w3.eth.block_number))
    ids = [request(chain, "iris-mlp", iris_input()) for _ in range(2)]
    chain.rpc("evm_mine")
    chain.rpc("evm_setAutomine", False)
    try:
        with relay_process(chain, [server], db, extra=start) as relay:
            wait_for(lambda: all(statuses(db).get(i) == "submitted" for i in ids), what="submission")
            relay.send_signal(signal.SIGKILL)
            relay.wait()
        for _ in range(3):
            chain.rpc("evm_mine")
    finally:
        chain.rpc("evm_setAutomine", True)
    assert all(chain_status(chain, i) == 2 for i in ids)  # fulfilled on chain by the dead relay's transaction
    with relay_process(chain, [server], db, extra=start):
        wait_for(
            lambda: all(statuses(db).get(i) == "fulfilled" for i in ids), what="confirmation after restart"
        )
    for request_id in ids:
        assert len(fulfilments(chain, request_id)) == 1


def test_kill_9_after_seeing_before_serving(
    chain: Chain, relay_db: RelayDb, server: str, miner: Miner
) -> None:
    """The relay has recorded requests it could not serve yet (enclave unreachable) and is killed."""
    db = relay_db
    dead_enclave = f"http://127.0.0.1:{free_port()}"
    start = ("--start-block", str(chain.w3.eth.block_number))
    ids = [request(chain, "iris-mlp", iris_input()) for _ in range(2)]
    with relay_process(chain, [dead_enclave], db, extra=start) as relay:
        wait_for(lambda: set(ids) <= set(statuses(db)), what="requests recorded")
        relay.send_signal(signal.SIGKILL)
        relay.wait()
    assert all(statuses(db)[i] == "pending" for i in ids)
    with relay_process(chain, [server], db, extra=start):
        wait_for(
            lambda: all(statuses(db).get(i) == "fulfilled" for i in ids), what="fulfilment after restart"
        )
    assert all(len(fulfilments(chain, i)) == 1 for i in ids)


class Killed(BaseException):
    """Stands for SIGKILL at one precise instant (BaseException: nothing in the relay catches it)."""


def selector(chain: Chain, function: str, *args: object) -> bytes:
    return bytes.fromhex(chain.contract.encode_abi(function, args=list(args))[2:10])


def crash_on_send(chain: Chain, monkeypatch: pytest.MonkeyPatch, selector: bytes) -> list[bytes]:
    """Make the relay process "die" the first time it broadcasts a call to `selector`; returns the bytes
    it was about to send."""
    original = chain.w3.eth.send_raw_transaction
    lost: list[bytes] = []

    def send(raw: bytes) -> object:
        if not lost and selector.hex() in bytes(raw).hex():
            lost.append(bytes(raw))
            raise Killed
        return original(raw)

    monkeypatch.setattr(chain.w3.eth, "send_raw_transaction", send)
    return lost


def test_crash_between_recording_and_broadcasting(
    chain: Chain, server: str, relay_db: RelayDb, miner: Miner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed and written to the database, never sent: a new relay re-broadcasts the very same transaction."""
    first_block = chain.w3.eth.block_number
    request_id = request(chain, "iris-mlp", iris_input())
    lost = crash_on_send(
        chain, monkeypatch, selector(chain, "fulfill", bytes(32), b"", 0, chain.enclave, b"")
    )
    relay = local_relay(chain, server, relay_db, start_block=first_block)
    with pytest.raises(Killed):
        wait_for(after(relay.step, lambda: False), what="the fatal broadcast")
    relay.state.close()
    monkeypatch.undo()
    assert lost and chain_status(chain, request_id) == 1
    restarted = local_relay(chain, server, relay_db)
    wait_for(
        after(
            restarted.step,
            lambda: getattr(restarted.state.request(request_id), "status", None) == "fulfilled",
        ),
        what="re-broadcast",
    )
    events = fulfilments(chain, request_id)
    sent = chain.w3.eth.get_transaction(events[0]["transactionHash"])
    assert len(events) == 1 and bytes(chain.w3.eth.get_raw_transaction(sent["hash"])) == lost[0]


def test_enclave_unreachable_for_a_while(chain: Chain, server: str, relay_db: RelayDb, miner: Miner) -> None:
    db = relay_db
    port = free_port()
    proxy_cmd = [
        VERINFER,
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        server.removeprefix("http://"),
    ]
    with relay_process(chain, [f"http://127.0.0.1:{port}"], db):
        request_id = request(chain, "iris-mlp", iris_input())
        time.sleep(3)  # the enclave is unreachable: the relay retries with backoff
        assert statuses(db).get(request_id) == "pending"
        proxy = subprocess.Popen(proxy_cmd)
        try:
            wait_for(
                lambda: statuses(db).get(request_id) == "fulfilled", timeout=90, what="fulfilment once back"
            )
        finally:
            stop(proxy)
    assert len(fulfilments(chain, request_id)) == 1


def test_reorg_of_the_last_blocks_loses_nothing(chain: Chain, server: str, relay_db: RelayDb) -> None:
    db = relay_db
    miner = Miner(chain).start()
    try:
        signed, request_id, request_block = mined_request(chain)
        with relay_process(chain, [server], db, extra=("--start-block", str(request_block - 1))):
            wait_for(lambda: statuses(db).get(request_id) == "fulfilled", what="first fulfilment")
            miner.stop()
            depth = chain.w3.eth.block_number - request_block + 1
            # Replace every block since the request: the request comes back, the relay's fulfilment does not.
            with no_automine(chain):  # the relay's answer waits in the pool: the reorg itself can be seen
                chain.rpc("anvil_reorg", depth, [["0x" + signed.raw.hex(), 0]])
                assert chain_status(chain, request_id) == 1
                assert fulfilments(chain, request_id, request_block) == []
                miner.start()
                wait_for(lambda: chain_status(chain, request_id) == 2, what="fulfilment after the reorg")
                wait_for(
                    lambda: statuses(db).get(request_id) == "fulfilled",
                    what="relay confirmation after the reorg",
                )
        assert len(fulfilments(chain, request_id, request_block)) == 1
    finally:
        miner.stop()
        chain.user.forget_nonce()


def test_repeated_kill_9_loses_nothing_and_fulfils_once(
    chain: Chain, server: str, relay_db: RelayDb, miner: Miner
) -> None:
    """SIGKILL at arbitrary instants while requests keep coming: every one is fulfilled, each exactly once."""
    db = relay_db
    start = ("--start-block", str(chain.w3.eth.block_number))
    ids: list[str] = []
    rng = random.Random(11)
    for _ in range(6):
        ids += [request(chain, "iris-mlp", iris_input()) for _ in range(3)]
        with relay_process(chain, [server], db, extra=start) as relay:
            time.sleep(rng.uniform(0.3, 1.5))
            relay.send_signal(signal.SIGKILL)
            relay.wait()
    with relay_process(chain, [server], db, extra=start):
        wait_for(
            lambda: all(statuses(db).get(i) == "fulfilled" for i in ids), timeout=90, what="all fulfilled"
        )
    for request_id in ids:
        assert len(fulfilments(chain, request_id)) == 1


def test_two_relays_two_enclaves_each_request_once(
    chain: Chain, server: str, server_pki: Path, relay_dbs: Callable[[str], RelayDb], miner: Miner
) -> None:
    with running_server("--nsm", "sim", "--pki-dir", str(server_pki)) as second:
        attested = attest_enclave(second, Policy(root=TrustedRoot.from_file(server_pki / "root.pem")))
        registration = sign_registration(
            chain.verifier_key, attested, chain_id=chain.w3.eth.chain_id, contract=chain.contract.address
        )
        submit_registration(chain.admin, chain.contract, registration)
        start = chain.w3.eth.block_number
        ids = [
            request(
                chain, "iris-mlp" if i % 2 else "mnist-lenet", iris_input() if i % 2 else digit_input(i)[0]
            )
            for i in range(8)
        ]
        begin = ("--start-block", str(start))
        a, b = relay_dbs("a"), relay_dbs("b")
        with (
            relay_process(chain, [server, second], a, key=2, extra=begin),
            relay_process(chain, [second, server], b, key=4, extra=begin),
        ):
            wait_for(lambda: all(chain_status(chain, i) == 2 for i in ids), timeout=90, what="all fulfilled")
            done = ("fulfilled", "settled")
            wait_for(
                lambda: (
                    all(statuses(a).get(i) in done for i in ids)
                    and all(statuses(b).get(i) in done for i in ids)
                ),
                what="both relays agree",
            )
    for request_id in ids:
        assert len(fulfilments(chain, request_id, start)) == 1
    enclaves_used = {e["args"]["enclave"] for i in ids for e in fulfilments(chain, i, start)}
    assert chain.enclave in enclaves_used


def test_gas_price_cap_is_respected(chain: Chain, server: str, relay_db: RelayDb, miner: Miner) -> None:
    first_block = chain.w3.eth.block_number
    request_id = request(chain, "iris-mlp", iris_input())
    db = relay_db
    relay = local_relay(chain, server, db, start_block=first_block, policy=FeePolicy(max_gas_price=1))
    wait_for(after(relay.step, lambda: relay.state.request(request_id) is not None), what="request confirmed")
    for _ in range(3):
        relay.step()
        time.sleep(0.3)
    row = relay.state.request(request_id)
    assert row is not None and row.status == "pending" and row.attempts >= 1 and "cap" in (row.detail or "")
    assert chain_status(chain, request_id) == 1
    relay.state.close()
    uncapped = local_relay(chain, server, db)
    wait_for(
        after(uncapped.step, lambda: chain_status(chain, request_id) == 2), what="fulfilment without cap"
    )


def test_relay_anchors_receipt_batches(chain: Chain, server: str, relay_db: RelayDb, miner: Miner) -> None:
    for _ in range(4):
        httpx.post(f"{server}/infer", json={"model": "iris-ols", "inputs": [[5.1, 3.5, 1.4]]})
    start = chain.w3.eth.block_number
    earlier = {e["transactionHash"] for e in chain.contract.events.BatchAnchored().get_logs(from_block=start)}

    def anchors() -> list[Any]:  # this test's, not one a relay of the test before sent in the same block
        logs = chain.contract.events.BatchAnchored().get_logs(from_block=start)
        return [e for e in logs if e["transactionHash"] not in earlier]

    db = relay_db
    with relay_process(chain, [server], db, extra=ANCHORING):
        wait_for(lambda: bool(anchors()), what="anchor")
    event = anchors()[0]["args"]
    [(receipts_json,)] = rows(
        db, "SELECT receipts FROM batches WHERE root = ?", ("0x" + bytes(event["root"]).hex(),)
    )
    import json

    receipts = [SignedReceipt.from_json(r) for r in json.loads(receipts_json)]
    assert len(receipts) == event["count"]
    digests = [r.receipt.digest() for r in receipts]
    last = receipts[-1].receipt
    enclave = chain.contract.functions.proveReceipt(
        (last.request_id, last.model_hash, last.input_hash, last.output_hash, last.timestamp_ms),
        event["root"],
        merkle.proof(digests, len(digests) - 1),
    ).call()
    assert enclave == event["enclave"]


def test_a_freed_nonce_below_a_live_transaction_is_filled(chain: Chain, relay_db: RelayDb) -> None:
    """The transaction manager's nonce rules on a real node: a transaction that took a nonce and was never
    signed (a crash) is dropped when no longer needed, and the hole it leaves below a live transaction is
    filled with a self-transfer, or the later one would wait for ever."""
    from relay.state import TxStatus
    from relay.txmanager import TxManager

    account = chain.user.account
    state = RelayState(relay_db.url)
    store = state.txs
    txm = TxManager(
        chain.w3,
        account,
        store,
        FeePolicy(),
        chain_id=CHAIN_ID,
        confirmations=1,
        needed=lambda tx: tx.ref != "abandoned",
    )
    nonce = txm.allocate_nonce()
    assert nonce == chain.w3.eth.get_transaction_count(account.address)

    def queue(ref: str) -> int:
        row = store.create(
            kind="test", ref=ref, guard="", nonce=txm.allocate_nonce(), to_address=account.address,
            data=b"", value=0, gas=21_000,
        )  # fmt: skip
        return row.id

    with no_automine(chain):
        abandoned, wanted = queue("abandoned"), queue("wanted")
        assert [store.get(i).nonce for i in (abandoned, wanted)] == [nonce, nonce + 1]  # type: ignore[union-attr]
        txm.tick()
        assert store.get(abandoned).status == TxStatus.DROPPED  # type: ignore[union-attr]
        assert store.get(wanted).status == TxStatus.BROADCAST  # type: ignore[union-attr]
        fillers = [row for row in store.live() if row.kind == "cancel"]
        assert [row.nonce for row in fillers] == [nonce]
        for _ in range(2):
            chain.rpc("evm_mine")
        txm.tick()
    assert chain.w3.eth.get_transaction_count(account.address) == nonce + 2
    assert store.get(wanted).status == store.get(fillers[0].id).status == TxStatus.CONFIRMED  # type: ignore[union-attr]
    state.close()
