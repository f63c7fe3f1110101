"""Fuzzing harness for the parsers that take untrusted bytes: attestation documents, receipts, tensors.

    python -m bench.fuzz_parsers [--inputs N] [--seed S] [--target document|receipt|tensors|all]
                                 [--workers W] [--engine auto|atheris|mutate]

Targets, and the only exceptions each may raise (anything else is a crash):

- `document`: `attestation.decode` on every input and, for one decodable input in VERIFY_EVERY (atheris:
  every other decodable one, as fewer of its inputs decode), `attestation.verify` at the document's own time
  against the AWS root and against a simulator root; a document whose signed payload is not one of the
  seeds' must never verify.
  Seeds: the real hardware documents (tests/fixtures, ../shared/attestation-samples) and simulator
  documents. Only `AttestationError`.
- `receipt`: `SignedReceipt.from_json` on mutated real receipts (tests/vectors/receipts.json); mutated bytes
  are parsed with orjson and inputs that are not JSON are skipped (not counted). Only `ProtocolError`.
  A receipt that parses must survive `from_json(to_json(r)) == r`.
- `tensors`: `decode_tensors` on mutated canonical encodings (tests/vectors/tensors.json and generated
  ones). Only `ProtocolError`. Whatever decodes must re-encode to exactly the same bytes (one encoding).

Engines: `atheris` (coverage-guided libFuzzer over the instrumented attestation/ and protocol/ code, one
subprocess per worker, used by `auto` when atheris is importable; half of its mutations are the
structure-aware ones below) or `mutate`, a deterministic byte- and structure-aware mutation fuzzer seeded
from the same inputs that keeps any input with a new outcome (rejection code or message) in its corpus.
Structure-aware mutations rebuild a valid envelope around a mutated certificate, payload or header, so that
verify's certificate checks see far more than the COSE decoder would let through. `--inputs` is
the total over the chosen targets (split by SHARES). Each crash is printed with its input in hex; the exit
status is 1 when there was any. The last lines give, per target and in total: inputs, crashes, seconds,
inputs/s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import mmap
import multiprocessing
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT_DIRS = (
    ROOT / "tests" / "fixtures" / "attestation" / "valid",
    ROOT / "tests" / "fixtures" / "attestation" / "invalid",
    ROOT.parent / "shared" / "attestation-samples" / "valid",
    ROOT.parent / "shared" / "attestation-samples" / "invalid",
)
RECEIPT_VECTORS = ROOT / "tests" / "vectors" / "receipts.json"
TENSOR_VECTORS = ROOT / "tests" / "vectors" / "tensors.json"
TARGETS = ("document", "receipt", "tensors")
SHARES = {"document": 0.4, "receipt": 0.3, "tensors": 0.3}
VERIFY_EVERY = 8  # one decodable document in VERIFY_EVERY is also verified (verify ~0.6 ms, decode ~0.05)
MAX_LEN = {"document": 20 * 1024, "receipt": 4096, "tensors": 4096}
CORPUS_LIMIT = 512
CRASHES_KEPT = 20  # per target and worker; all are counted
CRASHES_SHOWN = 5  # per target, distinct (exception type, location)
CHILD_TIMEOUT_S = 3600
_LATEST = datetime(9999, 12, 31, tzinfo=UTC)
_RULE = re.compile(r"\[([a-z-]+)\]")


# -- seeds ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeds:
    documents: tuple[bytes, ...]
    sim_root: bytes  # DER of the simulator root the simulator documents chain to
    receipts: tuple[bytes, ...]  # JSON
    tensors: tuple[bytes, ...]

    def of(self, target: str) -> tuple[bytes, ...]:
        return {"document": self.documents, "receipt": self.receipts, "tensors": self.tensors}[target]


def hardware_documents() -> list[bytes]:
    seen: dict[str, bytes] = {}
    for directory in DOCUMENT_DIRS:
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.is_file() and path.suffix != ".md":
                    seen.setdefault(path.name, path.read_bytes())
    return list(seen.values())


def simulator_documents(pki_dir: Path) -> tuple[list[bytes], bytes]:
    """Documents from the simulated NSM (hardware's layout, every optional field shape), and its root."""
    from attestation.nsm import NsmClient
    from attestation.nsm.simulator import SimulatedNsmDevice
    from attestation.sim_pki import SimulatorPki

    pki = SimulatorPki(pki_dir)
    plain = SimulatedNsmDevice(pki, {0: b"\x01" * 48, 1: b"\x02" * 48, 2: b"\x03" * 48})
    indefinite = SimulatedNsmDevice(pki, {0: b"\x04" * 48}, indefinite_payload=True)
    nsm, nsm_indefinite = NsmClient(plain, simulated=True), NsmClient(indefinite, simulated=True)
    nsm.extend_pcr(16, b"config")
    nsm.lock_pcr(16)  # a 17th PCR, as some hardware documents have
    documents = [
        nsm.attestation(),
        nsm.attestation(public_key=b"k" * 64),
        nsm.attestation(user_data=b"u" * 1024, nonce=b"n" * 1024, public_key=b"p" * 1024),
        nsm.attestation(user_data=b"", nonce=b"\x00" * 20),
        nsm_indefinite.attestation(nonce=b"abc"),
    ]
    return documents, pki.root.der


def receipt_seeds() -> list[bytes]:
    import orjson

    vectors = json.loads(RECEIPT_VECTORS.read_text())
    seeds = []
    for vector in vectors["receipts"]:
        receipt = {
            "requestId": vector["requestId"],
            "modelHash": vector["modelHash"],
            "inputHash": vector["inputHash"],
            "outputHash": vector["outputHash"],
            "timestampMs": vector["timestampMs"],
            "enclave": vectors["signer"],
            "signature": vector["signature"],
        }
        seeds.append(orjson.dumps(receipt))
        seeds.append(json.dumps(receipt, indent=1).encode())
        seeds.append(orjson.dumps({**receipt, "extra": [1, {"a": None}], "timestampMs": 0}))
    return seeds


def tensor_seeds() -> list[bytes]:
    import numpy as np

    from protocol.tensors import DTYPES, encode_tensors

    seeds = [bytes.fromhex(v["encoding"][2:]) for v in json.loads(TENSOR_VECTORS.read_text())]
    rng = np.random.default_rng(7)
    for dtype in DTYPES:
        values = rng.integers(0, 2 if dtype.name == "bool" else 100, size=(2, 3))
        seeds.append(encode_tensors([("t", values.astype(dtype.numpy))]))
    seeds.append(encode_tensors([]))
    seeds.append(encode_tensors([("empty", np.zeros((0, 4), np.float32)), ("s", np.array(3, np.int64))]))
    seeds.append(encode_tensors([("ü名", np.ones((1, 1, 1, 2), np.float16))]))
    return seeds


def build_seeds(work_dir: Path) -> Seeds:
    sim_docs, sim_root = simulator_documents(work_dir / "sim-pki")
    return Seeds(
        tuple(hardware_documents() + sim_docs), sim_root, tuple(receipt_seeds()), tuple(tensor_seeds())
    )


# -- targets -------------------------------------------------------------------------------------------


@dataclass
class Target:
    """`run(data)` returns an outcome label, or None when the input is skipped (receipts: not JSON).

    It raises only what is acceptable (`acceptable`), or something else: a crash. Outcome labels feed the
    mutation engine's corpus; `mutators` are structure-aware mutations on top of the byte-level ones.
    """

    name: str
    seeds: tuple[bytes, ...]
    run: Callable[[bytes], str | None]
    acceptable: tuple[type[Exception], ...]
    mutators: tuple[Callable[[random.Random, bytes, Sequence[bytes]], bytes | None], ...] = ()
    counters: dict[str, int] = field(default_factory=dict)


class InvariantViolation(Exception):
    """A parser accepted something it must not (a non-canonical encoding, a lossy round trip)."""


def _count(counters: dict[str, int], key: str) -> None:
    counters[key] = counters.get(key, 0) + 1


def document_target(seeds: Seeds, verify_every: int = VERIFY_EVERY) -> Target:
    from attestation import AttestationError, Policy, TrustedRoot, aws_nitro_root, decode, verify

    policies = (
        ("aws", Policy(root=aws_nitro_root(), allow_debug=True)),
        ("sim", Policy(root=TrustedRoot(seeds.sim_root, "fuzz simulator root"), allow_debug=True)),
    )
    counters: dict[str, int] = {}
    signed_payloads = set()
    for seed in seeds.documents:
        with contextlib.suppress(AttestationError):
            signed_payloads.add(decode(seed).cose.payload)

    def label(error: AttestationError) -> str:
        rule = _RULE.search(error.detail)
        return error.code + (f"[{rule.group(1)}]" if rule else "")

    def run(data: bytes) -> str:
        _count(counters, "decode")
        try:
            document = decode(data).document
        except AttestationError as error:
            return "decode:" + label(error)
        _count(counters, "decoded")
        if counters["decoded"] % verify_every:
            return "decoded"
        _count(counters, "verify")
        try:
            at = datetime.fromtimestamp(document.timestamp_ms / 1000, UTC)
        except (OverflowError, ValueError, OSError):
            at = _LATEST
        outcomes = []
        for name, policy in policies:
            try:
                verify(data, policy, at=at)
            except AttestationError as error:
                outcomes.append(f"{name}:{label(error)}")
                continue
            if decode(data).cose.payload not in signed_payloads:
                raise InvariantViolation(
                    f"a document with a changed payload verified against the {name} root"
                )
            outcomes.append(f"{name}:verified")
        return " ".join(outcomes)

    return Target(
        "document", seeds.documents, run, (AttestationError,), _document_mutators(), counters=counters
    )


def receipt_target(seeds: Seeds) -> Target:
    import orjson

    from protocol.errors import ProtocolError
    from protocol.receipts import SignedReceipt

    counters: dict[str, int] = {}

    def run(data: bytes) -> str | None:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            _count(counters, "skipped (not JSON)")
            return None
        try:
            receipt = SignedReceipt.from_json(value)
        except ProtocolError as error:
            return "rejected:" + _shape(str(error))
        if SignedReceipt.from_json(receipt.to_json()) != receipt:
            raise InvariantViolation("from_json(to_json(receipt)) differs from the receipt")
        return "parsed"

    return Target("receipt", seeds.receipts, run, (ProtocolError,), (_mutate_json,), counters=counters)


def tensors_target(seeds: Seeds) -> Target:
    from protocol.errors import ProtocolError
    from protocol.tensors import decode_tensors, encode_tensors

    def run(data: bytes) -> str:
        try:
            tensors = decode_tensors(data)
        except ProtocolError as error:
            return "rejected:" + _shape(str(error))
        if encode_tensors(tensors) != data:
            raise InvariantViolation("decoded tensors re-encode to different bytes (not canonical)")
        return f"decoded:{len(tensors)}"

    return Target("tensors", seeds.tensors, run, (ProtocolError,), (_generate_tensors, _mutate_tensor_header))


BUILDERS: dict[str, Callable[[Seeds], Target]] = {
    "document": document_target,
    "receipt": receipt_target,
    "tensors": tensors_target,
}


def _shape(message: str) -> str:
    """A rejection message without its variable parts, as an outcome label."""
    return re.sub(r"\d+|'[^']*'|\"[^\"]*\"", "#", message)[:80]


# -- the harness ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crash:
    target: str
    data: bytes
    error: str  # "TypeError: message"
    location: str  # innermost frame: "path:line in function"
    traceback: str


@dataclass
class Stats:
    target: str
    inputs: int = 0
    crashes: int = 0
    seconds: float = 0.0
    examples: list[Crash] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    corpus: int = 0

    def merge(self, other: Stats) -> None:
        self.inputs += other.inputs
        self.crashes += other.crashes
        self.examples.extend(other.examples)
        for key, value in other.counters.items():
            self.counters[key] = self.counters.get(key, 0) + value
        self.corpus += other.corpus


def execute(target: Target, data: bytes) -> tuple[str | None, Crash | None]:
    """Run one input: (outcome, None), or (None, the crash) when it raised anything not acceptable."""
    try:
        return target.run(data), None
    except target.acceptable as error:
        return f"{type(error).__name__}:{_shape(str(error))}", None
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
        text = "".join(traceback.format_exception(error))
        return None, Crash(target.name, data, f"{type(error).__name__}: {error}", where, text)


def fuzz(target: Target, inputs: int, seed: int, *, time_limit: float | None = None) -> Stats:
    """The mutation engine: run `inputs` inputs (seeds first, then mutations) through `target`."""
    rng = random.Random(f"{target.name}:{seed}")
    corpus = list(target.seeds)
    seen: set[str] = set()
    stats = Stats(target.name)
    start = time.perf_counter()
    attempts, queue = 0, list(target.seeds)
    while stats.inputs < inputs and attempts < 20 * inputs + 100:
        attempts += 1
        if time_limit is not None and attempts % 256 == 0 and time.perf_counter() - start > time_limit:
            break
        data = queue.pop() if queue else mutate(rng, rng.choice(corpus), corpus, target)
        outcome, crash = execute(target, data)
        if crash is not None:
            stats.inputs += 1
            stats.crashes += 1
            if len(stats.examples) < CRASHES_KEPT:
                stats.examples.append(crash)
            continue
        if outcome is None:
            continue
        stats.inputs += 1
        if outcome not in seen:
            seen.add(outcome)
            if len(corpus) >= max(CORPUS_LIMIT, len(target.seeds) + 1):
                corpus[rng.randrange(len(target.seeds), len(corpus))] = data
            else:
                corpus.append(data)
    stats.seconds = time.perf_counter() - start
    stats.counters = dict(target.counters)
    stats.corpus = len(corpus)
    return stats


# -- mutations -----------------------------------------------------------------------------------------

_INTERESTING_8 = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x40, 0x5F, 0x60, 0x7F,
                  0x9F, 0xA0, 0xBF, 0xC0, 0xD2, 0xF4, 0xF5, 0xF6, 0xF7, 0xF9, 0xFA, 0xFB, 0x30, 0x02, 0x03,
                  0x04, 0x05, 0x06, 0x81, 0x82, 0x83, 0x84, 0xA3)  # fmt: skip
