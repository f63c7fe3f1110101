"""Issue 11's holes in the relay, one regression test each: real anvil, real compiled contracts, the real
relay (`verinfer relay run`, or its loop in-process where a test must stop it at one precise instant)."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from attestation import Policy, TrustedRoot
from attestation.nsm import open_nsm
from enclave.app import create_app
from enclave.batch_access import BatchAccess
from enclave.image import measure_image
from enclave.service import EnclaveService
from protocol.manifest import load_manifest
from protocol.tensors import encode_tensors
from relay.policy import FULFIL_OVERHEAD_GAS
from relay.registration import attest_enclave, sign_registration, submit_registration
from verinfer.processes import VERINFER, free_port, running_anvil, stop

from .chain_fixtures import Chain, build_chain
from .conftest import BATCH_TOKEN
from .relay_db import RelayDb, rows, statuses
from .test_relay import (
    ANCHORING,
    CHAIN_ID,
    FEE,
    REPO,
    Killed,
    Miner,
    after,
    chain_status,
    crash_on_send,
    fulfilments,
    iris_input,
    local_relay,
    mined_request,
    no_automine,
    relay_process,
    request,
    requested_id,
    selector,
    wait_for,
)

GWEI = 10**9


@pytest.fixture(scope="module")
def chain(server: str, server_pki: Path) -> Iterator[Chain]:
    """A chain of this module's own: its reorgs, gas spikes and chain switches must not depend on (or leave
    anything in) the history other tests built on the session chain. (On the shared chain, after the whole
    suite, anvil_reorg past ~100 blocks came back with state where the verifier was not deployed.)"""
    with running_anvil() as url:
        yield build_chain(url, server, server_pki)


@pytest.fixture
def miner(chain: Chain) -> Iterator[Miner]:
    m = Miner(chain).start()
    yield m
    m.stop()


# --- helpers ------------------------------------------------------------------------------------------------


@contextmanager
def local_enclave(pki: Path, *, port: int | None = None, log_size: int = 100_000) -> Iterator[str]:
    """A real enclave app (simulated NSM, the session's PKI) in this process, so a test can choose its port
    (a restart behind the same URL) and the size of its receipt log (eviction)."""
    nsm = open_nsm("sim", pki_dir=pki, pcrs=measure_image(REPO / "models").pcrs)
    service = EnclaveService(load_manifest(REPO / "models"), nsm, receipt_log_size=log_size)
    access = BatchAccess(hashlib.sha256(BATCH_TOKEN.encode()).digest(), rate_per_s=1000.0)
    port = port or free_port()
    config = uvicorn.Config(
        create_app(service, batch_access=access), host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="the enclave app to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def register(chain: Chain, url: str, pki: Path) -> str:
    attested = attest_enclave(url, Policy(root=TrustedRoot.from_file(pki / "root.pem")))
    registration = sign_registration(
        chain.verifier_key, attested, chain_id=chain.w3.eth.chain_id, contract=chain.contract.address
    )
    return submit_registration(chain.admin, chain.contract, registration)


def receipts(url: str, count: int) -> None:
    for _ in range(count):
        httpx.post(f"{url}/infer", json={"model": "iris-ols", "inputs": [[5.1, 3.5, 1.4]]}).raise_for_status()


def batch(url: str, start: int, limit: int) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/receipts/batch",
        json={"from": start, "max": limit},
        headers={"Authorization": f"Bearer {BATCH_TOKEN}"},
    )
    body: dict[str, Any] = response.raise_for_status().json()
    return body


def anchored(chain: Chain, since: int, enclave: str | None = None) -> list[dict[str, Any]]:
    filters = {"enclave": enclave} if enclave else {}
    logs = chain.contract.events.BatchAnchored().get_logs(from_block=since, argument_filters=filters)
    return [dict(log["args"]) | {"block": log["blockNumber"]} for log in logs]


def scanned(db: RelayDb) -> int:
    """The last block the relay has scanned (-1 before its first scan)."""
    found = rows(db, "SELECT value FROM meta WHERE key = 'scanned_block'")
    return int(found[0][0]) if found else -1


def detail(db: RelayDb, request_id: str) -> str | None:
    """The relay's recorded reason for a request's status."""
    found = rows(db, "SELECT detail FROM requests WHERE id = ?", (request_id,))
    return found[0][0] if found else None


def relay_nonce(chain: Chain) -> int:
    return int(chain.w3.eth.get_transaction_count(chain.relay.account.address))


def batch_roots(db: RelayDb) -> set[str]:
    return {root for (root,) in rows(db, "SELECT root FROM batches")}


def sign_at(chain: Chain, call: Any, price: int, *, nonce: int | None = None, value: int = FEE) -> Any:
    """The user's transaction at an explicit gas price (eth_gasPrice lags a forced base fee)."""
    account = chain.user.account
    fields: Any = {
        "from": account.address,
        "value": value,
        "gasPrice": price,
        "nonce": chain.w3.eth.get_transaction_count(account.address, "pending") if nonce is None else nonce,
        "chainId": CHAIN_ID,
    }
    return account.sign_transaction(dict(call.build_transaction(fields)))


def send_at(chain: Chain, call: Any, price: int, value: int = FEE) -> str:
    signed = sign_at(chain, call, price, value=value)
    chain.w3.eth.send_raw_transaction(signed.raw_transaction)
    return "0x" + bytes(signed.hash).hex()


def self_transfer(chain: Chain) -> bytes:
    """A signed 0-value transfer from the user to itself (something to make a block differ)."""
    account = chain.user.account
    fields: Any = {
        "to": account.address,
        "value": 0,
        "gas": 21_000,
        "gasPrice": 2 * int(chain.w3.eth.gas_price),
        "nonce": chain.w3.eth.get_transaction_count(account.address, "pending"),
        "chainId": CHAIN_ID,
    }
    return bytes(account.sign_transaction(fields).raw_transaction)


def request_id_of(chain: Chain, tx_hash: str) -> str:
    return requested_id(chain, chain.user.receipt(tx_hash))


class SpikeMiner(Miner):
    """Mines a block every interval with the base fee forced to `base_fee` (a gas spike that lasts)."""

    def __init__(self, chain: Chain, base_fee: int, interval: float = 0.2) -> None:
        super().__init__(chain, interval)
        self.base_fee = base_fee

    def _run(self) -> None:
        from relay.chain import connect

        w3 = connect(self.chain.url)
        while not self._stop.wait(self.interval):
            w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(self.base_fee)])  # type: ignore[arg-type]
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


