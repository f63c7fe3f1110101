"""The relay loop: watch InferenceRequested, serve requests with an enclave, submit `fulfill`, anchor batches.

Relays are trusted for liveness only: the contract checks every fulfilment's receipt, so a relay can delay
an answer but never forge one. The loop therefore optimises for "nothing lost, nothing wasted":
- it scans only blocks `confirmations` deep, and re-scans from the last confirmed block after a deeper reorg;
- a fulfil transaction is signed, written to SQLite, then broadcast; after a crash the same bytes are
  re-broadcast, so a request is never fulfilled twice by one relay (and the contract refuses a second one);
- an unreachable enclave or RPC node means retry with exponential backoff, never a crash;
- the gas price cap is respected by waiting.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from web3 import Web3
from web3.contract import Contract
from web3.exceptions import Web3Exception

from protocol import merkle
from protocol.hashing import keccak256
from protocol.receipts import ReceiptError, SignedReceipt, recover_signer
from protocol.tensors import decode_tensors, encode_tensors, tensors_from_json

from .chain import ChainError, GasPriceTooHigh, SignedTx, TxSender
from .http_client import Limits, OutboundError, request
from .state import DROPPED, EXPIRED, FAILED, FULFILLED, SETTLED, RelayState, RequestRow

log = logging.getLogger("verinfer.relay")
STATUS_NONE, STATUS_PENDING, STATUS_FULFILLED, STATUS_CANCELLED = 0, 1, 2, 3
REORG_REWIND = 64
SCAN_CHUNK = 2000
# A submitted transaction without a receipt after this long is re-checked and re-broadcast.
RESUBMIT_AFTER_S = 15.0


class EnclaveUnavailable(Exception):
    """The enclave could not be reached or answered with an error: try again later, or another one."""


class PermanentFailure(Exception):
    """The request can never be served (for example its input does not encode the model's inputs)."""


DEFAULT_HTTP_MAX_BYTES = 16 * 1024 * 1024  # a /receipts/batch answer of 4096 receipts is about 2.5 MiB


@dataclass
class EnclaveClient:
    """One enclave's HTTP API. Every call is bounded by relay.http_client (total deadline, size cap)."""

    url: str
    batch_token: str | None = field(default=None, repr=False)
    models: dict[str, str] = field(default_factory=dict)  # model hash (0x hex) -> name
    down_until: float = 0.0
    max_bytes: int = DEFAULT_HTTP_MAX_BYTES

    def _limits(self, deadline_s: float) -> Limits:
        return Limits(deadline_s=deadline_s, max_bytes=self.max_bytes)

    def model_name(self, model_hash: str, timeout: float) -> str | None:
        """`timeout` (here and below) is the total deadline of the call, seconds."""
        if not self.models:
            response = request("GET", f"{self.url}/models", limits=self._limits(timeout))
            self.models = {m["modelHash"]: m["name"] for m in response.raise_for_status().json()["models"]}
        return self.models.get(model_hash)

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
        response = request("POST", f"{self.url}/infer", json=body, limits=self._limits(timeout))
        if 400 <= response.status < 500:
            raise PermanentFailure(f"enclave refused the input: {response.text[:200]}")
        result: dict[str, Any] = response.raise_for_status().json()
        return result

    def receipt_batch(self, start: int, limit: int, timeout: float) -> dict[str, Any]:
        """POST /receipts/batch, with the relay's bearer token when it has one."""
        headers = {"Authorization": f"Bearer {self.batch_token}"} if self.batch_token else None
        response = request(
            "POST",
            f"{self.url}/receipts/batch",
            json={"from": start, "max": limit},
            headers=headers,
            limits=self._limits(timeout),
        )
        batch: dict[str, Any] = response.raise_for_status().json()
        return batch


def output_encoding(outputs: list[dict[str, Any]]) -> bytes:
    return encode_tensors(tensors_from_json(outputs, "output"))


class Relay:
    def __init__(
        self,
        w3: Web3,
        contract: Contract,
        sender: TxSender,
        enclaves: list[str],
        state: RelayState,
        *,
        confirmations: int = 2,
        start_block: int = 0,
        http_timeout: float = 10.0,
        http_max_bytes: int = DEFAULT_HTTP_MAX_BYTES,
        anchor_min: int = 0,
        anchor_max: int = 512,
        batch_token: str | None = None,
    ) -> None:
        """`http_timeout` is the total deadline of each call to an enclave and `http_max_bytes` the largest
        answer read; `batch_token` is sent as `Authorization: Bearer` on /receipts/batch (enclaves started
        with --batch-token-sha256 serve batches only to its holder)."""
        self.w3 = w3
        self.contract = contract
        self.sender = sender
        self.enclaves = [
            EnclaveClient(url.rstrip("/"), batch_token=batch_token, max_bytes=http_max_bytes)
            for url in enclaves
        ]
        self.state = state
        self.confirmations = confirmations
        self.start_block = start_block
        self.http_timeout = http_timeout
        self.anchor_min = anchor_min
        self.anchor_max = anchor_max
        self._next_enclave = 0
        self._registered: dict[str, float] = {}
        self._batch_problems: dict[str, str] = {}  # enclave URL -> the kind of problem last logged

    # --- scanning -----------------------------------------------------------------------------------------

    def scan(self) -> None:
        head = self.w3.eth.block_number
        safe = head - self.confirmations
        scanned = int(self.state.get_meta("scanned_block", str(self.start_block - 1)) or -1)
        scanned_hash = self.state.get_meta("scanned_hash")
        if scanned >= 0 and scanned_hash is not None and scanned <= head:
            canonical = "0x" + bytes(self.w3.eth.get_block(scanned)["hash"]).hex()
            if canonical != scanned_hash:
                rewind_to = max(self.start_block, scanned - REORG_REWIND)
                with self.state.transaction() as db:
                    reopened = self.state.reopen_from(db, rewind_to)
                    self.state.set_meta(db, "scanned_block", str(rewind_to - 1))
                    db.execute("DELETE FROM meta WHERE key = 'scanned_hash'")
                self.sender.forget_nonce()  # our own transactions may have been dropped with the old blocks
                log.warning(
                    "reorg below block %d: rescanning from %d, %d requests re-checked",
                    scanned,
                    rewind_to,
                    reopened,
                )
                return
        while scanned < safe:
            end = min(safe, scanned + SCAN_CHUNK)
            events = self.contract.events.InferenceRequested().get_logs(from_block=scanned + 1, to_block=end)
            end_hash = "0x" + bytes(self.w3.eth.get_block(end)["hash"]).hex()
            with self.state.transaction() as db:
                for event in events:
                    args = event["args"]
                    self.state.add_request(
                        db,
                        "0x" + bytes(args["requestId"]).hex(),
                        block=event["blockNumber"],
                        model_hash="0x" + bytes(args["modelHash"]).hex(),
                        data=bytes(args["input"]),
                        deadline=int(args["deadline"]),
                    )
                self.state.set_meta(db, "scanned_block", str(end))
                self.state.set_meta(db, "scanned_hash", end_hash)
            if events:
                log.info("saw %d request(s) in blocks %d-%d", len(events), scanned + 1, end)
            scanned = end

    # --- submitted transactions ---------------------------------------------------------------------------

    def _chain_status(self, request_id: str) -> tuple[int, int]:
        request = self.contract.functions.requests(bytes.fromhex(request_id[2:])).call()
        return int(request[3]), int(request[1])  # status, deadline

    def check_submitted(self) -> None:
        head = self.w3.eth.block_number
        for row in self.state.submitted():
            assert row.tx_hash is not None and row.tx_raw is not None and row.tx_nonce is not None
            receipt = self.sender.receipt(row.tx_hash)
            if receipt is not None:
                if head - receipt["blockNumber"] < self.confirmations:
                    continue
                if receipt["status"] == 1:
                    self.state.set_status(row.id, FULFILLED, row.tx_hash)
                    log.info("request %s fulfilled in %s", row.id, row.tx_hash)
                    continue
            elif time.time() - (row.submitted_at or 0) < RESUBMIT_AFTER_S and not self._nonce_used(
                row.tx_nonce
            ):
                self.sender.broadcast(SignedTx(row.tx_hash, row.tx_raw, row.tx_nonce))  # idempotent
                continue
            # Reverted, or lost (reorged away, or its nonce taken): the chain decides what is left to do.
            status, _ = self._chain_status(row.id)
            if status == STATUS_PENDING and receipt is None and not self._nonce_used(row.tx_nonce):
                self.sender.broadcast(SignedTx(row.tx_hash, row.tx_raw, row.tx_nonce))
                continue
            self._settle_from_chain(row, status)

    def _nonce_used(self, nonce: int) -> bool:
        return int(self.w3.eth.get_transaction_count(self.sender.account.address, "latest")) > nonce

    def _settle_from_chain(self, row: RequestRow, status: int) -> bool:
        """Close `row` if the chain says it is no longer ours to serve; True when it was closed."""
        if status == STATUS_FULFILLED:
            self.state.set_status(row.id, SETTLED, "fulfilled on chain")
        elif status == STATUS_CANCELLED:
            self.state.set_status(row.id, SETTLED, "cancelled")
        elif status == STATUS_NONE:
            self.state.set_status(row.id, DROPPED, "not on chain (reorged away)")
        else:
            self.state.retry_later(row.id, row.attempts + 1, 0.0, "resubmitting")
            return False
        return True

    # --- serving requests ---------------------------------------------------------------------------------

    def serve_due(self) -> None:
        for row in self.state.due(time.time()):
            status, deadline = self._chain_status(row.id)
            if status != STATUS_PENDING:
                self._settle_from_chain(row, status)
                continue
            if deadline < int(self.w3.eth.get_block("latest")["timestamp"]):
                self.state.set_status(row.id, EXPIRED, "deadline passed")
                continue
            try:
                self._serve(row)
            except PermanentFailure as exc:
                log.warning("request %s cannot be served: %s", row.id, exc)
                self.state.set_status(row.id, FAILED, str(exc))
            except (EnclaveUnavailable, GasPriceTooHigh, ChainError) as exc:
                delay = min(30.0, 0.5 * 2 ** min(row.attempts, 6))
                log.info("request %s: %s; retrying in %.1f s", row.id, exc, delay)
                self.state.retry_later(row.id, row.attempts + 1, delay, str(exc))

    def _enclaves_in_turn(self) -> list[EnclaveClient]:
        now = time.monotonic()
        ordered = self.enclaves[self._next_enclave :] + self.enclaves[: self._next_enclave]
        self._next_enclave = (self._next_enclave + 1) % len(self.enclaves)
        return [e for e in ordered if e.down_until <= now]

    def _serve(self, row: RequestRow) -> None:
        problems = []
        for enclave in self._enclaves_in_turn():
            try:
                signed, output = self._infer(enclave, row)
            except (OutboundError, KeyError, TypeError, ValueError, ReceiptError, EnclaveUnavailable) as exc:
                enclave.down_until = time.monotonic() + 1.0
                enclave.models.clear()
                problems.append(f"{enclave.url}: {exc}")
                continue
            call = self.contract.functions.fulfill(
                bytes.fromhex(row.id[2:]),
                output,
                signed.receipt.timestamp_ms,
                Web3.to_checksum_address(signed.enclave),
                signed.signature,
            )
            try:
                tx = self.sender.sign(call)
            except ChainError as exc:
                if exc.error == "RequestNotPending":
                    self.state.set_status(row.id, SETTLED, "fulfilled by another relay")
                    return
                problems.append(f"{enclave.url}: {exc}")
                continue
            self.state.record_signed(row.id, tx.tx_hash, tx.raw, tx.nonce)  # durable before it is sent
            self.sender.broadcast(tx)
            log.info("request %s: submitted %s with a receipt from %s", row.id, tx.tx_hash, enclave.url)
            return
        raise EnclaveUnavailable("; ".join(problems) or "no enclave available")

    def _infer(self, enclave: EnclaveClient, row: RequestRow) -> tuple[SignedReceipt, bytes]:
        model = enclave.model_name(row.model_hash, self.http_timeout)
        if model is None:
            raise EnclaveUnavailable(f"does not serve model {row.model_hash}")
        try:
            body = enclave.infer(model, row.id, row.input, self.http_timeout)
        except OutboundError as exc:
            raise EnclaveUnavailable(str(exc)) from exc
        signed = SignedReceipt.from_json(body["receipt"])
        output = output_encoding(body["outputs"])
        if signed.receipt.input_hash != keccak256(row.input):
            raise PermanentFailure("the input is not the model's canonical encoding (order, names or dtypes)")
        if (
            signed.receipt.output_hash != keccak256(output)
            or recover_signer(signed.receipt, signed.signature) != signed.enclave
        ):
            raise EnclaveUnavailable("the enclave's answer does not match its receipt")
        return signed, output

    # --- batch anchoring ----------------------------------------------------------------------------------

    def anchor_batches(self) -> None:
        if self.anchor_min <= 0:
            return
        for enclave in self.enclaves:
            cursor_key = f"batch_cursor:{enclave.url}"
            cursor = int(self.state.get_meta(cursor_key, "0") or 0)
            try:
                batch = enclave.receipt_batch(cursor, self.anchor_max, self.http_timeout)
                if batch["count"] < self.anchor_min:
                    self._batch_problems.pop(enclave.url, None)
                    continue
                receipts = [SignedReceipt.from_json(r) for r in batch["receipts"]]
                root = bytes.fromhex(batch["root"][2:])
            except (OutboundError, KeyError, TypeError, ValueError, ReceiptError) as exc:
                self._batch_problem(enclave, exc)
                continue
            self._batch_problems.pop(enclave.url, None)
            if merkle.root([r.receipt.digest() for r in receipts]) != root:
                log.warning("enclave %s sent a batch whose root does not match its receipts", enclave.url)
                continue
            try:
                tx = self.sender.sign(
                    self.contract.functions.anchorBatch(
                        root, batch["count"], bytes.fromhex(batch["signature"][2:])
                    )
                )
            except ChainError as exc:
                log.info("batch from %s not anchored: %s", enclave.url, exc)
                continue
            with self.state.transaction() as db:
                db.execute(
                    "INSERT OR IGNORE INTO batches (root, enclave, first, count, signature, receipts, "
                    "status, tx_hash, tx_raw, updated) VALUES (?, ?, ?, ?, ?, ?, 'submitted', ?, ?, ?)",
                    (
                        batch["root"],
                        enclave.url,
                        batch["from"],
                        batch["count"],
                        batch["signature"],
                        json.dumps(batch["receipts"]),
                        tx.tx_hash,
                        tx.raw,
                        time.time(),
                    ),
                )
                self.state.set_meta(db, cursor_key, str(batch["next"]))
            self.sender.broadcast(tx)
            log.info(
                "anchoring %d receipts from %s under root %s", batch["count"], enclave.url, batch["root"]
            )

    def _batch_problem(self, enclave: EnclaveClient, exc: Exception) -> None:
        """Log why batches cannot be had from `enclave` once per change (the loop polls every second)."""
        refused = isinstance(exc, OutboundError) and exc.status in (401, 403)
        problem = (
            f"enclave {enclave.url} refuses receipt batches ({exc}): check --batch-token-env"
            if refused
            else f"no receipt batch from {enclave.url}: {exc}"
        )
        kind = f"{type(exc).__name__}:{getattr(exc, 'kind', '')}:{getattr(exc, 'status', '')}"
        if self._batch_problems.get(enclave.url) != kind:
            self._batch_problems[enclave.url] = kind
            log.warning("%s", problem)

    # --- the loop -----------------------------------------------------------------------------------------

    def step(self) -> None:
        self.scan()
        self.check_submitted()
        self.serve_due()
        self.anchor_batches()

    def run(self, poll_interval: float = 1.0, stop_after: float | None = None) -> None:
        started = time.monotonic()
        failures = 0
        while stop_after is None or time.monotonic() - started < stop_after:
            try:
                self.step()
                failures = 0
                time.sleep(poll_interval)
            except (Web3Exception, OutboundError, ConnectionError, OSError, ValueError) as exc:
                failures += 1
                delay = min(30.0, poll_interval * 2 ** min(failures, 5))
                log.warning(
                    "RPC or network problem (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay
                )
                time.sleep(delay)
            except Exception:  # a relay degrades rather than exits; the traceback says what to fix
                failures += 1
                log.exception("unexpected error in the relay loop; retrying")
                time.sleep(min(30.0, poll_interval * 2 ** min(failures, 5)))
