"""The moving parts of the chaos run: a miner, a requesting user, and relay subprocesses to kill.

- Miner: anvil runs without automine; this thread mines a block every `interval` seconds, can pause (so a
  transaction sits in the pool), and records when each block hash was mined (for latencies).
- User: signs requestInference with fees, keeps a ledger nonce -> transaction, so a request the chain
  dropped is noticed rather than silently forgotten.
- RelayFleet: `verinfer relay run` processes with their own keys and SQLite files; SIGKILL and restart, and
  a supervisor that restarts (and counts) a relay that exits on its own.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.logs import DISCARD
from web3.types import Nonce, TxParams, Wei

from protocol.tensors import encode_tensors
from relay.chain import connect
from verinfer.processes import VERINFER, stop

from .chaos_setup import World

REPO = Path(__file__).resolve().parent.parent
GWEI = 10**9


def rpc(w3: Web3, method: str, *params: object) -> Any:
    reply = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


class Miner:
    """Mines a block every `interval` seconds until stopped; `paused()` holds it (and any mine in flight)."""

    def __init__(self, url: str, interval: float) -> None:
        self.w3 = connect(url)
        self.interval = interval
        self.mined: dict[str, float] = {}  # block hash -> wall-clock time it was mined
        self._lock = threading.RLock()  # the holder of paused() may still mine() by hand
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="miner", daemon=True)

    def start(self) -> Miner:
        rpc(self.w3, "evm_setAutomine", False)
        self._thread.start()
        return self

    def mine(self, base_fee: int | None = None) -> int:
        """Mine one block now (optionally with a forced base fee); returns its number."""
        with self._lock:
            return self._mine(base_fee)

    def _mine(self, base_fee: int | None = None) -> int:
        if base_fee is not None:
            rpc(self.w3, "anvil_setNextBlockBaseFeePerGas", hex(base_fee))
        rpc(self.w3, "evm_mine")
        block = self.w3.eth.get_block("latest")
        self.mined["0x" + bytes(block["hash"]).hex()] = time.time()
        return int(block["number"])

    def record_head(self, depth: int) -> None:
        """Stamp the last `depth` blocks as mined now (after anvil_reorg replaced them)."""
        head = self.w3.eth.block_number
        for number in range(head - depth + 1, head + 1):
            self.mined["0x" + bytes(self.w3.eth.get_block(number)["hash"]).hex()] = time.time()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                try:
                    self._mine()
                except Exception:
                    continue

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            yield

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


MNIST = REPO / "models" / "data" / "mnist-eval.npz"


@dataclass
class Sent:
    nonce: int
    tx_hash: str
    model: str
    sent_at: float


class User:
    """The requester: requestInference with a fee, from one account, priced above the next base fee."""

    def __init__(self, world: World, fee_wei: int, seed: int) -> None:
        self.world = world
        self.w3 = connect(world.anvil_url)
        self.contract = self.w3.eth.contract(address=world.contract.address, abi=world.contract.abi)
        self.account: LocalAccount = world.user
        self.fee_wei = fee_wei
        self.random = random.Random(seed)
        self.ledger: dict[int, Sent] = {}  # nonce -> the latest transaction sent with it
        self.replaced = 0
        self.lock = threading.Lock()
        self._digits = np.load(MNIST)["x"]

    def _input(self) -> tuple[str, bytes]:
        if self.random.random() < 0.5:
            features = np.array([[self.random.uniform(4, 8) for _ in range(4)]], dtype=np.float32)
            return "iris-mlp", encode_tensors([("features", features)])
        index = self.random.randrange(len(self._digits))
        image = (self._digits[index : index + 1, None] / 255.0).astype(np.float32)
        return "mnist-lenet", encode_tensors([("image", image)])

    def _price(self) -> int:
        """Twice the pending block's base fee plus a tip: the user always gets in, spike or not."""
        pending = self.w3.eth.get_block("pending")
        return 2 * int(pending.get("baseFeePerGas", GWEI)) + GWEI

    def sign_request(self, nonce: int) -> tuple[str, bytes, str]:
        model, data = self._input()
        call = self.contract.functions.requestInference(self.world.models[model], data, 0, 24 * 3600)
        tx = call.build_transaction(
            TxParams(
                {
                    "from": self.account.address,
                    "value": Wei(self.fee_wei),
                    "nonce": Nonce(nonce),
                    "gas": 400_000 + 16 * len(data),
                    "gasPrice": Wei(self._price()),
                    "chainId": self.w3.eth.chain_id,
                }
            )
        )
        signed = self.account.sign_transaction(dict(tx))  # type: ignore[arg-type]
        return "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction), model

    def request(self) -> str:
        """Sign and broadcast one request with the next nonce; returns the transaction hash."""
        with self.lock:
            nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
            tx_hash, raw, model = self.sign_request(nonce)
            self.w3.eth.send_raw_transaction(raw)
            self.ledger[nonce] = Sent(nonce, tx_hash, model, time.time())
            return tx_hash

    def resign(self, nonce: int) -> bytes:
        """A different request (new input) with an old nonce, for a reorg to include instead."""
        tx_hash, raw, model = self.sign_request(nonce)
        self.ledger[nonce] = Sent(nonce, tx_hash, model, time.time())
        self.replaced += 1
        return raw

    def request_id(self, tx_hash: str) -> str | None:
        try:
            receipt = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except Exception:
            return None
        events = self.contract.events.InferenceRequested().process_receipt(receipt, errors=DISCARD)
        return "0x" + bytes(events[0]["args"]["requestId"]).hex() if events else None