@contextmanager
def relaxed_base_fee(chain: Chain, spike: SpikeMiner | None = None) -> Iterator[None]:
    """Back to a cheap chain for the next test; a spike still mining would undo the reset, so it stops
    first (else its next 20-gwei block could follow the reset and the next test start mid-spike)."""
    try:
        yield
    finally:
        if spike is not None:
            spike.stop()
        for _ in range(3):
            chain.rpc("anvil_setNextBlockBaseFeePerGas", hex(GWEI))
            chain.rpc("evm_mine")


def start_arg(chain: Chain) -> tuple[str, str]:
    return ("--start-block", str(chain.w3.eth.block_number))


# --- 8: economics -------------------------------------------------------------------------------------------


def test_unpaid_and_gas_hungry_requests_are_skipped(
    chain: Chain, server: str, relay_db: RelayDb, miner: Miner
) -> None:
    """Zero-fee requests and 2M-gas callbacks drained today's relay: it served everything."""
    db = relay_db
    begin = start_arg(chain)
    unpaid = request(chain, "iris-mlp", iris_input(), fee=0)
    hungry = request(chain, "iris-mlp", iris_input(), fee=10**17, gas=2_000_000)
    paid = request(chain, "iris-mlp", iris_input())
    before = relay_nonce(chain)
    with relay_process(chain, [server], db, extra=begin):
        wait_for(lambda: statuses(db).get(paid) == "fulfilled", what="the paying request")
        wait_for(lambda: statuses(db).get(unpaid) == "skipped", timeout=10, what="the unpaid request skipped")
        wait_for(lambda: statuses(db).get(hungry) == "skipped", timeout=10, what="the gas-hungry one skipped")
    details = dict(rows(db, "SELECT id, detail FROM requests"))
    assert "below the minimum" in details[unpaid] and "callback gas" in details[hungry]
    assert chain_status(chain, unpaid) == 1 and chain_status(chain, hungry) == 1
    assert relay_nonce(chain) == before + 1  # one transaction: the paying request's
    free = (
        "--min-fee-per-gas-gwei",
        "0",
    )  # an operator who serves for free: skipped requests are judged again
    with relay_process(chain, [server], db, extra=(*begin, *free)):
        wait_for(
            lambda: statuses(db).get(unpaid) == "fulfilled", what="the unpaid request under the new policy"
        )
    assert statuses(db)[hungry] == "skipped"


