"""`verinfer attest ...`: inspect, verify and simulate attestation documents from the shell.

Exit codes: 0 verified (or done), 1 rejected (reason printed), 2 usage or I/O error.

`add_policy_options` and `policy_from_args` define the verification options (root, PCRs, time, debug,
nonce, freshness, --json) once, for every command that verifies a document: `attest verify` here,
`verinfer verify`, and the relay's commands.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .document import AttestationDocument, decode
from .encoding import DocumentFormatError, read_document_bytes
from .errors import AttestationError
from .measure import measure_tree
from .nsm.simulator import SimulatedNsmDevice
from .roots import TrustedRoot, aws_nitro_root, resolve_root
from .sim_pki import SimulatorPki, default_directory
from .verify import Policy, VerifiedAttestation, verify

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or unreadable files: exit code 2."""


def hex_arg(text: str, what: str) -> bytes:
    """Hex (optional 0x) from the command line, or a UsageError naming the option."""
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError as exc:
        raise UsageError(f"{what} must be hex: {text!r}") from exc


def pcr_args(items: list[str]) -> dict[int, bytes]:
    pcrs: dict[int, bytes] = {}
    for item in items:
        index, sep, value = item.partition("=")
        if not sep or not index.isdigit():
            raise UsageError(f"--pcr takes N=HEX, got {item!r}")
        pcrs[int(index)] = hex_arg(value, f"PCR{index}")
    return pcrs


