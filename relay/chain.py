"""Contract artifacts, deployment, and sending transactions with a gas-price cap.

Transactions are signed locally first; the caller can persist the raw bytes before broadcasting, so a
crash between "sent" and "recorded" is recovered by re-broadcasting the very same transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import Nonce, TxParams, Wei

from protocol.hashing import keccak256

from .errors import ChainError, GasPriceTooHigh

__all__ = [
    "ChainError",
    "GasPriceTooHigh",
    "SignedTx",
    "TxSender",
    "artifact",
    "bind",
    "connect",
    "custom_error",
    "deploy",
]
Call = ContractFunction | ContractConstructor
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # package data: ABI + bytecode from contracts/


@cache
def artifact(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ARTIFACTS / f"{name}.json").read_text())
    return data


def connect(rpc_url: str, timeout: float = 10.0) -> Web3:
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))


def bind(w3: Web3, name: str, address: str) -> Contract:
    """The contract at `address`; structs and events decode to named tuples (read fields by name)."""
    return w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=artifact(name)["abi"], decode_tuples=True
    )


@cache
def _error_selectors(name: str) -> dict[bytes, str]:
    return {
        keccak256(f"{item['name']}({','.join(i['type'] for i in item['inputs'])})".encode())[:4]: item["name"]
        for item in artifact(name)["abi"]
        if item["type"] == "error"
    }


def custom_error(exc: Exception, contract_name: str = "InferenceVerifier") -> str | None:
    """The custom error name in a revert, from the contract's ABI (None if it is not one of ours)."""
    data = getattr(exc, "data", None) or (exc.args[1] if len(exc.args) > 1 else None)
    if isinstance(data, dict):
        data = data.get("data")
    if not isinstance(data, str) or not data.startswith("0x") or len(data) < 10:
        return None
    return _error_selectors(contract_name).get(bytes.fromhex(data[2:10]))


@dataclass(frozen=True, slots=True)
class SignedTx:
    tx_hash: str
    raw: bytes
    nonce: int


class TxSender:
    """Builds, signs and sends one-off transactions from one account (deployment, registration, tests);
    refuses gas prices above `gas_price_cap`. The relay loop sends through relay.txmanager instead."""

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        *,
        gas_price_cap: int | None = None,
        chain_id: int | None = None,
    ) -> None:
        """`chain_id` is signed into every transaction (default: the RPC node's)."""
        self.w3 = w3
        self.account = account
        self.gas_price_cap = gas_price_cap
        self.chain_id = chain_id
        self._next_nonce: int | None = None

    def next_nonce(self) -> int:
        chain_nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
        self._next_nonce = max(chain_nonce, self._next_nonce or 0)
        return self._next_nonce

    def forget_nonce(self) -> None:
        """Trust the chain's nonce again (after a reorg dropped transactions this sender had counted)."""
        self._next_nonce = None

    def gas_price(self) -> int:
        price = int(self.w3.eth.gas_price)
        if self.gas_price_cap is not None and price > self.gas_price_cap:
            raise GasPriceTooHigh(f"gas price {price} wei is above the cap {self.gas_price_cap} wei")
        return price

    def sign(self, call: Call, *, value: int = 0, nonce: int | None = None) -> SignedTx:
        """Estimate (which also surfaces reverts as ChainError with the custom error), then sign."""
        try:
            gas = call.estimate_gas(TxParams({"from": self.account.address, "value": Wei(value)}))
        except (ContractCustomError, ContractLogicError) as exc:
            raise ChainError(f"would revert: {custom_error(exc) or exc}", custom_error(exc)) from exc
        nonce = self.next_nonce() if nonce is None else nonce
        tx = call.build_transaction(
            TxParams(
                {
                    "from": self.account.address,
                    "value": Wei(value),
                    "nonce": Nonce(nonce),
                    "gas": int(gas * 1.25) + 20_000,
                    "gasPrice": Wei(self.gas_price()),
                    "chainId": self.chain_id if self.chain_id is not None else self.w3.eth.chain_id,
                }
            )
        )
        signed = self.account.sign_transaction(dict(tx))  # type: ignore[arg-type]
        self._next_nonce = nonce + 1
        return SignedTx("0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction), nonce)

    def broadcast(self, tx: SignedTx) -> None:
        try:
            self.w3.eth.send_raw_transaction(tx.raw)
        except (Web3RPCError, ValueError) as exc:  # already in the pool, or its nonce is settled
            message = str(exc).lower()
            if not any(known in message for known in ("already known", "already imported", "nonce too low")):
                raise

    def receipt(self, tx_hash: str) -> Any:
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None

    def transact(self, call: Call, *, value: int = 0, timeout: float = 30.0) -> Any:
        """Sign, send and wait for one transaction; ChainError if it reverts."""
        tx = self.sign(call, value=value)
        self.broadcast(tx)
        deadline = time.monotonic() + timeout
        while (receipt := self.receipt(tx.tx_hash)) is None:
            if time.monotonic() > deadline:
                raise ChainError(f"transaction {tx.tx_hash} not mined after {timeout} s")
            time.sleep(0.05)
        if receipt["status"] != 1:
            raise ChainError(f"transaction {tx.tx_hash} reverted")
        return receipt


def deploy(sender: TxSender, name: str, *args: Any) -> Contract:
    data = artifact(name)
    factory = sender.w3.eth.contract(abi=data["abi"], bytecode=data["bytecode"])
    receipt = sender.transact(factory.constructor(*args))
    return bind(sender.w3, name, receipt["contractAddress"])
