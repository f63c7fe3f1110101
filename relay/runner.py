"""The relay loop: watch InferenceRequested, serve requests with an enclave, submit `fulfill`, anchor batches.

Relays are trusted for liveness only: the contract checks every fulfilment's receipt, so a relay can delay
an answer but never forge one. The loop therefore optimises for "nothing lost, nothing wasted":
- it reads events `confirmations` deep and keeps (block, hash) checkpoints of what it scanned; after a reorg
  it walks back to the newest checkpoint still canonical and re-checks everything recorded after it;
- before serving it compares the chain's inputHash with the stored input (a reorg can re-create a request
  id with another input) and applies the fee policy (relay.policy); skipped requests say why;
- every transaction goes through relay.txmanager (durable before broadcast, fee bumping under a cap, a
  "still needed?" check before any gas is spent);
- the receipt it asks an enclave for binds the fee to this relay (protocol.onchain.fulfilment_id);
- a sealed request (requestSealedInference) goes only to the enclave it is sealed to, whose POST
  /infer/sealed opens it: the relay handles ciphertext alone and never sees the input or a sealed output;
- an unreachable enclave, RPC node or database server means retry with backoff, never a crash;
- many workers may share one PostgreSQL database (relay.workers): each claims requests under a lease before
  serving them, sends nothing for a request another worker holds, watches (and re-broadcasts, byte for byte)
  the transaction a dead worker left for a request it takes over, and serves the request itself only once
  that transaction is definitively dead; scanning, reorgs and batch anchoring run on the leader only.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, cast

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import Web3Exception

from protocol import merkle
from protocol.hashing import keccak256
from protocol.manifest import TEXT_GENERATION
from protocol.onchain import fulfilment_id
from protocol.receipts import ReceiptError, SignedReceipt, recover_signer
from protocol.tensors import decode_tensors, encode_tensors, tensors_from_json

from .enclave_health import OPEN, CircuitBreaker, LiveSigners
from .errors import (
    ChainError,
    EnclaveUnavailable,
    GasPriceTooHigh,
    LostClaim,
    PermanentFailure,
    ReceiptsEvicted,
    RelayError,
)
from .http_client import Limits, OutboundError, request
from .llm_client import DEFAULT_LLM_DEADLINE_S, complete
from .metrics import RelayMetrics
from .policy import FeePolicy
from .state import (
    LIVE_TX,
    BatchStatus,
    RelayState,
    RequestEvent,
    RequestRow,
    RequestStatus,
    TxRow,
    TxStatus,
)
from .txmanager import TxManager, check_chain_id
from .workers import DEFAULT_LEASE_S, Heartbeat, Leadership

log = logging.getLogger("verinfer.relay")
SCAN_CHUNK = 2000
# How far before a request's recorded block its events are looked for (a reorg may have moved it earlier).
LOOKBACK = 1024
DEFAULT_HTTP_MAX_BYTES = 16 * 1024 * 1024  # a /receipts/batch answer of 4096 receipts is about 2.5 MiB
MAX_REVERTS = 3  # a request whose fulfilment reverted this often is given up (each revert costs gas)
ZERO_ADDRESS = "0x" + "00" * 20
FULFIL, ANCHOR = "fulfil", "anchor"
# A request that does not pay at the current gas price is priced again after this long (seconds).
RETRY_UNPROFITABLE_S = 10.0
CLAIM_BATCH = 4  # pending requests claimed at a time (a worker serves them, then claims more)
SERVE_PER_STEP = 32  # at most this many pending requests served in one step
CHECK_PER_STEP = 256  # submitted requests checked (and their leases kept) in one step
LIVE, MINED, DEAD = "live", "mined", "dead"
__all__ = ["EnclaveClient", "EnclaveUnavailable", "PermanentFailure", "Relay", "RequestStatus"]


class ChainStatus:
    """InferenceVerifier's Status enum."""

    NONE, PENDING, FULFILLED, CANCELLED = 0, 1, 2, 3


def hex32(value: bytes) -> str:
    return "0x" + bytes(value).hex()