def test_request_that_pays_only_at_the_minimum_price_waits_for_a_cheaper_chain(
    chain: Chain, server: str, relay_db: RelayDb
) -> None:
    """A fee that passes the 1 gwei floor but breaks even at 5 gwei is a loss at 20 gwei: the relay waits."""
    db = relay_db
    begin = start_arg(chain)
    cheap = request(chain, "iris-mlp", iris_input(), fee=5 * GWEI * FULFIL_OVERHEAD_GAS)
    before = relay_nonce(chain)
    spike = SpikeMiner(chain, 20 * GWEI)
    with relaxed_base_fee(chain):
        spike.start()
        try:
            with relay_process(chain, [server], db, extra=begin):
                wait_for(lambda: "break-even" in (detail(db, cheap) or ""), what="the request to wait")
                time.sleep(1.0)
                assert statuses(db)[cheap] == "pending" and relay_nonce(chain) == before
        finally:
            spike.stop()
    with Miner(chain), relay_process(chain, [server], db, extra=begin):
        wait_for(lambda: statuses(db).get(cheap) == "fulfilled", what="the request once gas is cheap")


def test_default_gas_price_cap(chain: Chain, server: str, relay_db: RelayDb) -> None:
    """Today's relay had no cap unless given one: a 200 gwei spike was paid in full."""
    db = relay_db
    begin = start_arg(chain)
    spike = SpikeMiner(chain, 200 * GWEI)
    with relaxed_base_fee(chain):
        spike.start()
        try:
            tx = send_at(
                chain,
                chain.contract.functions.requestInference(chain.models["iris-mlp"], iris_input(), 0, 3600),
                300 * GWEI,
            )
            wait_for(lambda: chain.user.receipt(tx) is not None, what="the request mined")
            receipt = chain.user.receipt(tx)
            request_id = requested_id(chain, receipt)
            before = relay_nonce(chain)
            with relay_process(chain, [server], db, extra=begin):
                wait_for(lambda: request_id in statuses(db), what="the request seen")
                time.sleep(3)
                assert relay_nonce(chain) == before and chain_status(chain, request_id) == 1
                assert "above the cap" in (detail(db, request_id) or "")
                spike.stop()
                with Miner(chain):
                    wait_for(
                        lambda: statuses(db).get(request_id) == "fulfilled", what="fulfilment after the spike"
                    )
        finally:
            spike.stop()


def test_stuck_transaction_is_repriced_and_does_not_stall_the_loop(
    chain: Chain, server: str, relay_db: RelayDb
) -> None:
    """Today a fulfilment priced under a rising base fee sat in the pool for ever (no bumping), and each
    re-broadcast of it drew "transaction already imported", which backed the whole loop off: the next
    request was never served."""
    db = relay_db
    begin = start_arg(chain)
    spike = SpikeMiner(chain, 20 * GWEI)
    try:
        with (
            relaxed_base_fee(chain, spike),
            relay_process(chain, [server], db, extra=begin),
            no_automine(chain),
        ):
            call = chain.contract.functions.requestInference(chain.models["iris-mlp"], iris_input(), 0, 3600)
            first_tx = send_at(
                chain, call, 2 * GWEI, value=10**17
            )  # worth re-pricing for: break-even 1000 gwei
            for _ in range(2):
                chain.rpc("evm_mine")
            first = request_id_of(chain, first_tx)
            wait_for(lambda: statuses(db).get(first) == "submitted", what="the first fulfilment sent")
            spike.start()  # from now on the first fulfilment is underpriced
            time.sleep(1.0)
            assert chain_status(chain, first) == 1
            call = chain.contract.functions.requestInference(chain.models["iris-mlp"], iris_input(), 0, 3600)
            second_tx = send_at(chain, call, 50 * GWEI, value=10**17)  # pays for itself at the spike
            wait_for(lambda: chain.user.receipt(second_tx) is not None, what="the second request mined")
            second = request_id_of(chain, second_tx)
            wait_for(
                lambda: chain_status(chain, first) == 2 and chain_status(chain, second) == 2,
                timeout=30,
                what="both fulfilled under the spike",
            )
            wait_for(lambda: statuses(db).get(second) == "fulfilled", what="the relay's record")
    finally:
        spike.stop()
    prices = [int(p) for (p,) in rows(db, "SELECT gas_price FROM attempts ORDER BY signed_at")]
    assert max(prices) > min(prices) and max(prices) <= 100 * GWEI  # re-priced, under the default cap