class Generator:
    """Sends a request every 1/rate seconds while not paused, up to `limit` in all."""

    def __init__(self, user: User, rate: float, limit: int) -> None:
        self.user = user
        self.rate = rate
        self.limit = limit
        self.errors: list[str] = []
        self._go = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generator", daemon=True)

    def start(self) -> Generator:
        self._go.set()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.user.random.expovariate(self.rate)):
            self._go.wait()
            if self._stop.is_set() or len(self.user.ledger) >= self.limit:
                continue
            try:
                self.user.request()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._go.clear()
        with self.user.lock:  # no request half-sent
            pass
        try:
            yield
        finally:
            self._go.set()

    def stop(self) -> None:
        self._stop.set()
        self._go.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


@dataclass
class RelayProcess:
    name: str
    account: LocalAccount
    db: Path
    log: Path
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    unexpected_exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n=== start {self.starts} at {time.time():.3f}\n".encode())
            out.flush()
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1
        with self.log.open("ab") as out:
            out.write(f"=== SIGKILL at {time.time():.3f}\n".encode())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop(self.process)


class RelayFleet:
    """The competing relays, each restarted on the same SQLite file after every kill."""

    def __init__(self, world: World, argv_for: Callable[[int, Path], list[str]]) -> None:
        self.world = world
        self.relays = [
            RelayProcess(
                name=name,
                account=account,
                db=world.workdir / f"relay-{name}.sqlite3",
                log=world.workdir / f"relay-{name}.log",
                argv=[],
                env={**os.environ, "VERINFER_KEY": "0x" + bytes(account.key).hex()},
            )
            for index, (name, account) in enumerate(zip("ab", world.relay_accounts, strict=True))
        ]
        self._argv_for = argv_for
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    def start(self) -> RelayFleet:
        """Start every relay; their command lines are built now (the start block is known by then)."""
        for index, relay in enumerate(self.relays):
            relay.argv = self._argv_for(index, relay.db)
            relay.start()
        self._thread.start()
        return self

    def kill_and_restart(self, relay: RelayProcess) -> None:
        with self._lock:
            relay.kill()
            relay.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                for relay in self.relays:
                    if relay.process is not None and (code := relay.process.poll()) is not None:
                        relay.unexpected_exits.append(code)
                        relay.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for relay in self.relays:
            relay.stop()


def relay_argv(
    world: World,
    db: Path,
    *,
    confirmations: int,
    poll: float,
    start_block: int,
    gas_price_cap_gwei: float,
    stuck_after_s: float,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """`verinfer relay run` as an operator would start it, pointed at the outage proxy."""
    return [
        VERINFER,
        "relay",
        "run",
        "--rpc",
        world.relay_rpc,
        "--contract",
        world.contract.address,
        "--enclave",
        ",".join(world.enclaves),
        "--db",
        str(db),
        "--confirmations",
        str(confirmations),
        "--poll",
        str(poll),
        "--start-block",
        str(start_block),
        "--chain-id",
        str(world.w3.eth.chain_id),
        "--max-gas-price-gwei",
        str(gas_price_cap_gwei),
        "--stuck-after",
        str(stuck_after_s),
        *extra,
    ]