def read_document(path: str) -> bytes:
    """A document file in any form `read_document_bytes` reads (- for stdin), or a UsageError."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    try:
        return read_document_bytes(raw)
    except DocumentFormatError as exc:
        raise UsageError(f"{path}: {exc}") from exc


def _origin(doc: AttestationDocument) -> str:
    if doc.cabundle and doc.cabundle[0] == aws_nitro_root().der:
        return "AWS Nitro hardware (cabundle[0] is the AWS Nitro root G1)"
    return "SIMULATED or unknown PKI (cabundle[0] is NOT the AWS Nitro root)"


def _optional_hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def timestamp_of(timestamp_ms: int) -> datetime | None:
    """The UTC time of a document timestamp, or None when it is past what datetime holds (year 9999)."""
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def document_summary(doc: AttestationDocument) -> dict[str, Any]:
    """A JSON-ready view of a document, for people and scripts ("timestamp" is null when out of range)."""
    when = timestamp_of(doc.timestamp_ms)
    return {
        "module_id": doc.module_id,
        "timestamp_ms": doc.timestamp_ms,
        "timestamp": None if when is None else when.isoformat(),
        "digest": doc.digest,
        "pcrs": {str(i): v.hex() for i, v in sorted(doc.pcrs.items())},
        "debug_mode": doc.is_debug,
        "public_key": _optional_hex(doc.public_key),
        "user_data": _optional_hex(doc.user_data),
        "nonce": _optional_hex(doc.nonce),
        "cabundle_length": len(doc.cabundle),
        "origin": _origin(doc),
        "simulated": not (doc.cabundle and doc.cabundle[0] == aws_nitro_root().der),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    if summary["simulated"]:
        print("*** SIMULATED: not produced by AWS Nitro hardware ***")
    print(f"origin:     {summary['origin']}")
    print(f"module_id:  {summary['module_id']}")
    shown = summary["timestamp"] or "OUT OF RANGE (past year 9999)"
    print(f"timestamp:  {shown} ({summary['timestamp_ms']} ms)")
    print(f"debug mode: {'yes (PCR0-2 all zero)' if summary['debug_mode'] else 'no'}")
    for index, value in summary["pcrs"].items():
        if int(index) < 3 or any(c != "0" for c in value):
            print(f"PCR{index:<2}      {value}")
    for name in ("public_key", "user_data", "nonce"):
        value = summary[name]
        print(f"{name + ':':<11} {'(none)' if value is None else value}")


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        doc = decode(read_document(args.file)).document
    except AttestationError as exc:
        print(f"REJECTED {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_REJECTED
    summary = document_summary(doc)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return EXIT_OK


def verification_time(args: argparse.Namespace, data: bytes) -> datetime | None:
    """The time --at or --at-document-time asks for; None for now."""
    if getattr(args, "at_document_time", False):
        try:
            timestamp_ms = decode(data).document.timestamp_ms
        except AttestationError:
            return None  # verify() reports the decoding error with its reason
        when = timestamp_of(timestamp_ms)
        if when is None:
            raise UsageError(f"the document's timestamp ({timestamp_ms} ms) is past year 9999: give --at")
        return when
    if getattr(args, "at", None):
        try:
            when = datetime.fromisoformat(args.at)
        except ValueError as exc:
            raise UsageError(f"--at must be ISO 8601: {args.at!r}") from exc
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None


def root_arg(value: str | None) -> TrustedRoot:
    """--root: 'aws' (also the default, None) or the path of a PEM root certificate."""
    try:
        return resolve_root(value or "aws")
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load root {value!r}: {exc}") from exc


def policy_from_args(args: argparse.Namespace, **overrides: Any) -> Policy:
    """The Policy the options of `add_policy_options` describe; `overrides` replace Policy fields.

    Reads only the options the parser has (a command without --nonce simply has no nonce)."""
    nonce = getattr(args, "nonce", None)
    fields: dict[str, Any] = {
        "root": root_arg(getattr(args, "root", None)),
        "expected_pcrs": pcr_args(getattr(args, "pcr", None) or []),
        "max_age_s": getattr(args, "max_age", None),
        "expected_nonce": hex_arg(nonce, "--nonce") if nonce else None,
        "allow_debug": bool(getattr(args, "allow_debug", False)),
    }
    return Policy(**{**fields, **overrides})


def add_policy_options(
    parser: argparse.ArgumentParser,
    *,
    at: bool = True,
    freshness: bool = True,
    max_age: float | None = None,
    json_output: bool = True,
) -> None:
    """The options every document-verifying command shares, defined once.

    Always --root, --pcr (repeatable), --allow-debug; with `at`, --at / --at-document-time (exclusive);
    with `freshness`, --nonce and --max-age (default `max_age`); with `json_output`, --json.
    Build the Policy with `policy_from_args` and the time with `verification_time`."""
    policy = parser.add_argument_group("attestation policy")
    policy.add_argument(
        "--root",
        default=None,
        metavar="aws|PEM",
        help="trusted root: 'aws' (default: the packaged AWS Nitro root G1) or a PEM path "
        "(the simulator's root.pem)",
    )
    policy.add_argument(
        "--pcr",
        action="append",
        default=[],
        metavar="N=HEX",
        help="expected PCR value (repeatable)",
    )
    policy.add_argument(
        "--allow-debug", action="store_true", help="accept debug-mode enclaves (all-zero PCR0-2)"
    )
    if freshness:
        policy.add_argument("--nonce", metavar="HEX", help="the document must carry this nonce (yours)")
        policy.add_argument(
            "--max-age",
            type=float,
            default=max_age,
            metavar="SECONDS",
            help="reject documents older than this"
            + (f" (default {max_age:g})" if max_age is not None else ""),
        )
    if at:
        when = policy.add_mutually_exclusive_group()
        when.add_argument("--at", metavar="ISO8601", help="verification time (default: now)")
        when.add_argument(
            "--at-document-time", action="store_true", help="verify at the document's own timestamp"
        )
    if json_output:
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_verify(args: argparse.Namespace) -> int:
    data = read_document(args.file)
    policy = policy_from_args(
        args,
        expected_public_key=hex_arg(args.public_key, "--public-key") if args.public_key else None,
        expected_user_data=hex_arg(args.user_data, "--user-data") if args.user_data else None,
    )
    try:
        result = verify(data, policy, verification_time(args, data))
    except AttestationError as exc:
        if args.json:
            print(json.dumps({"verified": False, "reason": exc.code, "detail": exc.detail}))
        else:
            print(f"REJECTED {exc.code}: {exc.detail}")
        return EXIT_REJECTED
    report = _verified_report(result)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"VERIFIED against {result.root_label}" + (" [SIMULATED]" if result.simulated else ""))
        _print_summary(document_summary(decode(data).document))
        print("chain:      " + "\n            ".join(result.chain_subjects))
    return EXIT_OK


def _verified_report(result: VerifiedAttestation) -> dict[str, Any]:
    return {
        "verified": True,
        "simulated": result.simulated,
        "root": result.root_label,
        "module_id": result.module_id,
        "timestamp_ms": result.timestamp_ms,
        "debug_mode": result.debug,
        "pcrs": {str(i): v.hex() for i, v in sorted(result.pcrs.items())},
        "public_key": _optional_hex(result.public_key),
        "user_data": _optional_hex(result.user_data),
        "nonce": _optional_hex(result.nonce),
        "chain_subjects": list(result.chain_subjects),
    }


def cmd_simulate(args: argparse.Namespace) -> int:
    pcrs = pcr_args(args.pcr)
    if args.measure:
        try:
            measured = measure_tree(args.measure, app=args.app or ["."], boot=args.boot)
            pcrs = {**measured.pcrs, **pcrs}
        except OSError as exc:
            raise UsageError(f"cannot measure {args.measure}: {exc}") from exc
    pki = SimulatorPki(args.pki_dir)
    try:
        device = SimulatedNsmDevice(pki, pcrs, indefinite_payload=args.indefinite)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    document = device.sign_document(
        user_data=hex_arg(args.user_data, "--user-data") if args.user_data else None,
        nonce=hex_arg(args.nonce, "--nonce") if args.nonce else None,
        public_key=hex_arg(args.public_key, "--public-key") if args.public_key else None,
    )
    encoded = {
        "raw": document,
        "hex": document.hex().encode() + b"\n",
        "base64": base64.b64encode(document) + b"\n",
    }[args.format]
    if args.out:
        Path(args.out).write_bytes(encoded)
    else:
        sys.stdout.buffer.write(encoded)
        sys.stdout.flush()
    print(
        f"SIMULATED attestation document ({len(document)} bytes); "
        f"pin its root with --root {pki.root_pem_path}",
        file=sys.stderr,
    )
    return EXIT_OK


DOCUMENT_FORMS = "raw COSE bytes, hex, base64, or the JSON of GET /attestation"


def _help(parser: argparse.ArgumentParser) -> int:
    """A command group run without its subcommand: its help, and the usage exit code."""
    parser.print_help()
    return EXIT_USAGE


def register(subparsers: Any) -> None:
    """Add `attest` and its subcommands to a parent argparse parser."""
    attest = subparsers.add_parser(
        "attest",
        help="inspect, verify and simulate Nitro attestation documents",
        description="Inspect, verify and simulate AWS Nitro attestation documents. "
        f"A document file may be {DOCUMENT_FORMS}.",
    )
    commands = attest.add_subparsers(dest="attest_command", metavar="{inspect,verify,simulate}")
    attest.set_defaults(handler=lambda _args: _help(attest))

    inspect = commands.add_parser("inspect", help="decode a document and show its fields (no verification)")
    inspect.add_argument("file", help=f"document file: {DOCUMENT_FORMS}; - for stdin")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=cmd_inspect)

    check = commands.add_parser("verify", help="verify a document against a pinned root and a policy")
    check.add_argument("file", help=f"document file: {DOCUMENT_FORMS}; - for stdin")
    add_policy_options(check)
    check.add_argument("--public-key", metavar="HEX", help="expected public key")
    check.add_argument("--user-data", metavar="HEX", help="expected user data")
    check.set_defaults(handler=cmd_verify)

    simulate = commands.add_parser("simulate", help="produce a SIMULATED document signed by the dev PKI")
    simulate.add_argument(
        "--pki-dir", default=None, help=f"simulator PKI directory (default {default_directory()})"
    )
    simulate.add_argument("--measure", metavar="DIR", help="image root to measure into PCR0-2")
    simulate.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="PATH",
        help="application paths under DIR (PCR2; default: all)",
    )
    simulate.add_argument(
        "--boot", action="append", default=[], metavar="PATH", help="boot paths under DIR (PCR1)"
    )
    simulate.add_argument("--pcr", action="append", default=[], metavar="N=HEX", help="set a PCR below 16")
    simulate.add_argument("--public-key", help="public key to bind (hex)")
    simulate.add_argument("--user-data", help="user data to bind (hex)")
    simulate.add_argument("--nonce", help="nonce to bind (hex)")
    simulate.add_argument(
        "--indefinite", action="store_true", help="encode the payload map with indefinite length"
    )
    simulate.add_argument("--format", choices=("raw", "hex", "base64"), default="raw")
    simulate.add_argument("-o", "--out", help="output file (default stdout)")
    simulate.set_defaults(handler=cmd_simulate)