def test_re_pricing_stops_at_the_requests_break_even(chain: Chain, server: str, relay_db: RelayDb) -> None:
    """A fulfil of a request paying 10 gwei per gas is not re-priced to 20 gwei under a spike: that would be
    served at a loss. It waits at its break-even and gets through once the spike is over."""
    db = relay_db
    begin = start_arg(chain)
    spike = SpikeMiner(chain, 20 * GWEI)
    fee = 10 * GWEI * FULFIL_OVERHEAD_GAS  # break-even 10 gwei
    try:
        with (
            relaxed_base_fee(chain, spike),
            relay_process(chain, [server], db, extra=begin),
            no_automine(chain),
        ):
            call = chain.contract.functions.requestInference(chain.models["iris-mlp"], iris_input(), 0, 3600)
            tx = send_at(chain, call, 2 * GWEI, value=fee)
            for _ in range(2):
                chain.rpc("evm_mine")
            request_id = request_id_of(chain, tx)
            wait_for(lambda: statuses(db).get(request_id) == "submitted", what="the fulfilment sent")
            spike.start()
            wait_for(lambda: "would pass" in (tx_detail(db) or ""), what="re-pricing to stop at break-even")
            assert chain_status(chain, request_id) == 1
            spike.stop()
            with Miner(chain):
                wait_for(
                    lambda: statuses(db).get(request_id) == "fulfilled", what="fulfilment after the spike"
                )
    finally:
        spike.stop()
    prices = [int(p) for (p,) in rows(db, "SELECT gas_price FROM attempts")]
    assert max(prices) <= 10 * GWEI


def tx_detail(db: RelayDb) -> str | None:
    """The newest note on the relay's transactions."""
    found = rows(db, "SELECT detail FROM transactions ORDER BY updated DESC LIMIT 1")
    return found[0][0] if found else None


def test_anchor_transaction_lost_from_the_mempool_is_sent_again(
    chain: Chain, server_pki: Path, relay_db: RelayDb
) -> None:
    """Today an anchor transaction was fire-and-forget: once lost from the pool it was never sent again."""
    db = relay_db
    since = chain.w3.eth.block_number
    with local_enclave(server_pki) as url:
        enclave = register(chain, url, server_pki)
        receipts(url, 3)
        with no_automine(chain), relay_process(chain, [url], db, extra=(*ANCHORING, *start_arg(chain))):
            mining = Miner(chain, interval=0.5)
            wait_for(lambda: bool(batch_roots(db)), what="a batch recorded and sent")
            time.sleep(0.3)
            chain.rpc("anvil_dropAllTransactions")
            mining.start()
            try:
                wait_for(lambda: bool(anchored(chain, since, enclave)), timeout=30, what="the batch anchored")
            finally:
                mining.stop()
    assert anchored(chain, since, enclave)[0]["count"] == 3


def test_root_anchored_by_someone_else_is_skipped(
    chain: Chain, server_pki: Path, relay_db: RelayDb, miner: Miner
) -> None:
    """Today AlreadyAnchored left the cursor where it was: with a full batch the relay never moved on."""
    db = relay_db
    since = chain.w3.eth.block_number
    with local_enclave(server_pki) as url:
        enclave = register(chain, url, server_pki)
        receipts(url, 4)
        theirs = batch(url, 0, 2)
        chain.admin.transact(
            chain.contract.functions.anchorBatch(
                bytes.fromhex(theirs["root"][2:]), theirs["count"], bytes.fromhex(theirs["signature"][2:])
            )
        )
        ours = batch(url, 2, 2)
        options = ("--anchor-min", "1", "--anchor-max", "2", "--batch-token-env", "RELAY_BATCH_TOKEN")
        with relay_process(chain, [url], db, extra=(*options, *start_arg(chain))):
            wait_for(
                lambda: any(a["root"].hex() == ours["root"][2:] for a in anchored(chain, since, enclave)),
                timeout=20,
                what="the next batch anchored",
            )