@dataclass
class EnclaveClient:
    """One enclave's HTTP API. Every call is bounded by relay.http_client (total deadline, size cap)."""

    url: str
    batch_token: str | None = field(default=None, repr=False)
    models: dict[str, str] = field(default_factory=dict)  # model hash (0x hex) -> name
    tasks: dict[str, str] = field(default_factory=dict)  # model hash (0x hex) -> task ("text-generation")
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)  # skipped while it keeps failing
    max_bytes: int = DEFAULT_HTTP_MAX_BYTES
    signer: str | None = None  # the enclave's signing address, as last learnt
    signer_checked: float = 0.0

    def _limits(self, deadline_s: float) -> Limits:
        return Limits(deadline_s=deadline_s, max_bytes=self.max_bytes)

    def model_name(self, model_hash: str, timeout: float) -> str | None:
        """`timeout` (here and below) is the total deadline of the call, seconds."""
        if not self.models:
            response = request("GET", f"{self.url}/models", limits=self._limits(timeout))
            served = response.raise_for_status().json()["models"]
            self.models = {m["modelHash"]: m["name"] for m in served}
            self.tasks = {m["modelHash"]: str(m.get("task", "")) for m in served}
        return self.models.get(model_hash)

    def signing_address(self, timeout: float) -> str:
        """The enclave's current key (GET /attestation names it): a restarted enclave has a new one."""
        response = request("GET", f"{self.url}/attestation", limits=self._limits(timeout))
        address = Web3.to_checksum_address(response.raise_for_status().json()["enclave"])
        self.signer, self.signer_checked = address, time.monotonic()
        return address

    def infer_sealed(
        self, model: str, request_id: str, sealed: Sealing, data: bytes, timeout: float
    ) -> dict[str, Any]:
        """POST /infer/sealed: the enclave opens `data` (sealed to it), runs the model and answers the
        output to post (sealed to the requester's key, if any) with its receipt."""
        body = {
            "model": model,
            "sealed_input": "0x" + data.hex(),
            "request_id": request_id,
            "output_key": None if sealed.output_key is None else hex32(sealed.output_key),
        }
        return self._post_inference("/infer/sealed", body, timeout)

    def _post_inference(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """PermanentFailure when the enclave refuses the input (4xx): no other enclave would take it."""
        response = request("POST", f"{self.url}{path}", json=body, limits=self._limits(timeout))
        if 400 <= response.status < 500:
            raise PermanentFailure(f"enclave refused the input: {response.text[:200]}")
        result: dict[str, Any] = response.raise_for_status().json()
        return result

    def infer(self, model: str, request_id: str, data: bytes, timeout: float) -> dict[str, Any]:
        try:
            tensors = decode_tensors(data)
        except ValueError as exc:
            raise PermanentFailure(f"input is not a canonical tensor encoding: {exc}") from exc
        body = {
            "model": model,
            "request_id": request_id,
            "inputs": [{"name": n, "shape": list(a.shape), "data": a.ravel().tolist()} for n, a in tensors],
        }
        return self._post_inference("/infer", body, timeout)

    def receipt_batch(self, start: int, limit: int, timeout: float) -> dict[str, Any]:
        """POST /receipts/batch, with the relay's bearer token when it has one; ReceiptsEvicted on a 410."""
        headers = {"Authorization": f"Bearer {self.batch_token}"} if self.batch_token else None
        response = request(
            "POST",
            f"{self.url}/receipts/batch",
            json={"from": start, "max": limit},
            headers=headers,
            limits=self._limits(timeout),
        )
        if response.status == 410:  # "receipts before N are no longer kept"
            found = re.search(r"before (\d+)", str(response.json().get("message", "")))
            if found:
                raise ReceiptsEvicted(f"{self.url}: {response.text[:200]}", int(found.group(1)))
        batch: dict[str, Any] = response.raise_for_status().json()
        return batch


@dataclass(frozen=True, slots=True)
class Sealing:
    """What the chain says of a sealed request: the enclave it is sealed to, the requester's output key."""

    enclave: str  # checksum address
    output_key: bytes | None  # None: the output is posted in clear

    @classmethod
    def of(cls, on_chain: Any) -> Sealing | None:
        """From getRequest's Request: None for a clear request."""
        if str(on_chain.sealedTo).lower() == ZERO_ADDRESS:
            return None
        key = bytes(on_chain.outputKey)
        return cls(Web3.to_checksum_address(on_chain.sealedTo), key if any(key) else None)


def output_encoding(outputs: list[dict[str, Any]]) -> bytes:
    return encode_tensors(tensors_from_json(outputs, "output"))


def hex_bytes(value: Any, name: str) -> bytes:
    """0x-prefixed hex from an enclave's JSON answer; ValueError otherwise."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"{name} is not 0x-prefixed hex")
    return bytes.fromhex(value[2:])


class Relay:
    def __init__(
        self,
        w3: Web3,
        contract: Contract,
        account: LocalAccount,
        enclaves: list[str],
        state: RelayState,
        *,
        chain_id: int,
        policy: FeePolicy | None = None,
        confirmations: int = 2,
        start_block: int = 0,
        http_timeout: float = 10.0,
        http_max_bytes: int = DEFAULT_HTTP_MAX_BYTES,
        anchor_min: int = 0,
        anchor_max: int = 512,
        batch_token: str | None = None,
        signer_recheck_s: float = 5.0,
        chain_recheck_s: float = 60.0,
        llm_timeout: float = DEFAULT_LLM_DEADLINE_S,
        lease_s: float = DEFAULT_LEASE_S,
        metrics: RelayMetrics | None = None,
    ) -> None:
        """`http_timeout` is the total deadline of each call to an enclave and `http_max_bytes` the largest
        answer read; `batch_token` is sent as `Authorization: Bearer` on /receipts/batch (enclaves started
        with --batch-token-sha256 serve batches only to its holder). `signer_recheck_s`: how often an idle
        enclave is asked for its key again (a restart behind the same URL brings a new one);
        `chain_recheck_s`: how often the RPC node's chain id is compared with `chain_id` again (nothing is
        read or sent while they differ); `llm_timeout`: the total deadline of a text completion; `lease_s`:
        how long a claim on a request lasts without renewal (relay.workers)."""
        self.w3 = w3
        self.contract = contract
        self.account = account
        self.state = state
        self.policy = policy or FeePolicy()
        self.confirmations = max(0, confirmations)
        self.worker = str(account.address)
        state.txs.adopt(self.worker)  # rows of a database from before transactions had a sender
        self.lease_s = lease_s
        self.metrics = metrics or RelayMetrics(self.worker)
        self.live_signers = LiveSigners(contract)
        self.leadership = Leadership(state, self.worker)
        self.heartbeat = Heartbeat(state, self.worker, lease_s)
        self._fleet: set[str] = set()
        self._was_leader = False
        self.txm = TxManager(
            w3,
            account,
            state.txs.for_sender(self.worker),
            self.policy,
            chain_id=chain_id,
            confirmations=self.confirmations,
            needed=self._needed,
        )
        self.enclaves = [
            EnclaveClient(url.rstrip("/"), batch_token=batch_token, max_bytes=http_max_bytes)
            for url in enclaves
        ]
        self.start_block = start_block
        self.http_timeout = http_timeout
        self.llm_timeout = llm_timeout
        self.anchor_min = anchor_min
        self.anchor_max = anchor_max
        self.signer_recheck_s = signer_recheck_s
        self.chain_id = chain_id
        self.chain_recheck_s = chain_recheck_s
        self._chain_checked = -math.inf
        self._next_enclave = 0
        self._batch_problems: dict[str, str] = {}  # enclave URL -> the kind of problem last logged
        if reopened := state.reopen_skipped_if_policy_changed(repr(self.policy)):
            log.info("fee policy changed: %d skipped request(s) will be judged again", reopened)

    @property
    def address(self) -> str:
        return str(self.account.address)

    # --- chain reads ------------------------------------------------------------------------------------

    def _request(self, request_id: str) -> Any:
        """The chain's Request struct (named fields)."""
        return self.contract.functions.getRequest(bytes.fromhex(request_id[2:])).call()

    def _now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def _anchored(self, root: str) -> bool:
        batch = self.contract.functions.batches(bytes.fromhex(root[2:])).call()
        fields = dict(zip(_output_names(self.contract, "batches"), batch, strict=True))
        return str(fields["enclave"]).lower() != ZERO_ADDRESS

    def _needed(self, tx: TxRow) -> bool:
        """Is `tx`'s work still wanted? fulfil: the request is Pending, unexpired, with the input the
        receipt was made for; anchor: nobody has anchored the root yet."""
        if tx.kind == FULFIL:
            on_chain = self._request(tx.ref)
            return bool(
                on_chain.status == ChainStatus.PENDING
                and on_chain.deadline >= self._now()
                and hex32(on_chain.inputHash) == tx.guard
            )
        if tx.kind == ANCHOR:
            return not self._anchored(tx.ref)
        return True

    def _fulfiller(self, row: RequestRow) -> str | None:
        events = self.contract.events.InferenceFulfilled().get_logs(
            from_block=max(0, row.block_number - LOOKBACK),
            argument_filters={"requestId": bytes.fromhex(row.id[2:])},
        )
        return str(events[-1]["args"]["fulfiller"]) if events else None

    def _in_fleet(self, address: str) -> bool:
        """This worker, or another that has sent transactions recorded in the shared database."""
        if address == self.address:
            return True
        if address not in self._fleet:
            self._fleet = self.state.txs.senders()
        return address in self._fleet

    # --- request status, as this worker may set it ---------------------------------------------------------

    def _set(self, request_id: str, status: RequestStatus, detail: str | None = None) -> None:
        """Set a request's status unless another worker has taken it over meanwhile."""
        if not self.state.set_status_owned(request_id, self.worker, status, detail):
            log.info("request %s: not marked %s: another worker holds it now", request_id, status)

    def _retry(self, request_id: str, attempts: int, delay: float, detail: str) -> None:
        self.state.retry_later_owned(request_id, self.worker, attempts, delay, detail)

    def _claim(self, *, pending: bool, submitted: bool, limit: int) -> list[RequestRow]:
        claims = self.state.claim(
            self.worker,
            now=time.time(),
            lease_s=self.lease_s,
            limit=limit,
            pending=pending,
            submitted=submitted,
        )
        for claim in claims:
            if claim.fresh:
                self.metrics.claims.inc()
            if claim.taken_over:
                self.metrics.takeovers.inc()
                log.info(
                    "request %s (%s): taken over from worker %s, whose lease ran out",
                    claim.row.id,
                    claim.row.status,
                    claim.previous,
                )
        return [claim.row for claim in claims]

    # --- another worker's transactions --------------------------------------------------------------------

    def _mine(self, tx: TxRow) -> bool:
        return tx.sender is None or tx.sender == self.address

    def _watch(self, tx: TxRow) -> tuple[str, Any]:
        """Another worker's live transaction, for a request (or batch) this worker has taken over: LIVE (it
        may still be mined: re-broadcast as is, since anyone may send signed bytes), MINED (with its
        receipt) or DEAD (never signed, or its nonce used by another transaction of that account: it can
        never be mined). Only then may this worker send a transaction of its own for the same work."""
        assert tx.sender is not None
        if tx.status == TxStatus.QUEUED and self.state.txs.drop_if(
            tx.id, (TxStatus.QUEUED,), f"never signed; taken over by {self.worker}"
        ):
            self.metrics.foreign_dead.inc()
            log.info(
                "tx %d of worker %s (%s %s) was never signed: dropped", tx.id, tx.sender, tx.kind, tx.ref
            )
            return DEAD, None
        chain_nonce = int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(tx.sender), "latest"))
        attempts = self.state.txs.attempts(tx.id)  # read after the nonce: any attempt mined before is here
        for attempt in attempts:
            receipt = self.txm._receipt(attempt.tx_hash)
            if receipt is not None:
                return MINED, receipt
        if tx.nonce < chain_nonce:
            self.state.txs.drop_if(
                tx.id, LIVE_TX, f"its nonce was used by another transaction (seen by {self.worker})"
            )
            self.metrics.foreign_dead.inc()
            log.info(
                "tx %d of worker %s (%s %s) is dead: nonce %d used by another transaction",
                tx.id,
                tx.sender,
                tx.kind,
                tx.ref,
                tx.nonce,
            )
            return DEAD, None
        if attempts:
            sent = self.txm._broadcast(attempts[0].raw)
            if sent.outcome == "ok":
                self.metrics.foreign_rebroadcasts.inc()
        return LIVE, None

    # --- scanning -----------------------------------------------------------------------------------------

    def scan(self) -> None:
        head = int(self.w3.eth.block_number)
        if self._rewound_after_reorg(head):
            return
        safe = head - self.confirmations
        scanned = self.state.scanned_block(self.start_block - 1)
        while scanned < safe:
            end = min(safe, scanned + SCAN_CHUNK)
            end_hash = hex32(self.w3.eth.get_block(end)["hash"])
            events = self.contract.events.InferenceRequested().get_logs(from_block=scanned + 1, to_block=end)
            if hex32(self.w3.eth.get_block(end)["hash"]) != end_hash:
                return  # a reorg while reading: the events may be from either side; read again next step
            changed = []
            with self.state.transaction() as db:
                for event in events:
                    if self.state.upsert_request(db, _request_event(event)) == "changed":
                        changed.append(hex32(event["args"]["requestId"]))
                self.state.record_scan(db, end, end_hash)
            if events:
                log.info("saw %d request(s) in blocks %d-%d", len(events), scanned + 1, end)
            for request_id in changed:
                log.warning("request %s was re-created with another input: serving the new one", request_id)
            scanned = end

    def _canonical(self, block: int, block_hash: str, head: int) -> bool:
        return block <= head and hex32(self.w3.eth.get_block(block)["hash"]) == block_hash

    def _rewound_after_reorg(self, head: int) -> bool:
        """If the newest checkpoint left the chain, rewind to the newest one still on it (binary search:
        checkpoints are canonical up to the fork, none after) and re-open what was recorded after it."""
        checkpoints = self.state.checkpoints()
        if not checkpoints or self._canonical(*checkpoints[-1], head):
            return False
        low, high = 0, len(checkpoints) - 1  # invariant: checkpoints[high] is not canonical
        ancestor = self.start_block - 1
        while low < high:
            middle = (low + high) // 2
            if self._canonical(*checkpoints[middle], head):
                ancestor = checkpoints[middle][0]
                low = middle + 1
            else:
                high = middle
        with self.state.transaction() as db:
            since = self.state.rewind(db, ancestor)
            reopened_txs = self.txm.reopen_after_reorg(db, ancestor)
            fulfils = [t.ref for t in reopened_txs if t.kind == FULFIL]
            requests = self.state.reopen_after(db, ancestor, since, fulfils)
            self.state.reopen_batches(db, [t.ref for t in reopened_txs if t.kind == ANCHOR])
        log.warning(
            "reorg: block %d left the chain; rescanning from %d (%d requests, %d transactions re-checked)",
            checkpoints[-1][0],
            ancestor + 1,
            requests,
            len(reopened_txs),
        )
        return True

    # --- requests with a transaction ----------------------------------------------------------------------

    def check_submitted(self) -> None:
        """The submitted requests this worker holds (claimed: its own, and those of workers whose lease ran
        out): closed once their transaction is confirmed, put back in the queue if it came to nothing."""
        for row in self._claim(pending=False, submitted=True, limit=CHECK_PER_STEP):
            tx = self.state.txs.latest_for(FULFIL, row.id)
            if tx is not None and tx.status in LIVE_TX:
                if self._mine(tx):
                    continue  # this worker's transaction manager carries it on
                verdict, receipt = self._watch(tx)
                if verdict == LIVE:
                    continue
                if verdict == MINED:
                    if receipt["status"] == 1:
                        if int(self.w3.eth.block_number) - int(receipt["blockNumber"]) >= self.confirmations:
                            mined_in = "0x" + bytes(receipt["transactionHash"]).hex()
                            detail = f"fulfilled by worker {tx.sender} in {mined_in}"
                            self._set(row.id, RequestStatus.FULFILLED, detail)
                            log.info("request %s %s", row.id, detail)
                        continue
                    self._settle_from_chain(row, self._request(row.id).status, reverted=True)
                    continue
                self._settle_from_chain(row, self._request(row.id).status)
                continue
            if tx is not None and tx.status == TxStatus.CONFIRMED:
                self._set(row.id, RequestStatus.FULFILLED, tx.confirmed_hash)
                log.info("request %s fulfilled in %s", row.id, tx.confirmed_hash)
                continue
            self._settle_from_chain(
                row, self._request(row.id).status, reverted=tx is not None and tx.status == TxStatus.FAILED
            )

    def _settle_from_chain(self, row: RequestRow, status: int, *, reverted: bool = False) -> None:
        """Close `row` from what the chain says, or put it back in the queue if it is still to be served."""
        if status == ChainStatus.FULFILLED:
            fulfiller = self._fulfiller(row)
            if fulfiller == self.address:
                self._set(row.id, RequestStatus.FULFILLED, "fulfilled by this relay")
            elif fulfiller is not None and self._in_fleet(fulfiller):
                self._set(row.id, RequestStatus.FULFILLED, f"fulfilled by worker {fulfiller}")
            else:
                self._set(row.id, RequestStatus.SETTLED, "fulfilled by another relay")
        elif status == ChainStatus.CANCELLED:
            self._set(row.id, RequestStatus.SETTLED, "cancelled")
        elif status == ChainStatus.NONE:
            self._set(row.id, RequestStatus.DROPPED, "not on chain (reorged away)")
        elif reverted and row.attempts + 1 >= MAX_REVERTS:
            self._set(row.id, RequestStatus.FAILED, f"fulfilment reverted {MAX_REVERTS} times")
        else:
            attempts = row.attempts + 1 if reverted else row.attempts
            self._retry(row.id, attempts, 1.0 if reverted else 0.0, "resubmitting")

    # --- serving requests ---------------------------------------------------------------------------------

    def serve_due(self) -> None:
        """Claim due requests a few at a time (so that idle workers get the rest) and serve them."""
        served = 0
        while served < SERVE_PER_STEP:
            rows = self._claim(pending=True, submitted=False, limit=CLAIM_BATCH)
            if not rows:
                return
            for row in rows:
                served += 1
                self._serve_claimed(row)

    def _serve_claimed(self, row: RequestRow) -> None:
        tx = self.state.txs.latest_for(FULFIL, row.id)
        if tx is not None and tx.status in (*LIVE_TX, TxStatus.CONFIRMED) and tx.guard == row.input_hash:
            # recorded just before a crash (this worker's transaction manager carries it on), or another
            # worker's that check_submitted watches until it is mined or dead
            who = "" if self._mine(tx) else f" (worker {tx.sender}'s)"
            self._set(row.id, RequestStatus.SUBMITTED, f"transaction on record{who}")
            return
        try:
            self._serve_if_wanted(row)
        except LostClaim as exc:
            self.metrics.lost_claims.inc()
            log.info("request %s: %s; sending nothing", row.id, exc)
        except PermanentFailure as exc:
            log.warning("request %s cannot be served: %s", row.id, exc)
            self._set(row.id, RequestStatus.FAILED, str(exc))
        except (EnclaveUnavailable, GasPriceTooHigh, ChainError) as exc:
            delay = min(30.0, 0.5 * 2 ** min(row.attempts, 6))
            log.info("request %s: %s; retrying in %.1f s", row.id, exc, delay)
            self._retry(row.id, row.attempts + 1, delay, str(exc))

    def _serve_if_wanted(self, row: RequestRow) -> None:
        on_chain = self._request(row.id)
        if on_chain.status != ChainStatus.PENDING:
            self._settle_from_chain(row, on_chain.status)
            return
        if on_chain.deadline < self._now():
            self._set(row.id, RequestStatus.EXPIRED, "deadline passed")
            return
        if hex32(on_chain.inputHash) != row.input_hash:
            refreshed = self._refresh(row, hex32(on_chain.inputHash))
            if refreshed is None:
                self._retry(row.id, row.attempts, 1.0, "the chain's input is not in a scanned event yet")
                return
            row = refreshed
        fee, callback_gas = int(on_chain.fee), int(on_chain.callbackGasLimit)
        reason = self.policy.refuse(fee=fee, callback_gas=callback_gas)
        if reason is not None:
            log.info("request %s skipped: %s", row.id, reason)
            self._set(row.id, RequestStatus.SKIPPED, reason)
            return
        # Paying for itself at the minimum price is not enough: it must pay at today's price, or wait.
        price = self.txm.network_price()
        if wait := self.policy.unprofitable_at(price, fee=fee, callback_gas=callback_gas):
            self._retry(row.id, row.attempts + 1, RETRY_UNPROFITABLE_S, wait)
            return
        self._serve(row, Sealing.of(on_chain))

    def _refresh(self, row: RequestRow, input_hash: str) -> RequestRow | None:
        """Re-read a request whose stored input is not the chain's (a reorg re-created its id)."""
        events = self.contract.events.InferenceRequested().get_logs(
            from_block=max(0, self.start_block, row.block_number - LOOKBACK),
            argument_filters={"requestId": bytes.fromhex(row.id[2:])},
        )
        matching = [e for e in events if hex32(e["args"]["inputHash"]) == input_hash]
        if not matching:
            return None
        with self.state.transaction() as db:
            self.state.upsert_request(db, _request_event(matching[-1]))
        log.warning("request %s: the chain has another input than the one stored; re-read it", row.id)
        return self.state.request(row.id)

    def _enclaves_in_turn(self) -> list[EnclaveClient]:
        """The enclaves in round-robin order, without those whose circuit breaker is open."""
        ordered = self.enclaves[self._next_enclave :] + self.enclaves[: self._next_enclave]
        self._next_enclave = (self._next_enclave + 1) % len(self.enclaves)
        return [e for e in ordered if e.breaker.state != OPEN]

    def _sealed_to(
        self, enclaves: list[EnclaveClient], address: str, problems: list[str]
    ) -> list[EnclaveClient]:
        """Those of `enclaves` that sign as `address` (the enclave a request is sealed to: no other could
        open it), asking again those whose key was learnt more than signer_recheck_s ago."""
        matching = []
        for enclave in enclaves:
            signer = enclave.signer
            stale = time.monotonic() - enclave.signer_checked > self.signer_recheck_s
            if signer is None or (signer != address and stale):
                try:
                    signer = enclave.signing_address(self.http_timeout)
                except (OutboundError, KeyError, TypeError, ValueError) as exc:
                    problems.append(f"{enclave.url}: {exc}")
                    continue
            if signer == address:
                matching.append(enclave)
        if enclaves and not matching and not problems:
            problems.append(f"the request is sealed to {address}, which none of this relay's enclaves is")
        return matching

    def _serve(self, row: RequestRow, sealing: Sealing | None = None) -> None:
        problems: list[str] = []
        ceiling = self.policy.price_ceiling(fee=row.fee, callback_gas=row.callback_gas)
        enclaves = self._enclaves_in_turn()
        if sealing is not None:
            enclaves = self._sealed_to(enclaves, sealing.enclave, problems)
        for enclave in enclaves:
            if not enclave.breaker.allow():
                continue
            try:
                signed, output = self._infer(enclave, row, sealing)
            except PermanentFailure:
                enclave.breaker.success()  # it answered: the input is at fault, not the enclave
                raise
            except (OutboundError, KeyError, TypeError, ValueError, ReceiptError, EnclaveUnavailable) as exc:
                enclave.breaker.failure()
                enclave.models.clear()
                problems.append(f"{enclave.url}: {exc}")
                continue
            enclave.breaker.success()
            signer = Web3.to_checksum_address(signed.enclave)
            if (why := self.live_signers.why_not(signer)) is not None:
                # Behind one address, any enclave may answer: only a registered, live one of an approved
                # image is worth gas (the contract would revert with this very reason).
                problems.append(f"{enclave.url}: its receipt's signer {signer} is not live on chain ({why})")
                continue
            call = self.contract.functions.fulfill(
                bytes.fromhex(row.id[2:]),
                output,
                signed.receipt.timestamp_ms,
                Web3.to_checksum_address(signed.enclave),
                signed.signature,
            )
            try:
                tx = self.txm.submit(
                    FULFIL,
                    row.id,
                    row.input_hash,
                    call,
                    max_price=ceiling,
                    check=lambda db: self.state.hold(
                        db, row.id, self.worker, now=time.time(), lease_s=self.lease_s
                    ),
                )
            except ChainError as exc:
                if exc.error in ("RequestNotPending", "RequestExpired"):
                    self._settle_from_chain(row, self._request(row.id).status)
                    return
                if isinstance(exc, GasPriceTooHigh):
                    raise
                problems.append(f"{enclave.url}: {exc}")
                continue
            self.metrics.submitted.inc()
            self._set(row.id, RequestStatus.SUBMITTED, f"tx {tx.id}")
            log.info(
                "request %s: submitted tx %d (nonce %d) with a receipt from %s",
                row.id,
                tx.id,
                tx.nonce,
                enclave.url,
            )
            return
        raise EnclaveUnavailable("; ".join(problems) or "no enclave available")

    def _infer(
        self, enclave: EnclaveClient, row: RequestRow, sealing: Sealing | None = None
    ) -> tuple[SignedReceipt, bytes]:
        """A receipt binding this relay as the fulfiller, checked before any gas is spent on it."""
        model = enclave.model_name(row.model_hash, self.http_timeout)
        if model is None:
            raise EnclaveUnavailable(f"does not serve model {row.model_hash}")
        bound_id = fulfilment_id(bytes.fromhex(row.id[2:]), self.address)
        if sealing is not None:
            return self._infer_sealed(enclave, row, model, bound_id, sealing)
        if enclave.tasks.get(row.model_hash) == TEXT_GENERATION:  # the input is the HTTP body (llm_client)
            signed, output = complete(
                enclave.url,
                row.input,
                model=model,
                model_hash=bytes.fromhex(row.model_hash[2:]),
                request_id=bound_id,
                limits=enclave._limits(self.llm_timeout),
            )
            return self._checked(signed, output, bound_id)
        try:
            body = enclave.infer(model, hex32(bound_id), row.input, self.http_timeout)
        except OutboundError as exc:
            raise EnclaveUnavailable(str(exc)) from exc
        signed = SignedReceipt.from_json(body["receipt"])
        output = output_encoding(body["outputs"])
        if signed.receipt.input_hash != keccak256(row.input):
            raise PermanentFailure("the input is not the model's canonical encoding (order, names or dtypes)")
        return self._checked(signed, output, bound_id)

    def _infer_sealed(
        self, enclave: EnclaveClient, row: RequestRow, model: str, bound_id: bytes, sealing: Sealing
    ) -> tuple[SignedReceipt, bytes]:
        """The sealed route: the relay passes ciphertext in and out, and checks the receipt as for a clear
        request (over keccak256 of the sealed input and of the output posted), signed by the enclave the
        request is sealed to, with an output sealed exactly when the requester gave a key."""
        try:
            body = enclave.infer_sealed(model, hex32(bound_id), sealing, row.input, self.http_timeout)
        except OutboundError as exc:
            raise EnclaveUnavailable(str(exc)) from exc
        signed = SignedReceipt.from_json(body["receipt"])
        output = hex_bytes(body["output"], "output")
        if body.get("sealed_output") is not (sealing.output_key is not None):
            raise EnclaveUnavailable("the enclave did not seal the output as the request asks")
        if signed.receipt.input_hash != keccak256(row.input):
            raise EnclaveUnavailable("the enclave's receipt is not over the sealed input on chain")
        if Web3.to_checksum_address(signed.enclave) != sealing.enclave:
            raise EnclaveUnavailable(f"the receipt is not signed by {sealing.enclave}, the request's enclave")
        return self._checked(signed, output, bound_id)

    @staticmethod
    def _checked(signed: SignedReceipt, output: bytes, bound_id: bytes) -> tuple[SignedReceipt, bytes]:
        """`signed` and `output` if the receipt is for this relay's fulfilment id, over `output`, and
        signed by the enclave it names."""
        if (
            signed.receipt.request_id != bound_id
            or signed.receipt.output_hash != keccak256(output)
            or recover_signer(signed.receipt, signed.signature) != signed.enclave
        ):
            raise EnclaveUnavailable(
                "the enclave's answer does not match its receipt or this relay's fulfilment id"
            )
        return signed, output

    # --- batch anchoring ----------------------------------------------------------------------------------

    def check_batches(self) -> None:
        """Follow each recorded batch until the root is on chain; re-plan one whose transaction was lost."""
        for batch in self.state.submitted_batches():
            tx = self.state.txs.latest_for(ANCHOR, batch.root)
            if tx is not None and tx.status in LIVE_TX:
                if self._mine(tx):
                    continue
                verdict, receipt = self._watch(tx)  # sent by a leader before this one
                if verdict == LIVE or (verdict == MINED and receipt["status"] == 1):
                    if verdict == MINED and self._anchored(batch.root):
                        self.state.set_batch_status(
                            batch.root, BatchStatus.ANCHORED, f"by worker {tx.sender}"
                        )
                    continue
            if tx is not None and tx.status == TxStatus.CONFIRMED:
                self.state.set_batch_status(batch.root, BatchStatus.ANCHORED, tx.confirmed_hash)
                continue
            if self._anchored(batch.root):
                self.state.set_batch_status(batch.root, BatchStatus.ANCHORED, "anchored on chain")
                continue
            try:
                self._submit_anchor(batch.root, batch.count, batch.signature)
            except GasPriceTooHigh as exc:
                log.info("batch %s not re-sent yet: %s", batch.root, exc)
            except ChainError as exc:
                if exc.error is None:
                    log.info("batch %s not re-sent yet: %s", batch.root, exc)
                else:  # the contract refuses it for good (enclave removed or expired, ...)
                    log.warning("batch %s cannot be anchored: %s", batch.root, exc)
                    self.state.set_batch_status(batch.root, BatchStatus.SKIPPED, str(exc))

    def _submit_anchor(self, root: str, count: int, signature: str) -> TxRow:
        call = self.contract.functions.anchorBatch(
            bytes.fromhex(root[2:]), count, bytes.fromhex(signature[2:])
        )
        return self.txm.submit(ANCHOR, root, root, call)

    def _signer(self, enclave: EnclaveClient) -> str:
        if enclave.signer is None:
            return enclave.signing_address(self.http_timeout)
        return enclave.signer

    def anchor_batches(self) -> None:
        if self.anchor_min <= 0:
            return
        for enclave in self.enclaves:
            try:
                self._anchor_from(enclave)
            except (OutboundError, KeyError, TypeError, ValueError, ReceiptError) as exc:
                self._batch_problem(enclave, exc)

    def _anchor_from(self, enclave: EnclaveClient) -> None:
        signer = self._signer(enclave)
        cursor = self.state.cursor(signer)
        try:
            batch = enclave.receipt_batch(cursor, self.anchor_max, self.http_timeout)
        except ReceiptsEvicted as exc:
            if exc.first > cursor:
                with self.state.transaction() as db:
                    self.state.set_cursor(db, signer, exc.first)
                log.warning(
                    "enclave %s no longer keeps receipts %d-%d: anchoring from %d",
                    enclave.url,
                    cursor,
                    exc.first - 1,
                    exc.first,
                )
            else:  # the 410 is about another key than the one we know: learn the current one
                enclave.signing_address(self.http_timeout)
            return
        if batch.get("enclave") and Web3.to_checksum_address(batch["enclave"]) != signer:
            enclave.signer = Web3.to_checksum_address(batch["enclave"])  # restarted with a new key
            log.warning("enclave %s now signs as %s (was %s)", enclave.url, enclave.signer, signer)
            return
        if batch["count"] < self.anchor_min:
            self._batch_problems.pop(enclave.url, None)
            if time.monotonic() - enclave.signer_checked > self.signer_recheck_s:
                enclave.signing_address(self.http_timeout)  # an idle log may be a restarted enclave's
            return
        receipts = [SignedReceipt.from_json(r) for r in batch["receipts"]]
        root = batch["root"]
        self._batch_problems.pop(enclave.url, None)
        if merkle.root([r.receipt.digest() for r in receipts]) != bytes.fromhex(root[2:]):
            log.warning("enclave %s sent a batch whose root does not match its receipts", enclave.url)
            return
        existing = self.state.txs.latest_for(ANCHOR, root)
        send = existing is None or existing.status not in (*LIVE_TX, TxStatus.CONFIRMED)
        status = BatchStatus.SUBMITTED
        if send and self._anchored(root):
            send, status = False, BatchStatus.SKIPPED
            log.info(
                "batch %s (%d receipts from %s) is already anchored: skipping it",
                root,
                batch["count"],
                signer,
            )
        # The batch and the cursor past it are recorded before the transaction exists: a crash in between
        # leaves a recorded batch without a transaction, which check_batches sends. (Recorded after, a crash
        # would leave the cursor behind, and the next, larger batch would anchor the same receipts again.)
        # The cursor must still be where it was read: a leader before this one may have moved it since.
        with self.state.transaction() as db:
            if self.state.cursor(signer) != cursor:
                log.info("enclave %s: the batch cursor moved meanwhile; reading again", enclave.url)
                return
            self.state.record_batch(
                db,
                root=root,
                enclave=signer,
                first=int(batch["from"]),
                count=int(batch["count"]),
                signature=batch["signature"],
                receipts=json.dumps(batch["receipts"]),
                status=status,
            )
            self.state.set_cursor(db, signer, int(batch["next"]))
        if not send:
            return
        try:
            self._submit_anchor(root, batch["count"], batch["signature"])
        except ChainError as exc:
            if exc.error == "AlreadyAnchored":
                self.state.set_batch_status(root, BatchStatus.SKIPPED, "anchored by someone else")
            else:  # check_batches tries again, or gives the batch up if the contract refuses it for good
                self._batch_problem(enclave, exc)
            return
        log.info("anchoring %d receipts from %s under root %s", batch["count"], signer, root)

    def _batch_problem(self, enclave: EnclaveClient, exc: Exception) -> None:
        """Log why batches cannot be had from `enclave` once per change (the loop polls every second)."""
        refused = isinstance(exc, OutboundError) and exc.status in (401, 403)
        problem = (
            f"enclave {enclave.url} refuses receipt batches ({exc}): check --batch-token-env"
            if refused
            else f"no receipt batch anchored from {enclave.url}: {exc}"
        )
        kind = ":".join(
            (type(exc).__name__, *(str(getattr(exc, name, "")) for name in ("kind", "status", "error")))
        )
        if self._batch_problems.get(enclave.url) != kind:
            self._batch_problems[enclave.url] = kind
            log.warning("%s", problem)

    # --- the loop -----------------------------------------------------------------------------------------

    def _check_chain(self) -> None:
        """ChainIdMismatch if the RPC node now reports another chain (a re-pointed or lying endpoint): its
        events and state are not ours, so the step stops before reading or sending anything."""
        now = time.monotonic()
        if now - self._chain_checked >= self.chain_recheck_s:
            check_chain_id(self.w3, self.chain_id)
            self._chain_checked = now

    def _lead(self) -> bool:
        leader = self.leadership.check()
        self.metrics.leader.set(1 if leader else 0)
        if leader and not self._was_leader:
            self.metrics.leaderships.inc()
        self._was_leader = leader
        return leader

    def _measure_lag(self) -> None:
        head = int(self.w3.eth.block_number)
        self.metrics.lag.set(max(0, head - self.state.scanned_block(self.start_block - 1)))

    def step(self) -> None:
        """One round: the leader scans (and handles reorgs) and anchors batches; every worker moves its own
        transactions along and serves and checks the requests it claims."""
        self._check_chain()
        leader = self._lead()
        if leader:
            self.scan()
        self.txm.tick()
        self.check_submitted()
        if leader:
            self.check_batches()
        self.serve_due()
        if leader and self.leadership.check():  # still: anchoring must not run on two workers at once
            self.anchor_batches()
        self._measure_lag()

    def run(self, poll_interval: float = 1.0, stop_after: float | None = None) -> None:
        self.heartbeat.start()
        try:
            self._run(poll_interval, stop_after)
        finally:
            self.heartbeat.stop()
            self.leadership.close()
            self.metrics.leader.set(0)

    def _run(self, poll_interval: float, stop_after: float | None) -> None:
        started = time.monotonic()
        failures = 0
        while stop_after is None or time.monotonic() - started < stop_after:
            try:
                self.step()
                failures = 0
                time.sleep(poll_interval)
            except (Web3Exception, OutboundError, ConnectionError, OSError, ValueError, RelayError) as exc:
                failures += 1
                delay = min(30.0, poll_interval * 2 ** min(failures, 5))
                log.warning(
                    "RPC, network or database problem (%s: %s); retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                time.sleep(delay)
            except Exception:  # a relay degrades rather than exits; the traceback says what to fix
                failures += 1
                log.exception("unexpected error in the relay loop; retrying")
                time.sleep(min(30.0, poll_interval * 2 ** min(failures, 5)))


def _output_names(contract: Contract, function: str) -> list[str]:
    abi = cast(list[dict[str, Any]], contract.abi)
    item = next(i for i in abi if i.get("type") == "function" and i.get("name") == function)
    return [str(o["name"]) for o in item.get("outputs", [])]


def _request_event(event: Any) -> RequestEvent:
    args = event["args"]
    return RequestEvent(
        id=hex32(args["requestId"]),
        block_number=int(event["blockNumber"]),
        model_hash=hex32(args["modelHash"]),
        input=bytes(args["input"]),
        input_hash=hex32(args["inputHash"]),
        deadline=int(args["deadline"]),
        callback_gas=int(args["callbackGasLimit"]),
        fee=int(args["fee"]),
    )
