"""`verinfer verify`: check an inference receipt offline against an attestation document."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from attestation.cli import EXIT_OK, EXIT_REJECTED, UsageError, pcr_args, verification_time
from attestation.roots import resolve_root
from attestation.verify import Policy


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from exc


def cmd_verify(args: argparse.Namespace) -> int:
    from protocol.manifest import ManifestError

    from .verify import load_attestation, manifest_from_json, verify_inference

    response = _read_json(args.response, "response")
    request = _read_json(args.request, "request") if args.request else None
    try:
        attestation = load_attestation(Path(args.attestation).read_bytes())
        manifest = manifest_from_json(_read_json(args.manifest, "manifest")) if args.manifest else None
        root = resolve_root(args.root)
    except (OSError, ValueError, ManifestError) as exc:
        raise UsageError(str(exc)) from exc
    policy = Policy(root=root, expected_pcrs=pcr_args(args.pcr), allow_debug=args.allow_debug)
    report = verify_inference(
        response,
        attestation,
        policy=policy,
        at=verification_time(args, attestation),
        request=request,
        manifest=manifest,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for check in report.checks:
            print(f"[{check.status.upper():>7}] {check.name:<12} {check.detail}")
        verdict = "VERIFIED" if report.ok else "REJECTED"
        print(verdict + (" [SIMULATED attestation: not hardware]" if report.simulated else ""))
    return EXIT_OK if report.ok else EXIT_REJECTED


def register(subparsers: Any) -> None:
    check = subparsers.add_parser("verify", help="verify an inference receipt offline against an attestation")
    check.add_argument(
        "response", help="JSON response of /infer or /v2/models/NAME/infer (or a bare receipt)"
    )
    check.add_argument(
        "--attestation", required=True, help="/attestation JSON, or the raw/hex/base64 document"
    )
    check.add_argument("--request", help="the request JSON that produced the response (checks inputHash)")
    check.add_argument("--manifest", help="model manifest JSON (GET /models or models/manifest.json)")
    check.add_argument("--root", default="aws", help="'aws' or a PEM path (the simulator's root.pem)")
    check.add_argument("--pcr", action="append", default=[], metavar="N=HEX", help="expected PCR value")
    check.add_argument("--allow-debug", action="store_true")
    when = check.add_mutually_exclusive_group()
    when.add_argument("--at", help="verification time for the attestation, ISO 8601 (default now)")
    when.add_argument("--at-document-time", action="store_true")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=cmd_verify)
