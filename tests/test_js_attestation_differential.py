"""Differential test: the JavaScript attestation verifier (js/) and the Python one give the same verdict.

2000 seeded mutations of the real hardware documents and of a simulated one (byte flips anywhere and inside
certificates, truncations, CBOR field swaps and replacements, cabundle reshuffles, protected-header and tag
variants), each with a verification time and a policy that varies too (PCR pins, nonce, public key, user
data, maximum age, debug mode, times around the certificates' validity). Python's verdict is computed here in
process with `attestation.verify`; one node process verifies the same files (js/test/differential_attest.mjs)
and every verdict and reason code must agree.

DIFF_SEED and DIFF_CASES in the environment choose another seed or more cases (the defaults are fixed).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509

from attestation import (
    AttestationError,
    Policy,
    SignedDocument,
    TrustedRoot,
    aws_nitro_root,
    cbor,
    decode,
    verify,
)
from attestation.cose import encode_sign1
from attestation.encoding import read_document_bytes
from attestation.nsm.simulator import SimulatedNsmDevice
from attestation.sim_pki import SimulatorPki

from .conftest import INVALID, VALID

REPO = Path(__file__).resolve().parent.parent
JS = REPO / "js"
RUNNER = JS / "test" / "differential_attest.mjs"
CASES = int(os.environ.get("DIFF_CASES", "2000"))
SEED = int(os.environ.get("DIFF_SEED", "20240916"))

pytestmark = [
    # mutated certificates may carry negative serials or odd-length names: cryptography warns, both go on
    pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning"),
    pytest.mark.skipif(
        shutil.which("node") is None, reason="node is not installed (the JS verifier needs Node >= 20)"
    ),
    pytest.mark.skipif(
        not (JS / "node_modules").is_dir(), reason="js/node_modules is missing: run `npm ci` in js/ first"
    ),
]


class Base:
    """A document to mutate, the root that should verify it and its own timestamp."""

    def __init__(self, data: bytes, root: str) -> None:
        self.data = data
        self.root = root
        self.signed: SignedDocument | None = None
        self.fields: dict[Any, Any] | None = None
        self.at = datetime(2024, 9, 1, tzinfo=UTC)
        try:
            self.signed = decode(data)
        except AttestationError:
            return  # an invalid sample: mutated by byte flips and truncation only
        self.fields = cbor.loads(self.signed.cose.payload)
        self.at = datetime.fromtimestamp(self.signed.document.timestamp_ms / 1000, UTC)


def _bases(tmp: Path) -> list[Base]:
    bases = [Base(read_document_bytes(p.read_bytes()), "aws") for p in (*VALID, *INVALID)]
    pki = SimulatorPki(tmp / "sim-pki")
    shutil.copy(pki.root_pem_path, tmp / "cases" / "sim_root.pem")
    pcrs = {0: b"\x11" * 48, 1: b"\x22" * 48, 2: b"\x33" * 48, 4: b"\x44" * 48}
    device = SimulatedNsmDevice(pki, pcrs)
    bases.append(Base(device.sign_document(b"user", b"\x01" * 16, b"\x02" * 65), "sim_root.pem"))
    debug = SimulatedNsmDevice(pki, {}, indefinite_payload=True)
    bases.append(Base(debug.sign_document(None, b"\x03" * 32, None), "sim_root.pem"))
    return bases


ODD_VALUES: list[Any] = [
    None,
    b"",
    b"\x00" * 48,
    "",
    "SHA384",
    "x" * 300,
    0,
    -1,
    1,
    2**64 - 1,
    1_572_269_284_999,
    True,
    [],
    {},
    [b"\x30\x00"],
    {0: b"\x00" * 48},
    {0: b"\x00" * 32},
    1.0,
    cbor2.CBORTag(18, b""),
    b"\x00" * 1025,
]


def _reencode(base: Base, fields: dict[Any, Any]) -> bytes:
    assert base.signed is not None
    return encode_sign1(base.signed.cose.protected, cbor2.dumps(fields), base.signed.cose.signature)


def _flip(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    out = bytearray(data)
    hi = len(data) if hi is None else hi
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        out[rng.randrange(lo, hi)] ^= rng.randrange(1, 256)
    return bytes(out)


def _mutate(base: Base, rng: random.Random) -> bytes:
    data = base.data
    kind = rng.random()
    if kind < 0.30 or base.fields is None or base.signed is None:
        return _flip(data, rng)
    if kind < 0.45:
        # inside one certificate (any but the pinned root, whose bytes are compared first)
        doc = base.signed.document
        ders = [*doc.cabundle[1:], doc.certificate]
        der = rng.choice(ders)
        start = data.index(der)
        return _flip(data, rng, start, start + len(der))
    if kind < 0.52:
        return data[: rng.randrange(len(data))]
    fields = dict(base.fields)
    op = rng.randrange(12)
    if op == 0:
        a, b = rng.sample(sorted(fields, key=str), 2)
        fields[a], fields[b] = fields[b], fields[a]
    elif op == 1:
        fields[rng.choice(sorted(fields, key=str))] = rng.choice(ODD_VALUES)
    elif op == 2:
        del fields[rng.choice(sorted(fields, key=str))]
    elif op == 3:
        fields[rng.choice(["extra", 7, b"nonce"])] = b"\x00"
    elif op == 4:
        bundle = list(fields["cabundle"])
        choice = rng.randrange(4)
        if choice == 0:
            bundle.reverse()
        elif choice == 1:
            bundle = bundle[1:]
        elif choice == 2 and len(bundle) > 2:
            bundle[1], bundle[2] = bundle[2], bundle[1]
        else:
            bundle.append(bundle[-1])
        fields["cabundle"] = bundle
    elif op == 5:
        fields["certificate"], fields["cabundle"] = fields["cabundle"][-1], fields["cabundle"][:-1]
    elif op == 6:
        pcrs = dict(fields["pcrs"])
        index = rng.randrange(3)
        pcrs[index] = rng.choice([b"\x00" * 48, b"\x01" * 48, b"\x00" * 32])
        if rng.random() < 0.3:
            pcrs[rng.choice([16, 31, 32, -1])] = b"\x05" * 48
        fields["pcrs"] = pcrs
    elif op == 7:
        # a re-encoding of the same fields (indefinite-length map): same values, other signed bytes
        body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in fields.items())
        assert base.signed is not None
        return encode_sign1(base.signed.cose.protected, b"\xbf" + body + b"\xff", base.signed.cose.signature)
    elif op == 8:
        return rng.choice([b"\xd2", b"\xd1", b"\xd8\x12", b"\xc0"]) + data
    elif op == 9:
        assert base.signed is not None
        protected = rng.choice(
            [
                b"\xa1\x01\x26",
                b"\xa1\x01\x39\x00\x22",
                b"\xa2\x01\x38\x22\x04\x40",
                b"\xa0",
                b"\x40",
                b"\xa1\x01\x38\x22",
            ]
        )
        return encode_sign1(protected, base.signed.cose.payload, base.signed.cose.signature)
    elif op == 10:
        assert base.signed is not None
        payload = base.signed.cose.payload
        if payload[:1] == b"\xa9":  # a duplicated key: map(10) with "nonce" twice
            payload = b"\xaa" + payload[1:] + b"\x65nonce\x41\x00"
        return encode_sign1(base.signed.cose.protected, payload, base.signed.cose.signature)
    else:
        return _flip(_reencode(base, fields), rng)
    return _reencode(base, fields)


def _policy(base: Base, rng: random.Random) -> tuple[dict[str, Any], datetime]:
    """A policy (as JSON for node) and a verification time, varied around what the base document holds."""
    policy: dict[str, Any] = {}
    at = base.at
    if rng.random() < 0.5:
        return policy, at
    doc = base.signed.document if base.signed is not None else None
    if rng.random() < 0.3:
        index = rng.choice([0, 1, 2, 4, 15, 16, 20])
        actual = doc.pcrs.get(index) if doc else None
        policy["pcrs"] = {str(index): (actual if actual and rng.random() < 0.6 else b"\x07" * 48).hex()}
    if rng.random() < 0.25:
        policy["nonce"] = (
            doc.nonce if doc and doc.nonce is not None and rng.random() < 0.6 else b"\x09" * 8
        ).hex()
    if rng.random() < 0.15:
        key = doc.public_key if doc and doc.public_key is not None and rng.random() < 0.6 else b""
        policy["public_key"] = key.hex()
    if rng.random() < 0.15:
        policy["user_data"] = (
            doc.user_data if doc and doc.user_data and rng.random() < 0.6 else b"\x0a"
        ).hex()
    if rng.random() < 0.25:
        policy["max_age_s"] = rng.choice([0.0, 1.0, 59.5, 3600.0, 86400.0 * 30])
    if rng.random() < 0.3:
        policy["allow_debug"] = True
    shift = rng.random()
    if shift < 0.3:
        at = at + timedelta(microseconds=rng.randrange(-(10**12), 10**12))
    elif shift < 0.4 and doc is not None:
        leaf = x509.load_der_x509_certificate(doc.certificate)
        edge = rng.choice([leaf.not_valid_after_utc, leaf.not_valid_before_utc])
        at = edge + timedelta(microseconds=rng.choice([-1, 0, 1, 1000, -1000]))
    elif shift < 0.5:
        at = at + timedelta(seconds=rng.choice([-301, -300, -299.999999, 0.0005, 59.5, 60]))
    return policy, at


def _python_verdict(
    data: bytes, root: TrustedRoot, policy: dict[str, Any], at: datetime
) -> tuple[bool, str | None]:
    try:
        verify(
            data,
            Policy(
                root=root,
                expected_pcrs={int(i): bytes.fromhex(v) for i, v in policy.get("pcrs", {}).items()},
                max_age_s=policy.get("max_age_s"),
                expected_nonce=bytes.fromhex(policy["nonce"]) if "nonce" in policy else None,
                expected_public_key=bytes.fromhex(policy["public_key"]) if "public_key" in policy else None,
                expected_user_data=bytes.fromhex(policy["user_data"]) if "user_data" in policy else None,
                allow_debug=bool(policy.get("allow_debug", False)),
            ),
            at,
        )
    except AttestationError as exc:
        return False, exc.code
    return True, None


def _micros(at: datetime) -> int:
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def test_js_and_python_verifiers_agree_on_mutated_documents(tmp_path: Path) -> None:
    (tmp_path / "cases").mkdir()
    bases = _bases(tmp_path)
    roots = {
        "aws": aws_nitro_root(),
        "sim_root.pem": TrustedRoot.from_file(tmp_path / "cases" / "sim_root.pem"),
    }
    rng = random.Random(SEED)
    cases: list[dict[str, Any]] = []
    expected: dict[str, tuple[bool, str | None]] = {}
    for n in range(CASES):
        base = rng.choice(bases)
        data = base.data if rng.random() < 0.25 else _mutate(base, rng)
        root = base.root if rng.random() < 0.95 else rng.choice(sorted(roots))
        policy, at = _policy(base, rng)
        name = f"{n:04d}.bin"
        (tmp_path / "cases" / name).write_bytes(data)
        cases.append({"file": name, "root": root, "at_us": str(_micros(at)), "policy": policy})
        expected[name] = _python_verdict(data, roots[root], policy, at)
    (tmp_path / "cases" / "manifest.json").write_text(json.dumps({"cases": cases}))

    run = subprocess.run(
        ["node", str(RUNNER), str(tmp_path / "cases")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    results = {r["file"]: (r["ok"], r["code"]) for r in json.loads(run.stdout)}
    assert len(results) == CASES

    disagreements = [
        (name, want, results.get(name)) for name, want in expected.items() if results.get(name) != want
    ]
    for name, want, got in disagreements[:10]:
        print(f"{name}: python {want}, javascript {got}, case {cases[int(name[:4])]}")
    assert not disagreements, f"{len(disagreements)} of {CASES} verdicts differ (first ones printed above)"

    # The mutations reach every stage of verification, not just the decoder.
    codes = {code.split(":")[0] if code else "verified" for _, code in expected.values()}
    for stage in (
        "verified",
        "malformed",
        "bad_signature",
        "chain_broken",
        "root_not_trusted",
        "cert_expired",
    ):
        assert stage in codes, f"no case reached {stage}"
