"""Every transaction the relay sends, as one persistent state machine (relay.state.TxStatus).

- Durable before broadcast: a transaction takes its nonce in the relay's database (`queued`), each signed
  attempt is written (`signed`) before it is sent (`broadcast`); after a crash the recorded bytes are sent
  again.
- One nonce allocator: the lowest nonce at or above the chain's that no live transaction of ours holds, so
  a nonce freed by a dropped transaction is used again; a gap below a live transaction is filled with a
  self-transfer, or everything after it would wait forever.
- Pricing: legacy `gasPrice` (one number to bump, accepted by every EVM node). A transaction not mined after
  `stuck_after_s` is re-signed with the same nonce at max(network price, previous price + bump_percent),
  never above `max_gas_price`.
- Before any gas is spent (signing, re-sending, bumping), `needed(tx)` asks the chain whether the work is
  still wanted; when it is not, an outstanding transaction's nonce is taken over by a cheap self-transfer
  (`replaced`) and one that never left the relay is `dropped`.
- Confirmed only with `confirmations` blocks on top of it; `reopen_after_reorg` sends transactions mined
  in reorged blocks back to `broadcast`.
- The configured chain id is the one signed with; the RPC must report the same one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams, Wei

from .chain import custom_error
from .errors import ChainError, ChainIdMismatch, GasPriceTooHigh
from .policy import FeePolicy
from .state import LIVE_TX, Attempt, Transaction, TxRow, TxStatus, TxStore

log = logging.getLogger("verinfer.relay.tx")
SELF_TRANSFER_GAS = 21_000
CANCEL = "cancel"

# What nodes answer to a raw transaction, by meaning (geth, anvil, erigon, nethermind, besu wording).
_KNOWN = ("already known", "already imported", "known transaction", "already exists", "alreadyknown")
_NONCE_USED = ("nonce too low", "nonce has already been used", "oldnonce", "noncetoolow", "nonce is too low")
_UNDERPRICED = ("underpriced", "fee too low", "less than block base fee", "feetoolow", "gas price too low")
_NO_FUNDS = ("insufficient funds", "insufficientfunds")


def check_chain_id(w3: Web3, chain_id: int) -> None:
    reported = int(w3.eth.chain_id)
    if reported != chain_id:
        raise ChainIdMismatch(
            f"the RPC node reports chain id {reported}, the relay is configured for {chain_id}"
        )


@dataclass(frozen=True, slots=True)
class Sent:
    """How a node took a raw transaction: ok (in its pool), nonce_used, underpriced, funds or error."""

    outcome: str
    message: str = ""


class TxManager:
    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        store: TxStore,
        policy: FeePolicy,
        *,
        chain_id: int,
        confirmations: int,
        needed: Callable[[TxRow], bool],
    ) -> None:
        """`needed(tx)` says whether `tx`'s work is still wanted on chain (cancel transactions always are)."""
        self.w3 = w3
        self.account = account
        self.store = store
        self.policy = policy
        self.chain_id = chain_id
        self.confirmations = max(0, confirmations)
        self.needed = needed

    @property
    def address(self) -> str:
        return str(self.account.address)

    # --- pricing and nonces -----------------------------------------------------------------------------

    def network_price(self) -> int:
        return int(self.w3.eth.gas_price)

    def ceiling(self, max_price: int | None = None) -> int:
        """The highest price a transaction may be signed at: the policy's cap, or its own lower one (a
        fulfil's break-even price, so that re-pricing never turns a paid request into a loss)."""
        cap = self.policy.max_gas_price
        return cap if max_price is None else min(cap, max_price)

    def price(self, max_price: int | None = None) -> int:
        """The price a transaction is signed with now; GasPriceTooHigh above its ceiling."""
        price, ceiling = self.network_price(), self.ceiling(max_price)
        if price > ceiling:
            raise GasPriceTooHigh(f"gas price {price} wei is above the cap {ceiling} wei")
        return price

    def allocate_nonce(self) -> int:
        """The lowest nonce at or above the chain's not held by a live transaction of ours; above any
        transaction of this account pending in the node that the relay does not know about."""
        held = self.store.held_nonces()
        floor = int(self.w3.eth.get_transaction_count(self.account.address, "latest"))
        pending = int(self.w3.eth.get_transaction_count(self.account.address, "pending"))
        if pending > max(held, default=floor - 1) + 1:
            floor = pending  # someone else sends from this key: stay clear of their nonces
        nonce = floor
        while nonce in held:
            nonce += 1
        return nonce

    # --- submitting -------------------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        ref: str,
        guard: str,
        call: ContractFunction,
        *,
        max_price: int | None = None,
        check: Callable[[Transaction], bool] | None = None,
    ) -> TxRow:
        """Estimate (which surfaces reverts as ChainError with the custom error), take a nonce, sign, record,
        then broadcast. The caller has checked that the work is needed. `max_price`: this transaction's own
        gas price ceiling below the policy's cap, kept for every re-pricing. `check(db)` runs in the
        transaction that records it (a worker's claim on the request: LostClaim if it has lost it)."""
        try:
            estimate = int(call.estimate_gas(TxParams({"from": self.account.address})))
        except (ContractCustomError, ContractLogicError) as exc:
            raise ChainError(f"would revert: {custom_error(exc) or exc}", custom_error(exc)) from exc
        price = self.price(max_price)
        tx = call.build_transaction(
            TxParams(
                {
                    "from": self.account.address,
                    "gas": int(estimate * 1.25) + 20_000,
                    "gasPrice": Wei(price),
                    "nonce": 0,  # type: ignore[typeddict-item]
                    "chainId": self.chain_id,
                }
            )
        )
        row = self.store.create(
            kind=kind,
            ref=ref,
            guard=guard,
            nonce=self.allocate_nonce(),
            to_address=str(tx["to"]),
            data=bytes(Web3.to_bytes(hexstr=HexStr(str(tx["data"])))),
            value=int(tx.get("value", 0)),
            gas=int(tx["gas"]),
            max_price=max_price,
            check=check,
        )
        attempt = self._sign(row, price)
        self._send(row, attempt)
        return row

    def _sign(self, row: TxRow, price: int) -> Attempt:
        """Sign `row` at `price` and persist the attempt (before anyone may broadcast it)."""
        fields: dict[str, Any] = {
            "to": Web3.to_checksum_address(row.to_address),
            "data": row.data,
            "value": row.value,
            "gas": row.gas,
            "gasPrice": price,
            "nonce": row.nonce,
            "chainId": self.chain_id,
        }
        signed = self.account.sign_transaction(fields)
        tx_hash = "0x" + bytes(signed.hash).hex()
        self.store.add_attempt(row.id, tx_hash, bytes(signed.raw_transaction), price)
        return Attempt(tx_hash, price, bytes(signed.raw_transaction), time.time(), None)

    def _broadcast(self, raw: bytes) -> Sent:
        """Send raw bytes; the node's refusal is classified, never raised (RPC outages still raise)."""
        try:
            self.w3.eth.send_raw_transaction(raw)
        except (Web3RPCError, ValueError) as exc:
            message = str(exc)
            text = message.lower()
            squashed = text.replace(" ", "").replace("_", "")
            for outcome, needles in (
                ("ok", _KNOWN),
                ("nonce_used", _NONCE_USED),
                ("underpriced", _UNDERPRICED),
                ("funds", _NO_FUNDS),
            ):
                if any(n in text or n.replace(" ", "") in squashed for n in needles):
                    return Sent(outcome, message)
            return Sent("error", message)
        return Sent("ok")

    def _send(self, row: TxRow, attempt: Attempt) -> Sent:
        if row.status == TxStatus.QUEUED and self.store.status(row.id) not in LIVE_TX:
            # Signed after another worker, which took the request over, found it unsigned and dropped it.
            log.info(
                "tx %d (%s %s) not sent: dropped by the worker that took it over", row.id, row.kind, row.ref
            )
            return Sent("error", "dropped by another worker")
        sent = self._broadcast(attempt.raw)
        if sent.outcome == "ok":
            self.store.mark_broadcast(row.id, attempt.tx_hash)
        elif sent.outcome == "nonce_used":
            self._nonce_taken(row)
        else:
            log.warning(
                "tx %d (%s %s) nonce %d not accepted: %s", row.id, row.kind, row.ref, row.nonce, sent.message
            )
            self.store.note(row.id, f"{sent.outcome}: {sent.message[:200]}")
        return sent

    # --- advancing live transactions --------------------------------------------------------------------

    def tick(self) -> None:
        """Move every live transaction along; a problem with one is logged and never stalls the others."""
        head = int(self.w3.eth.block_number)
        chain_nonce = int(self.w3.eth.get_transaction_count(self.account.address, "latest"))
        for row in self.store.live():
            try:
                self._advance(row, head, chain_nonce)
            except (Web3RPCError, ChainError, ValueError) as exc:
                log.warning("tx %d (%s %s): %s", row.id, row.kind, row.ref, exc)
                self.store.note(row.id, str(exc)[:200])
        self._fill_gaps()

    def _receipt(self, tx_hash: str) -> Any:
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None

    def _in_pool(self, tx_hash: str) -> bool:
        try:
            return self.w3.eth.get_transaction(tx_hash) is not None  # type: ignore[arg-type]
        except TransactionNotFound:
            return False

    def _advance(self, row: TxRow, head: int, chain_nonce: int) -> None:
        attempts = self.store.attempts(row.id)
        for attempt in attempts:
            receipt = self._receipt(attempt.tx_hash)
            if receipt is not None:
                if head - int(receipt["blockNumber"]) >= self.confirmations:
                    status = TxStatus.CONFIRMED if receipt["status"] == 1 else TxStatus.FAILED
                    self.store.set_status(
                        row.id,
                        status,
                        None if status == TxStatus.CONFIRMED else "reverted",
                        confirmed_block=int(receipt["blockNumber"]),
                        confirmed_hash=attempt.tx_hash,
                    )
                    log.info("tx %d (%s %s) %s in %s", row.id, row.kind, row.ref, status, attempt.tx_hash)
                return  # mined: wait for depth (spending more gas on it would be waste)
        if row.nonce < chain_nonce:
            self._nonce_taken(row)
            return
        if not attempts:  # queued: nothing signed yet
            if not self._still_needed(row, outstanding=False):
                return
            attempt = self._sign(row, self.price(row.max_price))
            self._send(row, attempt)
            return
        latest = attempts[0]
        outstanding = any(self._in_pool(a.tx_hash) for a in attempts)
        if not self._still_needed(row, outstanding=outstanding, last=latest):
            return
        if outstanding and row.status == TxStatus.SIGNED:  # sent just before a crash
            self.store.mark_broadcast(row.id, latest.tx_hash)
        if not outstanding:
            sent = self._broadcast(latest.raw)  # the node lost it (restart, eviction, a reorg): same bytes
            if sent.outcome == "ok":  # the stuck clock keeps running from the first broadcast
                self.store.mark_broadcast(row.id, latest.tx_hash)
                if not self._stuck(latest):
                    return
                outstanding = True
            elif sent.outcome == "nonce_used":
                self._nonce_taken(row)
                return
            elif sent.outcome != "underpriced":
                self.store.note(row.id, f"{sent.outcome}: {sent.message[:200]}")
                return
        if outstanding and not self._stuck(latest):
            return
        self._bump(row, latest)

    def _stuck(self, attempt: Attempt) -> bool:
        return time.time() - (attempt.broadcast_at or attempt.signed_at) >= self.policy.stuck_after_s

    def _bump(self, row: TxRow, latest: Attempt) -> None:
        """Replace a stuck (or underpriced) transaction: same nonce and call, a higher price under the cap."""
        floor = self.policy.bumped(latest.gas_price)
        price, ceiling = max(floor, self.network_price()), self.ceiling(row.max_price)
        if price > ceiling:
            if floor > ceiling:
                self.store.note(
                    row.id, f"stuck at {latest.gas_price} wei: a bump would pass the cap {ceiling}"
                )
                return
            price = ceiling
        attempt = self._sign(row, price)
        log.info(
            "tx %d (%s %s) nonce %d re-priced %d -> %d wei",
            row.id,
            row.kind,
            row.ref,
            row.nonce,
            latest.gas_price,
            price,
        )
        self._send(row, attempt)

    def _still_needed(self, row: TxRow, *, outstanding: bool, last: Attempt | None = None) -> bool:
        """True when `row` should still get gas; otherwise closes it (cheaply) and returns False."""
        if row.kind == CANCEL or self.needed(row):
            return True
        if any(self._receipt(a.tx_hash) is not None for a in self.store.attempts(row.id)):
            return False  # mined since we looked (maybe it is what made it unneeded): confirm it next tick
        if outstanding and last is not None:
            self._cancel(row, last)
        else:
            self.store.set_status(row.id, TxStatus.DROPPED, "no longer needed")
            log.info("tx %d (%s %s) dropped: no longer needed", row.id, row.kind, row.ref)
        return False

    def _cancel(self, row: TxRow, last: Attempt) -> None:
        """Take `row`'s nonce over with a 21,000-gas self-transfer priced to replace it."""
        price = max(self.policy.bumped(last.gas_price), self.network_price())
        if price > self.policy.max_gas_price:
            self.store.note(row.id, "no longer needed, but a replacement would pass the gas price cap")
            return
        cancel = self.store.create(
            kind=CANCEL,
            ref=str(row.id),
            guard="",
            nonce=row.nonce,
            to_address=self.address,
            data=b"",
            value=0,
            gas=SELF_TRANSFER_GAS,
        )
        self.store.set_status(
            row.id, TxStatus.REPLACED, f"no longer needed: nonce taken over by tx {cancel.id}"
        )
        log.info(
            "tx %d (%s %s) no longer needed: replaced by self-transfer tx %d",
            row.id,
            row.kind,
            row.ref,
            cancel.id,
        )
        self._send(cancel, self._sign(cancel, price))

    def _nonce_taken(self, row: TxRow) -> None:
        """Our nonce was used by a transaction that is not one of `row`'s attempts."""
        self.store.set_status(row.id, TxStatus.DROPPED, "its nonce was used by another transaction")
        log.info(
            "tx %d (%s %s) dropped: nonce %d used by another transaction",
            row.id,
            row.kind,
            row.ref,
            row.nonce,
        )

    def _fill_gaps(self) -> None:
        """A freed nonce below a live one would hold the later transactions back forever: fill it."""
        held = self.store.held_nonces()
        if not held:
            return
        chain_nonce = int(self.w3.eth.get_transaction_count(self.account.address, "latest"))
        for nonce in range(chain_nonce, max(held)):
            if nonce not in held:
                filler = self.store.create(
                    kind=CANCEL,
                    ref="gap",
                    guard="",
                    nonce=nonce,
                    to_address=self.address,
                    data=b"",
                    value=0,
                    gas=SELF_TRANSFER_GAS,
                )
                try:
                    price = self.price()
                except GasPriceTooHigh as exc:
                    self.store.note(filler.id, str(exc))
                    continue
                self._send(filler, self._sign(filler, price))

    # --- reorgs -----------------------------------------------------------------------------------------

    def reopen_after_reorg(self, db: Transaction, ancestor: int) -> list[TxRow]:
        """Transactions mined after `ancestor` may be gone with their blocks: re-check them."""
        return self.store.reopen_mined_after(db, ancestor)