_INTERESTING_32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                   0xFFFFFFFF, 0xFFFFFFFE)  # fmt: skip


def _span(rng: random.Random, size: int) -> tuple[int, int]:
    start = rng.randrange(size)
    length = min(size - start, rng.choice((1, 1, 2, 4, 8, 16, 64, 256)))
    return start, start + max(length, 1)


def _havoc_once(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> bytearray:
    if not data:
        return bytearray(rng.randbytes(rng.randint(1, 8)))
    kind = rng.randrange(12)
    position = rng.randrange(len(data))
    if kind == 0:
        data[position] ^= 1 << rng.randrange(8)
    elif kind == 1:
        data[position] = rng.randrange(256)
    elif kind == 2:
        data[position] = rng.choice(_INTERESTING_8)
    elif kind == 3:
        data[position] = (data[position] + rng.choice((-2, -1, 1, 2, 16, -16))) % 256
    elif kind == 4:
        width = rng.choice((2, 4))
        value = rng.choice(_INTERESTING_32) & ((1 << 8 * width) - 1)
        data[position : position + width] = value.to_bytes(width, rng.choice(("big", "little")))
    elif kind == 5:
        start, end = _span(rng, len(data))
        del data[start:end]
    elif kind == 6:
        data[position:position] = rng.randbytes(rng.choice((1, 1, 2, 4, 8)))
    elif kind == 7:
        start, end = _span(rng, len(data))
        data[position:position] = data[start:end]
    elif kind == 8:
        start, end = _span(rng, len(data))
        chunk = data[start:end]
        target = rng.randrange(len(data))
        data[target : target + len(chunk)] = chunk
    elif kind == 9:
        other = rng.choice(corpus)
        if other:
            cut = rng.randrange(len(other))
            data[position:] = other[cut:]
    elif kind == 10:
        del data[position:]
    else:
        data[position:position] = bytes((rng.choice(_INTERESTING_8),))
    return data


def havoc(rng: random.Random, data: bytes, corpus: Sequence[bytes], max_len: int = 1 << 16) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        out = _havoc_once(rng, out, corpus)
    return bytes(out[:max_len])


def mutate(rng: random.Random, data: bytes, corpus: Sequence[bytes], target: Target) -> bytes:
    if target.mutators and rng.random() < 0.5:
        structured = structured_mutation(rng, data, corpus, target)
        if structured is not None:
            return structured
    return havoc(rng, data, corpus, MAX_LEN.get(target.name, 1 << 16))


def structured_mutation(
    rng: random.Random, data: bytes, corpus: Sequence[bytes], target: Target
) -> bytes | None:
    """One of the target's structure-aware mutations of `data` or, when it does not apply to `data` (a
    document that does not decode), of a seed; None when none applies."""
    mutator = rng.choice(target.mutators)
    try:
        mutated = mutator(rng, data, corpus)
        if mutated is None and target.seeds:
            mutated = mutator(rng, rng.choice(target.seeds), corpus)
    except Exception:  # a bug in a mutator, not in a parser: counted, and the caller mutates bytes instead
        _count(target.counters, "mutator errors")
        return None
    return mutated


def _document_mutators() -> tuple[Callable[[random.Random, bytes, Sequence[bytes]], bytes | None], ...]:
    import cbor2

    from attestation import AttestationError, decode
    from attestation.cose import encode_sign1

    @functools.lru_cache(maxsize=1024)
    def decoded(data: bytes) -> Any:
        try:
            return decode(data)
        except AttestationError:
            return None

    def certificates(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes | None:
        """Mutate one certificate (any way, lengths included), or swap in one from another document."""
        signed = decoded(data)
        if signed is None:
            return None
        doc = signed.document
        bundle = list(doc.cabundle)
        slot = rng.randrange(len(bundle) + 1)  # len(bundle): the leaf
        current = doc.certificate if slot == len(bundle) else bundle[slot]
        choice = rng.randrange(5)
        if choice == 1 and len(bundle) > 1:
            bundle.insert(rng.randrange(len(bundle) + 1), rng.choice(bundle))  # a repeated CA
        elif choice == 2 and len(bundle) > 1:
            del bundle[rng.randrange(len(bundle))]
        else:
            donor = decoded(rng.choice(corpus)) if choice == 0 else None
            if donor is not None:
                replacement = rng.choice((*donor.document.cabundle, donor.document.certificate))
            else:
                replacement = havoc(rng, current, (current,)) or b"\x30"
            if slot == len(bundle):
                doc = dataclasses.replace(doc, certificate=replacement)
            else:
                bundle[slot] = replacement
        doc = dataclasses.replace(doc, cabundle=tuple(bundle))
        return encode_sign1(signed.cose.protected, doc.encode_payload(), signed.cose.signature)

    def envelope(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes | None:
        """Rebuild the COSE_Sign1 array around the same parts: tags, unprotected headers, item counts."""
        signed = decoded(data)
        if signed is None:
            return None
        cose = signed.cose
        unprotected: Any = rng.choice(
            (None, {}, {4: b"kid"}, {"pad": b"p" * rng.choice((100, 9000, 12000, 16500))}, [], b"")
        )
        items: list[Any] = [cose.protected, unprotected, cose.payload, cose.signature]
        choice = rng.randrange(6)
        if choice == 0:
            items.append(None)
        elif choice == 1:
            items.pop(rng.randrange(4))
        elif choice == 2:
            items[0] = rng.choice(
                (b"\xa1\x01\x26", b"\xa2\x01\x38\x22\x04\x40", b"", b"\xa0", cbor2.dumps({1: "ES384"}))
            )
        encoded = cbor2.dumps(items)
        if choice == 3:
            encoded = b"\xd2" + encoded
        elif choice == 4:
            encoded = cbor2.dumps(cbor2.CBORTag(rng.choice((18, 98, 55799)), items))
        return encoded

    def payload(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes | None:
        """Mutate the payload bytes, or one field's value, inside an intact COSE envelope."""
        signed = decoded(data)
        if signed is None:
            return None
        if rng.random() < 0.5:
            body = havoc(rng, signed.cose.payload, corpus)
        else:
            fields = cbor2.loads(signed.cose.payload)
            name = rng.choice(sorted(fields))
            fields[name] = _random_value(rng, fields[name])
            if rng.random() < 0.1:
                fields[rng.choice(("extra", "digest", 1, ""))] = _random_value(rng, None)
            body = cbor2.dumps(fields)
        signature = signed.cose.signature if rng.random() < 0.9 else havoc(rng, signed.cose.signature, corpus)
        return encode_sign1(signed.cose.protected, body, signature)

    return (certificates, payload, envelope)


def _random_value(rng: random.Random, like: Any) -> Any:
    kind = rng.randrange(10)
    if kind == 0 and isinstance(like, bytes) and like:
        return havoc(rng, like, (like,))
    if kind == 1 and isinstance(like, dict) and like:
        copy = dict(like)
        key = rng.choice(list(copy))
        copy[key if rng.random() < 0.7 else rng.choice((-1, 32, 2**64 - 1, "0", None))] = _random_value(
            rng, copy[key]
        )
        return copy
    if kind == 2 and isinstance(like, list) and like:
        items = list(like)
        if rng.random() < 0.5:
            items.insert(rng.randrange(len(items) + 1), rng.choice(items))
        else:
            items.pop(rng.randrange(len(items)))
        return items
    options: tuple[Any, ...] = (
        None, True, False, 0, -1, 1, 2**63, 2**64 - 1, -(2**64), 1.5, "", "SHA384", "x" * 300, b"",
        b"\x00" * 48, b"\x00" * 1025, [], [b"\x30\x00"], {}, {0: b"\x00" * 48}, rng.randbytes(9),
    )  # fmt: skip
    return rng.choice(options)


def _mutate_json(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes | None:
    import orjson

    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not value or rng.random() < 0.05:
        return orjson.dumps(rng.choice((None, 1, "x", [value], {"receipt": value}, [])))
    key = rng.choice(sorted(value))
    kind = rng.randrange(7)
    old = value[key]
    if kind == 0:
        del value[key]
    elif kind == 1 and isinstance(old, str):
        text = old.removeprefix("0x")
        edits = (
            text[:-1], text + "0", text.upper(), " " + text, text[:10] + " " + text[10:], "0x" + text,
            "0X" + text, text.replace(text[:1], "g", 1), text + "\u00e9", text[:2], "", "0x", "-" + text,
        )  # fmt: skip
        value[key] = ("0x" if rng.random() < 0.7 else "") + rng.choice(edits)
    elif kind == 2:
        value[key] = rng.choice(
            (
                None,
                True,
                False,
                0,
                -1,
                1,
                2**63 - 1,
                2**64 - 1,
                -(2**63),
                1.5,
                1e300,
                "",
                [],
                {},
                [old],
                {"v": old},
            )
        )
    elif kind == 3 and isinstance(old, int):
        value[key] = rng.choice((old + 1, old - 1, -old, 2**64 - 1, 2**63, 0, float(old), str(old)))
        if isinstance(value[key], int) and not -(2**63) <= value[key] < 2**64:
            value[key] = 2**64 - 1  # the widest integer JSON (orjson) carries
    elif kind == 4:
        value[rng.choice(("extra", "requestid", "RequestId", "", "0"))] = old
    else:
        return havoc(rng, data, corpus, MAX_LEN["receipt"])
    return orjson.dumps(value)


_TENSOR_CODES = (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 0, 8, 14, 16, 255)
_ITEM_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8}


def _generate_tensors(rng: random.Random, _data: bytes, _corpus: Sequence[bytes]) -> bytes:
    """An encoding built from random header values, valid or slightly off, with fitting data lengths."""
    count = rng.choice((0, 1, 1, 2, 3))
    declared = count if rng.random() < 0.9 else rng.choice((0, 1, 255, count + 1))
    out = bytearray((1 if rng.random() < 0.95 else rng.randrange(256), declared))
    for _ in range(count):
        name = rng.choice(
            (b"x", b"features", "ü".encode(), b"\xff", b"\xc3", b"\xed\xa0\x80", b"", b"n" * 255)
        )
        code = rng.choice(_TENSOR_CODES)
        rank = rng.choice((0, 1, 2, 3, 4, 8, 64, 65, 255)) if rng.random() < 0.3 else rng.randint(0, 3)
        dims = [
            rng.choice((0, 1, 2, 3, 5, 2**16, 2**31, 2**32 - 1)) if rng.random() < 0.2 else rng.randint(0, 4)
            for _ in range(rank)
        ]
        size = _ITEM_SIZE.get(code, 1)
        for dim in dims:
            size *= dim
        size = min(size, 512) + (rng.choice((-1, 1)) if rng.random() < 0.1 else 0)
        out += bytes((len(name),)) + name + bytes((code, rank)) + struct.pack(f">{rank}I", *dims)
        out += rng.randbytes(max(size, 0))
    if rng.random() < 0.05:
        out += b"\x00"
    return bytes(out)


def _mutate_tensor_header(rng: random.Random, data: bytes, _corpus: Sequence[bytes]) -> bytes | None:
    """Overwrite a dimension, the rank, the dtype or the name length of the first tensor."""
    if len(data) < 4:
        return None
    out = bytearray(data)
    name_end = 3 + out[2]
    if name_end + 2 > len(out):
        return None
    choice = rng.randrange(4)
    if choice == 0:
        out[name_end] = rng.choice(_TENSOR_CODES)
    elif choice == 1:
        out[name_end + 1] = rng.choice((0, 1, 2, 64, 65, 255, (out[name_end + 1] + 1) % 256))
    elif choice == 2:
        out[2] = rng.randrange(256)
    else:
        rank = out[name_end + 1]
        if not rank or name_end + 2 + 4 * rank > len(out):
            return None
        offset = name_end + 2 + 4 * rng.randrange(rank)
        out[offset : offset + 4] = struct.pack(">I", rng.choice(_INTERESTING_32))
    return bytes(out)


# -- running: mutation engine --------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # per process: "seeds", and each target once built


def _init_worker(seeds: Seeds) -> None:
    _WORKER.clear()
    _WORKER["seeds"] = seeds


def _worker_fuzz(job: tuple[str, int, int]) -> Stats:
    name, inputs, seed = job
    if name not in _WORKER:
        _WORKER[name] = BUILDERS[name](_WORKER["seeds"])
    target: Target = _WORKER[name]
    target.counters.clear()
    return fuzz(target, inputs, seed)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def budgets(names: Sequence[str], total: int) -> dict[str, int]:
    weight = sum(SHARES[n] for n in names)
    shares = {n: int(total * SHARES[n] / weight) for n in names}
    shares[names[0]] += total - sum(shares.values())
    return shares


def run_mutation(names: Sequence[str], total: int, seed: int, workers: int, seeds: Seeds) -> list[Stats]:
    results = []
    plan = budgets(names, total)
    if workers <= 1:
        _init_worker(seeds)
        for name in names:
            results.append(_worker_fuzz((name, plan[name], seed)))
        return results
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(seeds,)) as pool:
        for name in names:
            start = time.perf_counter()
            jobs = [(name, n, seed * 1000 + i) for i, n in enumerate(split(plan[name], workers))]
            merged = Stats(name)
            for part in pool.map(_worker_fuzz, jobs):
                merged.merge(part)
            merged.seconds = time.perf_counter() - start
            results.append(merged)
    return results


# -- running: atheris engine ---------------------------------------------------------------------------


def _atheris() -> Any:
    """The atheris module (untyped, and optional: a `dev` extra on Linux x86-64 only), or None."""
    try:
        return importlib.import_module("atheris")
    except ImportError:
        return None


def atheris_available() -> bool:
    return _atheris() is not None


_SLOTS = ("inputs", "crashes", "decode", "decoded", "verify", "skipped (not JSON)", "mutator errors")
_SLOT_STRUCT = struct.Struct(f"<{len(_SLOTS)}Q")


def _atheris_child(name: str, runs: int, seed: int, work: Path) -> None:
    """Inside one subprocess: instrument the parsers, then let libFuzzer drive `name` for `runs` inputs.

    libFuzzer ends the process with exit(), so the counts live in a shared file mapping that the parent
    reads afterwards; the child itself stops once `runs` inputs reached the parser (skipped ones do not
    count, as in the mutation engine).
    """
    atheris = _atheris()
    with atheris.instrument_imports(include=["attestation", "protocol"]):
        import attestation  # noqa: F401  (instrumented here; the targets import from it below)
        import protocol.receipts
        import protocol.tensors  # noqa: F401
    corpus_seeds = tuple(p.read_bytes() for p in sorted((work / "seeds").iterdir()))
    seeds = Seeds(corpus_seeds, (work / "sim_root.der").read_bytes(), corpus_seeds, corpus_seeds)
    # libFuzzer spends most inputs on short ones that do not decode: verify every other one that does.
    target = document_target(seeds, verify_every=2) if name == "document" else BUILDERS[name](seeds)
    crash_file = work / "crashes.jsonl"
    with (work / "counters").open("wb") as handle:
        handle.write(bytes(_SLOT_STRUCT.size))
    shared = mmap.mmap(os.open(work / "counters", os.O_RDWR), _SLOT_STRUCT.size)
    totals = {"inputs": 0, "crashes": 0}

    def one_input(data: bytes) -> None:
        outcome, crash = execute(target, data)
        if crash is not None:
            totals["crashes"] += 1
            if totals["crashes"] <= CRASHES_KEPT:
                record = {"data": crash.data.hex(), "error": crash.error, "location": crash.location,
                          "traceback": crash.traceback}  # fmt: skip
                with crash_file.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
        if outcome is not None or crash is not None:
            totals["inputs"] += 1
        counts = {**target.counters, **totals}
        _SLOT_STRUCT.pack_into(shared, 0, *(counts.get(slot, 0) for slot in _SLOTS))
        if totals["inputs"] >= runs:
            shared.flush()
            os._exit(0)

    def custom_mutator(data: bytes, max_size: int, mutation_seed: int) -> bytes:
        rng = random.Random(mutation_seed)
        if target.mutators and rng.random() < 0.5:
            structured = structured_mutation(rng, data, corpus_seeds, target)
            if structured is not None and len(structured) <= max_size:
                return structured
        mutated: bytes = atheris.Mutate(data, max_size)
        return mutated

    args = [sys.argv[0], "-runs=-1", f"-seed={seed}", f"-max_len={MAX_LEN[name]}", "-rss_limit_mb=4096",
            "-reload=0", "-max_total_time=3600", str(work / "corpus")]  # fmt: skip
    atheris.Setup(args, one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


def _read_counters(work: Path) -> dict[str, int]:
    path = work / "counters"
    if not path.exists() or path.stat().st_size != _SLOT_STRUCT.size:
        return {}
    return {k: v for k, v in zip(_SLOTS, _SLOT_STRUCT.unpack(path.read_bytes()), strict=True) if v}


def run_atheris(
    names: Sequence[str], total: int, seed: int, *, workers: int, seeds: Seeds, out: TextIO
) -> list[Stats]:
    results = []
    plan = budgets(names, total)
    with tempfile.TemporaryDirectory(prefix="fuzz-atheris-") as tmp:
        for name in names:
            start = time.perf_counter()
            processes = []
            for index, runs in enumerate(split(plan[name], workers)):
                work = Path(tmp) / f"{name}-{index}"
                (work / "seeds").mkdir(parents=True)
                (work / "corpus").mkdir()
                (work / "sim_root.der").write_bytes(seeds.sim_root)
                for number, data in enumerate(seeds.of(name)):
                    (work / "seeds" / f"{number:03}").write_bytes(data)
                    (work / "corpus" / f"{number:03}").write_bytes(data)
                command = [
                    *(sys.executable, "-m", "bench.fuzz_parsers", "--atheris-child", name),
                    *("--inputs", str(runs), "--seed", str(seed * 1000 + index + 1), "--work", str(work)),
                ]
                log = (work / "log").open("w")
                processes.append((work, log, subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)))
            merged = Stats(name)
            for work, log, process in processes:
                try:
                    process.wait(timeout=CHILD_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                log.close()
                counters = _read_counters(work)
                part = Stats(name, inputs=counters.pop("inputs", 0), crashes=counters.pop("crashes", 0))
                part.counters = counters
                crash_file = work / "crashes.jsonl"
                if crash_file.exists():
                    for line in crash_file.read_text().splitlines():
                        record = json.loads(line)
                        part.examples.append(Crash(name, bytes.fromhex(record["data"]), record["error"],
                                                   record["location"], record["traceback"]))  # fmt: skip
                if process.returncode != 0:
                    text = (work / "log").read_text(errors="replace")
                    print(f"atheris worker for {name} exited {process.returncode}; log tail:", file=out)
                    print(text[-3000:], file=out)
                    part.crashes += 1  # a worker that died is a failure, never a silent pass
                merged.merge(part)
            merged.seconds = time.perf_counter() - start
            results.append(merged)
    return results


# -- reporting -----------------------------------------------------------------------------------------


def format_crash(crash: Crash) -> str:
    return (
        f"CRASH {crash.target}: {crash.error}\n"
        f"  at {crash.location}\n"
        f"  input ({len(crash.data)} bytes, hex): {crash.data.hex()}\n"
        + "".join(f"  | {line}\n" for line in crash.traceback.rstrip().splitlines()[-12:])
    )


def report(results: Iterable[Stats], out: TextIO) -> int:
    """Print crashes (with reproducing input) and the per-target and total lines; the exit status."""
    results = list(results)
    for stats in results:
        shown: set[tuple[str, str]] = set()
        for crash in stats.examples:
            key = (crash.error.split(":")[0], crash.location)
            if key not in shown and len(shown) < CRASHES_SHOWN:
                shown.add(key)
                print(format_crash(crash), file=out)
    for stats in results:
        extra = ", ".join(f"{k} {v}" for k, v in sorted(stats.counters.items()))
        print(
            f"{stats.target:<9} inputs {stats.inputs:>9}  crashes {stats.crashes:>4}  "
            f"seconds {stats.seconds:>7.1f}  inputs/s {stats.inputs / max(stats.seconds, 1e-9):>8.0f}"
            + (f"  ({extra})" if extra else ""),
            file=out,
        )
    inputs = sum(s.inputs for s in results)
    crashes = sum(s.crashes for s in results)
    seconds = sum(s.seconds for s in results)
    print(
        f"{'total':<9} inputs {inputs:>9}  crashes {crashes:>4}  seconds {seconds:>7.1f}  "
        f"inputs/s {inputs / max(seconds, 1e-9):>8.0f}",
        file=out,
    )
    return 1 if crashes else 0


def quiet_certificate_warnings() -> None:
    """cryptography warns (rather than fails) on some odd certificates, such as a negative serial number
    or a country name that is not two letters; mutated certificates hit these constantly."""
    from cryptography.utils import CryptographyDeprecationWarning

    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    warnings.filterwarnings("ignore", message="Attribute's length must be", category=UserWarning)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    quiet_certificate_warnings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="total inputs over the chosen targets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    parser.add_argument("--atheris-child", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.atheris_child:
        _atheris_child(args.atheris_child, args.inputs, args.seed, args.work)
        return 0
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "mutate"
    elif engine == "atheris" and not atheris_available():
        parser.error("atheris is not installed (pip install atheris), use --engine mutate")
    names = list(TARGETS) if args.target == "all" else [args.target]
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as tmp:
        seeds = build_seeds(Path(tmp))
    print(
        f"fuzz_parsers: engine {engine}, seed {args.seed}, workers {args.workers}, inputs {args.inputs}, "
        f"targets {','.join(names)}; seeds: {len(seeds.documents)} documents, "
        f"{len(seeds.receipts)} receipts, {len(seeds.tensors)} tensor encodings",
        file=out,
        flush=True,
    )
    if engine == "atheris":
        results = run_atheris(names, args.inputs, args.seed, workers=args.workers, seeds=seeds, out=out)
    else:
        results = run_mutation(names, args.inputs, args.seed, args.workers, seeds)
    return report(results, out)


if __name__ == "__main__":
    sys.exit(main())