def test_evicted_receipts_move_the_cursor_to_the_first_kept(
    chain: Chain, server_pki: Path, relay_db: RelayDb, miner: Miner
) -> None:
    """Today a 410 receipts_evicted was retried for ever from the same cursor."""
    db = relay_db
    since = chain.w3.eth.block_number
    with local_enclave(server_pki, log_size=3) as url:
        enclave = register(chain, url, server_pki)
        receipts(url, 5)  # the log keeps receipts 2, 3, 4
        with relay_process(chain, [url], db, extra=(*ANCHORING, *start_arg(chain))):
            wait_for(
                lambda: bool(anchored(chain, since, enclave)), timeout=20, what="the kept receipts anchored"
            )
    assert anchored(chain, since, enclave)[0]["count"] == 3


def test_enclave_restarted_behind_the_same_url_has_its_receipts_anchored(
    chain: Chain, server_pki: Path, relay_db: RelayDb, miner: Miner
) -> None:
    """Today the cursor was keyed by URL: a restarted enclave (new key, log from 0) had its first
    receipts skipped, up to the old enclave's count."""
    db = relay_db
    since = chain.w3.eth.block_number
    port = free_port()
    with relay_process(chain, [f"http://127.0.0.1:{port}"], db, extra=(*ANCHORING, *start_arg(chain))):
        with local_enclave(server_pki, port=port) as url:
            first = register(chain, url, server_pki)
            receipts(url, 3)
            wait_for(
                lambda: bool(anchored(chain, since, first)), timeout=20, what="the first enclave's batch"
            )
        with local_enclave(server_pki, port=port) as url:
            second = register(chain, url, server_pki)
            receipts(url, 2)
            wait_for(
                lambda: bool(anchored(chain, since, second)), timeout=30, what="the second enclave's batch"
            )
    assert anchored(chain, since, second)[0]["count"] == 2


def test_anchor_reorged_out_is_sent_again(chain: Chain, server_pki: Path, relay_db: RelayDb) -> None:
    """Today an anchorBatch dropped by a reorg was never re-sent."""
    db = relay_db
    since = chain.w3.eth.block_number
    mining = Miner(chain).start()
    try:
        with local_enclave(server_pki) as url:
            enclave = register(chain, url, server_pki)
            receipts(url, 2)
            with relay_process(chain, [url], db, extra=(*ANCHORING, *start_arg(chain))):
                wait_for(lambda: bool(anchored(chain, since, enclave)), timeout=20, what="the batch anchored")
                block = anchored(chain, since, enclave)[0]["block"]
                time.sleep(1.0)  # confirmed, in the relay's view
                mining.stop()
                with no_automine(chain):
                    chain.rpc("anvil_reorg", chain.w3.eth.block_number - block + 1, [])
                    assert not anchored(chain, since, enclave)
                    mining.start()
                    wait_for(lambda: bool(anchored(chain, since, enclave)), timeout=30, what="anchored again")
    finally:
        mining.stop()


