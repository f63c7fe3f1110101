"""The fuzzing harness (bench/fuzz_parsers.py): short runs of every target find no crash, and the harness
reports a parser that raises the wrong exception, with the input that reproduces it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fuzz_parsers as fp

pytestmark = pytest.mark.filterwarnings("ignore")  # cryptography warns about odd (mutated) certificates
BUDGET = 5000


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> fp.Seeds:
    return fp.build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def test_seeds_are_the_real_inputs(seeds: fp.Seeds) -> None:
    assert len(seeds.documents) >= 11 + 5  # hardware documents and simulator documents
    assert len(seeds.receipts) >= 2
    assert len(seeds.tensors) >= 5
    for name in fp.TARGETS:  # every seed is accepted by its own target
        target = fp.BUILDERS[name](seeds)
        for data in seeds.of(name):
            outcome, crash = fp.execute(target, data)
            assert crash is None and outcome is not None


@pytest.mark.parametrize("name", fp.TARGETS)
def test_a_short_run_of_each_target_finds_no_crash(seeds: fp.Seeds, name: str) -> None:
    target = fp.BUILDERS[name](seeds)
    stats = fp.fuzz(target, BUDGET, seed=1)
    assert stats.inputs == BUDGET
    assert stats.crashes == 0, fp.format_crash(stats.examples[0])
    assert "mutator errors" not in stats.counters


def test_document_runs_reach_the_chain_checks(seeds: fp.Seeds) -> None:
    target = fp.document_target(seeds, verify_every=2)
    outcomes: set[str] = set()
    run = target.run

    def recording(data: bytes) -> str | None:
        outcome = run(data)
        if outcome:
            outcomes.add(outcome)
        return outcome

    target.run = recording
    stats = fp.fuzz(target, 3000, seed=2)
    assert stats.crashes == 0
    assert stats.counters["verify"] > 300
    verified = " ".join(o for o in outcomes if not o.startswith("decode"))
    for reached in ("chain_broken", "malformed:cabundle", "bad_signature", "verified"):
        assert reached in verified


def broken_target(*, every: int = 1) -> fp.Target:
    """A parser that rejects with ValueError (acceptable) but raises TypeError on some inputs."""

    def parse(data: bytes) -> str:
        if len(data) > 4 and data[1] == 0x42 and len(data) % every == 0:
            raise TypeError(f"boom on {len(data)} bytes")
        raise ValueError("rejected")

    return fp.Target("broken", (b"\x00\x42\x00\x00\x00", b"abcdef"), parse, (ValueError,))


def test_a_parser_raising_type_error_is_reported_with_its_input() -> None:
    stats = fp.fuzz(broken_target(), 500, seed=0)
    assert stats.inputs == 500
    assert stats.crashes > 0
    crash = stats.examples[0]
    assert crash.error.startswith("TypeError: boom")
    assert crash.location.endswith("in parse")
    out = io.StringIO()
    assert fp.report([stats], out) == 1
    text = out.getvalue()
    assert f"CRASH broken: {crash.error}" in text
    assert f"hex): {crash.data.hex()}" in text
    assert f"crashes {stats.crashes:>4}" in text.splitlines()[-1]


def test_a_rare_crash_is_found_by_mutation() -> None:
    # Neither seed crashes (lengths 5 and 6); only mutated inputs of a length divisible by 7 do.
    stats = fp.fuzz(broken_target(every=7), 3000, seed=3)
    assert stats.crashes > 0
    assert all(len(c.data) % 7 == 0 for c in stats.examples)


def test_acceptable_errors_are_not_crashes() -> None:
    def parse(_data: bytes) -> str:
        raise ValueError("rejected")

    stats = fp.fuzz(fp.Target("strict", (b"x",), parse, (ValueError,)), 300, seed=0)
    assert (stats.inputs, stats.crashes) == (300, 0)
    assert fp.report([stats], io.StringIO()) == 0


def test_invariant_violations_are_crashes(seeds: fp.Seeds, monkeypatch: pytest.MonkeyPatch) -> None:
    import protocol.tensors

    original = protocol.tensors.encode_tensors
    monkeypatch.setattr(protocol.tensors, "encode_tensors", lambda tensors: original(tensors) + b"\x00")
    stats = fp.fuzz(fp.tensors_target(seeds), 200, seed=0)
    assert stats.crashes >= len(seeds.tensors)  # every seed decodes, and re-encodes differently
    assert stats.examples[0].error.startswith("InvariantViolation")


def test_the_command_prints_one_line_per_target_and_a_total() -> None:
    out = io.StringIO()
    assert fp.main(["--engine", "mutate", "--inputs", "3000", "--workers", "1", "--seed", "4"], out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("fuzz_parsers: engine mutate, seed 4")
    figures = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(figures) == {*fp.TARGETS, "total"}
    assert sum(int(figures[name][2]) for name in fp.TARGETS) == int(figures["total"][2]) == 3000
    assert all(figures[name][3:5] == ["crashes", "0"] for name in figures)
    assert all("inputs/s" in line for line in lines[1:])


def test_the_command_exits_1_on_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fp.BUILDERS, "tensors", lambda _seeds: broken_target())
    out = io.StringIO()
    assert (
        fp.main(["--engine", "mutate", "--target", "tensors", "--inputs", "200", "--workers", "1"], out) == 1
    )
    assert "CRASH broken: TypeError: boom" in out.getvalue()


def test_the_mutation_engine_is_deterministic(seeds: fp.Seeds) -> None:
    first = fp.fuzz(broken_target(every=7), 1000, seed=5)
    second = fp.fuzz(broken_target(every=7), 1000, seed=5)
    assert [c.data for c in first.examples] == [c.data for c in second.examples]


@pytest.mark.skipif(not fp.atheris_available(), reason="atheris is not installed")
def test_the_atheris_engine_runs_and_counts() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "bench.fuzz_parsers", "--engine", "atheris", "--target", "tensors"),
            *("--inputs", "3000", "--workers", "1"),
        ],
        cwd=Path(fp.__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("fuzz_parsers: engine atheris")
    assert lines[-1].split()[:5] == ["total", "inputs", "3000", "crashes", "0"]


# -- what the harness found, as regressions ------------------------------------------------------------


def test_receipt_without_enclave_or_signature_is_a_receipt_error() -> None:
    # Found by the receipt target: the two fields read after the Receipt was built escaped as KeyError.
    import orjson

    from protocol.receipts import ReceiptError, SignedReceipt

    receipt = orjson.loads(fp.receipt_seeds()[0])
    SignedReceipt.from_json(receipt)
    for missing in ("enclave", "signature"):
        with pytest.raises(ReceiptError, match=f"'{missing}' is missing"):
            SignedReceipt.from_json({k: v for k, v in receipt.items() if k != missing})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x00",
        b"\x01\x01",
        b"\x01\x01\x01\xff\x01\x00",  # name is not UTF-8
        b"\x01\x01\x01x\x08\x00",  # unknown dtype
        b"\x01\x01\x01x\x01\x46" + b"\x00\x00\x00\x01" * 70 + b"\x00" * 4,  # rank 70 > numpy's 64
        b"\x01\x01\x01x\x02\x04" + b"\x00\x01\x00\x00" * 4,  # 2**64 elements: a uint64 product wraps to 0
        b"\x01\x01\x01x\x02\x03"
        + b"\x00\x00\x00\x00"
        + b"\xff\xff\xff\xff" * 2,  # 0 x (2**32 - 1)**2: too big
        b"\x01\x00\x00",  # trailing byte
    ],
    ids=["empty", "version", "truncated", "utf8", "dtype", "rank", "wrap", "zero-by-huge", "trailing"],
)
def test_tensor_rejections_are_tensor_encoding_errors(data: bytes) -> None:
    # Found by the tensors target: every rejection was a bare ValueError (UnicodeDecodeError, numpy's own
    # reshape errors, or the decoder's), not a ProtocolError.
    from protocol.errors import ProtocolError
    from protocol.tensors import TensorEncodingError, decode_tensors

    with pytest.raises(TensorEncodingError) as info:
        decode_tensors(data)
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, ValueError)
