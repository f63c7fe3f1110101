"""`verinfer attest ...`: inspect, verify and simulate attestation documents from the shell.

Exit codes: 0 verified (or done), 1 rejected (reason printed), 2 usage or I/O error.
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
from .encoding import read_document_bytes
from .errors import AttestationError
from .measure import measure_tree
from .nsm.simulator import SimulatedNsmDevice
from .roots import aws_nitro_root, resolve_root
from .sim_pki import SimulatorPki, default_directory
from .verify import Policy, VerifiedAttestation, verify

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or unreadable files: exit code 2."""


def _hex(text: str, what: str) -> bytes:
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
        pcrs[int(index)] = _hex(value, f"PCR{index}")
    return pcrs


def _read(path: str) -> bytes:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    return read_document_bytes(raw)


def _origin(doc: AttestationDocument) -> str:
    if doc.cabundle and doc.cabundle[0] == aws_nitro_root().der:
        return "AWS Nitro hardware (cabundle[0] is the AWS Nitro root G1)"
    return "SIMULATED or unknown PKI (cabundle[0] is NOT the AWS Nitro root)"


def _optional_hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def document_summary(doc: AttestationDocument) -> dict[str, Any]:
    """A JSON-ready view of a document, for people and scripts."""
    return {
        "module_id": doc.module_id,
        "timestamp_ms": doc.timestamp_ms,
        "timestamp": datetime.fromtimestamp(doc.timestamp_ms / 1000, UTC).isoformat(),
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
    print(f"timestamp:  {summary['timestamp']} ({summary['timestamp_ms']} ms)")
    print(f"debug mode: {'yes (PCR0-2 all zero)' if summary['debug_mode'] else 'no'}")
    for index, value in summary["pcrs"].items():
        if int(index) < 3 or any(c != "0" for c in value):
            print(f"PCR{index:<2}      {value}")
    for name in ("public_key", "user_data", "nonce"):
        value = summary[name]
        print(f"{name + ':':<11} {'(none)' if value is None else value}")


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        doc = decode(_read(args.file)).document
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
    if args.at_document_time:
        try:
            return datetime.fromtimestamp(decode(data).document.timestamp_ms / 1000, UTC)
        except AttestationError:
            return None  # verify() reports the decoding error with its reason
    if args.at:
        try:
            when = datetime.fromisoformat(args.at)
        except ValueError as exc:
            raise UsageError(f"--at must be ISO 8601: {args.at!r}") from exc
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    data = _read(args.file)
    try:
        root = resolve_root(args.root)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load root {args.root!r}: {exc}") from exc
    policy = Policy(
        root=root,
        expected_pcrs=pcr_args(args.pcr),
        max_age_s=args.max_age,
        expected_nonce=_hex(args.nonce, "--nonce") if args.nonce else None,
        expected_public_key=_hex(args.public_key, "--public-key") if args.public_key else None,
        expected_user_data=_hex(args.user_data, "--user-data") if args.user_data else None,
        allow_debug=args.allow_debug,
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
        user_data=_hex(args.user_data, "--user-data") if args.user_data else None,
        nonce=_hex(args.nonce, "--nonce") if args.nonce else None,
        public_key=_hex(args.public_key, "--public-key") if args.public_key else None,
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


def register(subparsers: Any) -> None:
    """Add `attest` and its subcommands to a parent argparse parser."""
    attest = subparsers.add_parser("attest", help="inspect, verify and simulate Nitro attestation documents")
    commands = attest.add_subparsers(dest="attest_command", required=True)

    inspect = commands.add_parser("inspect", help="decode a document and show its fields (no verification)")
    inspect.add_argument("file", help="document file (raw COSE bytes, hex or base64); - for stdin")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=cmd_inspect)

    check = commands.add_parser("verify", help="verify a document against a pinned root and a policy")
    check.add_argument("file", help="document file (raw COSE bytes, hex or base64); - for stdin")
    check.add_argument(
        "--root", default="aws", help="'aws' (default: the packaged AWS Nitro root) or a PEM path"
    )
    when = check.add_mutually_exclusive_group()
    when.add_argument("--at", help="verification time, ISO 8601 (default: now)")
    when.add_argument(
        "--at-document-time", action="store_true", help="verify at the document's own timestamp"
    )
    check.add_argument("--pcr", action="append", default=[], metavar="N=HEX", help="expected PCR value")
    check.add_argument("--nonce", help="expected nonce (hex)")
    check.add_argument("--public-key", help="expected public key (hex)")
    check.add_argument("--user-data", help="expected user data (hex)")
    check.add_argument("--max-age", type=float, metavar="SECONDS", help="reject documents older than this")
    check.add_argument(
        "--allow-debug", action="store_true", help="accept debug-mode (all-zero PCR0-2) enclaves"
    )
    check.add_argument("--json", action="store_true")
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