def test_kill_between_recording_a_batch_and_broadcasting_it(
    chain: Chain, server_pki: Path, relay_db: RelayDb, miner: Miner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today a batch recorded as submitted but never sent (SIGKILL in between) was never anchored."""
    db = relay_db
    since = chain.w3.eth.block_number
    with local_enclave(server_pki) as url:
        enclave = register(chain, url, server_pki)
        receipts(url, 2)
        lost = crash_on_send(chain, monkeypatch, selector(chain, "anchorBatch", bytes(32), 0, b""))
        options: dict[str, Any] = {"anchor_min": 1, "batch_token": BATCH_TOKEN, "start_block": since}
        relay = local_relay(chain, url, db, **options)
        relay.enclaves[0].url = url
        with pytest.raises(Killed):
            wait_for(after(relay.step, lambda: False), what="the fatal broadcast")
        relay.state.close()
        monkeypatch.undo()
        assert lost and not anchored(chain, since, enclave)
        restarted = local_relay(chain, url, db, **options)
        wait_for(
            after(restarted.step, lambda: bool(anchored(chain, since, enclave))), what="the batch anchored"
        )


def test_kill_after_sending_an_anchor_does_not_anchor_its_receipts_twice(
    chain: Chain, server_pki: Path, relay_db: RelayDb, miner: Miner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the anchor transaction was sent but before the batch and the cursor past it were
    recorded, the relay used to ask again from the old cursor: the log had grown meanwhile, so a second,
    larger batch anchored the same receipts again (gas paid twice)."""
    db = relay_db
    since = chain.w3.eth.block_number
    with local_enclave(server_pki) as url:
        enclave = register(chain, url, server_pki)
        receipts(url, 2)
        options: dict[str, Any] = {"anchor_min": 1, "batch_token": BATCH_TOKEN, "start_block": since}
        relay = local_relay(chain, url, db, **options)
        original = relay.txm.submit

        def submit_then_die(*args: Any, **kwargs: Any) -> Any:
            original(*args, **kwargs)
            raise Killed

        monkeypatch.setattr(relay.txm, "submit", submit_then_die)
        with pytest.raises(Killed):
            wait_for(after(relay.step, lambda: False), what="the fatal moment")
        relay.state.close()
        monkeypatch.undo()
        receipts(url, 2)  # the log grows while the relay is down
        restarted = local_relay(chain, url, db, **options)
        wait_for(
            after(restarted.step, lambda: sum(b["count"] for b in anchored(chain, since, enclave)) >= 4),
            what="all four receipts anchored",
        )
        for _ in range(5):
            restarted.step()
    counts = [int(b["count"]) for b in anchored(chain, since, enclave)]
    assert sum(counts) == 4, counts  # each receipt in exactly one anchored batch


def test_node_answers_to_a_raw_transaction_are_classified(chain: Chain, relay_db: RelayDb) -> None:
    """Today "transaction already imported" (anvil's "already known") was raised out of the loop, which then
    backed off for seconds; a node's refusal is now an outcome of that one transaction."""
    from relay.policy import FeePolicy
    from relay.state import RelayState
    from relay.txmanager import TxManager

    account = chain.user.account
    txm = TxManager(
        chain.w3,
        account,
        RelayState(relay_db.url).txs,
        FeePolicy(),
        chain_id=CHAIN_ID,
        confirmations=1,
        needed=lambda tx: True,
    )

    def transfer(nonce: int, price: int) -> bytes:
        fields: Any = {"to": account.address, "value": 0, "gas": 21_000, "gasPrice": price, "nonce": nonce}
        return bytes(account.sign_transaction({**fields, "chainId": CHAIN_ID}).raw_transaction)

    nonce = chain.w3.eth.get_transaction_count(account.address)
    price = int(chain.w3.eth.gas_price)
    with no_automine(chain):
        raw = transfer(nonce, price)
        assert txm._broadcast(raw).outcome == "ok"
        assert txm._broadcast(raw).outcome == "ok"  # already in the pool
        chain.rpc("evm_mine")
        assert txm._broadcast(transfer(nonce, price * 2)).outcome == "nonce_used"
        chain.rpc("anvil_setNextBlockBaseFeePerGas", hex(100 * GWEI))
        assert txm._broadcast(transfer(nonce + 1, GWEI)).outcome == "underpriced"
    chain.rpc("anvil_setNextBlockBaseFeePerGas", hex(GWEI))
    chain.rpc("evm_mine")


# --- 9: reorgs ----------------------------------------------------------------------------------------------


def test_reorg_that_recreates_a_request_with_another_input(
    chain: Chain, server: str, relay_db: RelayDb
) -> None:
    """A request id is keccak(chain, verifier, requester, count): a reorg can bring it back with another
    input. Today the relay kept serving the input it had stored first (its fulfilment reverted for ever)."""
    db = relay_db
    port = free_port()
    mining = Miner(chain).start()
    begin = start_arg(chain)
    features = [[6.7, 3.0, 5.2, 2.3]], [[5.1, 3.5, 1.4, 0.2]]
    inputs = [encode_tensors([("features", np.array(f, dtype=np.float32))]) for f in features]
    proxy = None
    try:
        calls = [
            chain.contract.functions.requestInference(chain.models["iris-mlp"], data, 0, 3600)
            for data in inputs
        ]
        nonce = chain.w3.eth.get_transaction_count(chain.user.account.address)
        price = int(chain.w3.eth.gas_price) * 2
        signed = [sign_at(chain, call, price, nonce=nonce) for call in calls]
        chain.w3.eth.send_raw_transaction(signed[0].raw_transaction)
        wait_for(lambda: chain.user.receipt("0x" + bytes(signed[0].hash).hex()) is not None, what="request A")
        receipt = chain.user.receipt("0x" + bytes(signed[0].hash).hex())
        request_id = requested_id(chain, receipt)
        with relay_process(chain, [f"http://127.0.0.1:{port}"], db, extra=begin):
            wait_for(lambda: request_id in statuses(db), what="request A recorded (no enclave yet)")
            mining.stop()
            depth = chain.w3.eth.block_number - receipt["blockNumber"] + 1
            chain.rpc("anvil_reorg", depth, [["0x" + bytes(signed[1].raw_transaction).hex(), 0]])
            on_chain = chain.contract.functions.getRequest(bytes.fromhex(request_id[2:])).call()
            assert bytes(on_chain.inputHash) == chain.w3.keccak(inputs[1])
            mining.start()
            proxy = subprocess.Popen(
                [
                    VERINFER,
                    "proxy",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--upstream",
                    server.removeprefix("http://"),
                ]
            )
            wait_for(lambda: chain_status(chain, request_id) == 2, timeout=40, what="request B fulfilled")
    finally:
        if proxy is not None:
            stop(proxy)
        mining.stop()
        chain.user.forget_nonce()
    [(stored,)] = rows(db, "SELECT input FROM requests WHERE id = ?", (request_id,))
    assert bytes(stored) == inputs[1]


def test_reorg_removing_a_request_with_an_unconfirmed_fulfilment(
    chain: Chain, server: str, relay_db: RelayDb
) -> None:
    """Today the relay re-broadcast its fulfilment of a request the reorg had removed: a revert, paid for."""
    db = relay_db
    begin = start_arg(chain)
    request_id = request(chain, "iris-mlp", iris_input())
    request_block = chain.w3.eth.block_number
    with relay_process(chain, [server], db, extra=(*begin, "--confirmations", "3")):
        for _ in range(3):
            chain.rpc("evm_mine")
        wait_for(lambda: chain_status(chain, request_id) == 2, what="the fulfilment mined (unconfirmed)")
        chain.rpc("anvil_reorg", chain.w3.eth.block_number - request_block + 1, [])
        assert chain_status(chain, request_id) == 0
        after_reorg = relay_nonce(chain)
        mining = Miner(chain).start()
        try:
            wait_for(
                lambda: statuses(db).get(request_id) == "dropped", timeout=20, what="the request dropped"
            )
            time.sleep(1.0)
        finally:
            mining.stop()
            chain.user.forget_nonce()  # the reorg took the user's request back
    assert relay_nonce(chain) == after_reorg  # nothing sent for a request that no longer exists


def test_reorg_deeper_than_64_blocks(chain: Chain, server: str, relay_db: RelayDb) -> None:
    """Today a reorg deeper than the fixed 64-block re-scan left the request 'fulfilled' in its state while
    it was pending on chain again."""
    db = relay_db
    mining = Miner(chain).start()
    begin = start_arg(chain)
    try:
        signed, request_id, request_block = mined_request(chain)
        with relay_process(chain, [server], db, extra=begin):
            wait_for(lambda: statuses(db).get(request_id) == "fulfilled", what="first fulfilment")
            mining.stop()
            chain.rpc("anvil_mine", 100)
            time.sleep(1.0)  # the relay scans the 100 blocks
            depth = chain.w3.eth.block_number - request_block + 1
            with no_automine(
                chain
            ):  # the relay's answer to the reorg waits in the pool: see the reorg itself
                chain.rpc("anvil_reorg", depth, [["0x" + signed.raw.hex(), 0]])
                assert chain_status(chain, request_id) == 1
                mining.start()
                wait_for(
                    lambda: chain_status(chain, request_id) == 2,
                    timeout=30,
                    what="fulfilment after the reorg",
                )
                wait_for(lambda: statuses(db).get(request_id) == "fulfilled", what="relay confirmation")
    finally:
        mining.stop()
        chain.user.forget_nonce()


def test_own_fulfilment_kept_through_a_reorg_stays_ours(chain: Chain, server: str, relay_db: RelayDb) -> None:
    """Today a reorg re-opened the relay's own confirmed fulfilment and relabelled it 'settled' (by
    someone else)."""
    db = relay_db
    mining = Miner(chain).start()
    begin = start_arg(chain)
    try:
        request_id = request(chain, "iris-mlp", iris_input())
        with relay_process(chain, [server], db, extra=begin):
            wait_for(lambda: statuses(db).get(request_id) == "fulfilled", what="fulfilment")
            event = fulfilments(chain, request_id)[0]
            raw = chain.w3.eth.get_raw_transaction(event["transactionHash"])
            wait_for(lambda: scanned(db) > event["blockNumber"], what="the relay past its fulfilment")
            mining.stop()
            depth = chain.w3.eth.block_number - event["blockNumber"] + 1
            forked = chain.w3.eth.get_block(event["blockNumber"])["hash"]
            # The same fulfilment in a different block (with a transfer beside it): every hash after changes.
            chain.rpc(
                "anvil_reorg", depth, [["0x" + bytes(raw).hex(), 0], ["0x" + self_transfer(chain).hex(), 0]]
            )
            assert chain.w3.eth.get_block(event["blockNumber"])["hash"] != forked
            assert chain_status(chain, request_id) == 2
            head = chain.w3.eth.block_number
            mining.start()

            wait_for(lambda: scanned(db) > head, what="the relay past the reorg")
            time.sleep(0.5)
            assert statuses(db)[request_id] == "fulfilled"
    finally:
        mining.stop()
        chain.user.forget_nonce()


# --- 10: chain id -------------------------------------------------------------------------------------------


def test_chain_id_is_configured_and_checked(
    chain: Chain, server: str, relay_db: RelayDb, miner: Miner
) -> None:
    """Today the relay signed for whatever chain id the RPC reported."""
    base = [
        VERINFER,
        "relay",
        "run",
        "--rpc",
        chain.url,
        "--contract",
        chain.contract.address,
        "--enclave",
        server,
    ]
    env = {"VERINFER_KEY": "0x" + "11" * 32, "PATH": "/usr/bin:/bin"}
    wrong = subprocess.run(  # noqa: PLW1510 - the exit status is the point
        [*base, "--db", relay_db.url, "--chain-id", "1"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and b"chain id 31337" in wrong.stderr
    missing = subprocess.run(  # noqa: PLW1510 - the exit status is the point
        [*base, "--db", relay_db.url], env=env, capture_output=True, timeout=60
    )
    assert missing.returncode == 2 and b"--chain-id" in missing.stderr
    db = relay_db
    begin = start_arg(chain)
    request_id = request(chain, "iris-mlp", iris_input())
    with relay_process(chain, [server], db, extra=begin):  # with --chain-id 31337
        wait_for(lambda: statuses(db).get(request_id) == "fulfilled", what="fulfilment")
    sent = chain.w3.eth.get_transaction(fulfilments(chain, request_id)[0]["transactionHash"])
    assert int(sent["chainId"]) == CHAIN_ID


def test_an_rpc_endpoint_that_switches_chains_mid_run_is_refused(
    chain: Chain, server: str, relay_db: RelayDb, miner: Miner
) -> None:
    """Checked only at start, a relay whose endpoint was re-pointed to another chain went on reading that
    chain's blocks as if they were ours (its checkpoints all looked like a reorg). Now every step first
    compares the node's chain id, and nothing is read or sent while it differs."""
    from bench.rpc_proxy import RpcProxy
    from relay.chain import bind, connect
    from relay.errors import ChainIdMismatch
    from relay.runner import Relay
    from relay.state import RelayState
    from verinfer.processes import running_anvil

    main_port = int(chain.url.rsplit(":", 1)[1])
    with running_anvil("--chain-id", "4242") as other_url:
        proxy = RpcProxy("127.0.0.1", main_port).start()
        try:
            w3 = connect(proxy.url)
            relay = Relay(
                w3,
                bind(w3, "InferenceVerifier", chain.contract.address),
                chain.relay.account,
                [server],
                RelayState(relay_db.url),
                chain_id=CHAIN_ID,
                confirmations=1,
                start_block=chain.w3.eth.block_number,
                chain_recheck_s=0.0,
            )
            relay.step()
            scanned = relay.state.scanned_block(-1)
            proxy.go_down()
            proxy.upstream = ("127.0.0.1", int(other_url.rsplit(":", 1)[1]))
            proxy.come_up()
            request_id = request(chain, "iris-mlp", iris_input())
            for _ in range(3):
                with pytest.raises(ChainIdMismatch, match="4242"):
                    relay.step()
            assert relay.state.scanned_block(-1) == scanned and relay.state.request(request_id) is None
            proxy.go_down()
            proxy.upstream = ("127.0.0.1", main_port)
            proxy.come_up()
            wait_for(after(relay.step, lambda: chain_status(chain, request_id) == 2), what="fulfilment")
            relay.state.close()
        finally:
            proxy.close()
