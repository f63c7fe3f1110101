"""`verinfer verify`: check an inference receipt offline against an attestation document."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from attestation.cli import (
    DOCUMENT_FORMS,
    EXIT_OK,
    EXIT_REJECTED,
    UsageError,
    add_policy_options,
    pcr_args,
    policy_from_args,
    verification_time,
)

DESCRIPTION = """\
Verify an inference offline: the attestation chains to the pinned root and matches the pinned image, it
binds the key that signed the receipt, the signature recovers, outputHash and inputHash recompute, the
answer is from the model the request names ("model", or --model NAME for a V2 request) and the receipt's
modelHash is that model's sha256 in the attested manifest, and the receipt's requestId is the request's
request_id ("request_id", V2 "parameters.request_id") when the request sets one. Without --manifest, a
request whose tensors state name, datatype and shape is still hashed; other inputs are reported skipped.

The verdict is VERIFIED only when no check fails AND the image is pinned, by PCR0, PCR1 and PCR2 together
(--pcr), by --image-id, or by a --policy file. Without a pin it is UNPINNED (exit 1); --allow-any-image
accepts any image and says so ("VERIFIED (ANY IMAGE: not pinned)", "pinned": false in --json).

Exit codes: 0 VERIFIED, 1 REJECTED or UNPINNED, 2 usage or I/O error.

Policy file (--policy FILE), JSON, every key optional, unknown keys rejected:
  {
    "root": "aws",                        or a PEM path, relative to the policy file
    "pcrs": {"0": "HEX", "1": "HEX", "2": "HEX"},
    "image_ids": ["0xHEX"],               keccak256(PCR0 || PCR1 || PCR2); any of them is accepted
    "allow_debug": false,
    "max_age_s": 600                      maximum attestation age, seconds
  }
Options given on the command line win: --root and --max-age replace the file's, --pcr N replaces the file's
PCR N, --image-id (if any) replaces the file's image_ids, --allow-debug turns debug mode on.
"""


def _read_json(path: str, what: str) -> Any:
    return _loads(_read_bytes(path, what), path, what)


def _read_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from exc


def _loads(raw: bytes, path: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from exc


def _pinning(args: argparse.Namespace) -> tuple[Any, list[bytes]]:
    from .verify import PolicyFile, load_policy, parse_image_id

    try:
        pinned = load_policy(args.policy) if args.policy else PolicyFile()
        flag_images = [parse_image_id(value) for value in args.image_id]
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    args.root = args.root or pinned.root
    policy = policy_from_args(
        args,
        expected_pcrs={**pinned.pcrs, **pcr_args(args.pcr)},
        allow_debug=args.allow_debug or pinned.allow_debug,
        max_age_s=args.max_age if args.max_age is not None else pinned.max_age_s,
    )
    return policy, flag_images or list(pinned.image_ids)


def _key_configs(args: argparse.Namespace) -> bytes | None:
    """The `ohttpKeys` of a GET /attestation JSON answer, if the attestation file is one."""
    import base64
    import binascii

    raw = _read_bytes(args.attestation, "attestation")
    if not raw.lstrip().startswith(b"{"):
        return None
    value = _loads(raw, args.attestation, "attestation").get("ohttpKeys")
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise UsageError(f"ohttpKeys in {args.attestation} is not base64: {exc}") from exc


def _evidence(args: argparse.Namespace) -> tuple[bytes, Any]:
    """The attestation document and, if given, the manifest."""
    from protocol.manifest import ManifestError

    from .verify import load_attestation, manifest_from_json

    try:
        attestation = load_attestation(Path(args.attestation).read_bytes())
        manifest = manifest_from_json(_read_json(args.manifest, "manifest")) if args.manifest else None
    except (OSError, ValueError, ManifestError) as exc:
        raise UsageError(str(exc)) from exc
    return attestation, manifest


def _verify_llm(args: argparse.Namespace, response: bytes) -> int:
    from .verify_llm import verify_completion

    request = _read_bytes(args.request, "request") if args.request else None
    attestation, manifest = _evidence(args)
    policy, image_ids = _pinning(args)
    report = verify_completion(
        request,
        response,
        attestation,
        policy=policy,
        at=verification_time(args, attestation),
        manifest=manifest,
        image_ids=image_ids,
        allow_any_image=args.allow_any_image,
        salt=_salt(args),
        key_configs=_key_configs(args),
    )
    return _print_report(args, report)


def _salt(args: argparse.Namespace) -> bytes | None:
    """--salt: the commitment salt of a sealed request (its Verinfer-Input-Salt)."""
    if args.salt is None:
        return None
    try:
        salt = bytes.fromhex(args.salt.removeprefix("0x"))
    except ValueError as exc:
        raise UsageError(f"--salt is not hex: {exc}") from exc
    if len(salt) != 32:
        raise UsageError("--salt is 32 bytes (64 hex digits)")
    return salt


def _print_report(args: argparse.Namespace, report: Any) -> int:
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for check in report.checks:
            print(f"[{check.status.upper():>7}] {check.name:<12} {check.detail}")
        print(report.verdict_line)
    return EXIT_OK if report.verified else EXIT_REJECTED


SIGNER = re.compile(rb'"enclave"\s*:\s*"(0x[0-9a-fA-F]{40})"')


def signer_of(raw_response: bytes) -> str | None:
    """The enclave address the answer's (last) receipt names: which enclave of a fleet to attest. Only
    routing: the verification itself checks the signature against the document fetched."""
    found = SIGNER.findall(raw_response)
    return found[-1].decode() if found else None


def fetch_evidence(args: argparse.Namespace, raw_response: bytes, folder: Path) -> str | None:
    """--enclave URL: GET /attestation with a fresh nonce of ours (and `signer`, the enclave that signed
    this answer, so behind a load balancer the right enclave answers), and GET /models when no --manifest.
    The answers become --attestation, --manifest and --nonce. Returns why it failed, or None."""
    import secrets

    import httpx

    url = args.enclave.rstrip("/")
    nonce = args.nonce or secrets.token_hex(32)
    params = {"nonce": nonce}
    if (signer := signer_of(raw_response)) is not None:
        params["signer"] = signer
    try:
        attestation = httpx.get(f"{url}/attestation", params=params, timeout=30)
        if attestation.status_code == 404 and signer is not None:
            return f"no enclave behind {url} signs as {signer}"
        attestation.raise_for_status()
        (folder / "attestation.json").write_bytes(attestation.content)
        if not args.manifest:
            models = httpx.get(f"{url}/models", timeout=30)
            models.raise_for_status()
            (folder / "models.json").write_bytes(models.content)
            args.manifest = str(folder / "models.json")
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot fetch the attestation from {url}: {exc}") from exc
    args.attestation = str(folder / "attestation.json")
    args.nonce = nonce
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    raw_response = _read_bytes(args.response, "response")
    if args.enclave is None:
        return _verify(args, raw_response)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        if (failure := fetch_evidence(args, raw_response, Path(folder))) is not None:
            print(f"REJECTED: {failure}")
            return EXIT_REJECTED
        return _verify(args, raw_response)


def _verify(args: argparse.Namespace, raw_response: bytes) -> int:
    from .verify import verify_inference
    from .verify_llm import is_completion, is_sse

    if is_sse(raw_response):
        return _verify_llm(args, raw_response)
    response = _loads(raw_response, args.response, "response")
    if is_completion(response):
        return _verify_llm(args, raw_response)
    request = _read_json(args.request, "request") if args.request else None
    attestation, manifest = _evidence(args)
    policy, image_ids = _pinning(args)
    report = verify_inference(
        response,
        attestation,
        policy=policy,
        at=verification_time(args, attestation),
        request=request,
        manifest=manifest,
        model=args.model,
        image_ids=image_ids,
        allow_any_image=args.allow_any_image,
        salt=_salt(args),
        key_configs=_key_configs(args),
    )
    return _print_report(args, report)


def add_pin_options(parser: argparse.ArgumentParser, title: str) -> None:
    """--image-id, --policy and --allow-any-image: how a command is told which image to trust."""
    pins = parser.add_argument_group(title)
    pins.add_argument(
        "--image-id",
        action="append",
        default=[],
        metavar="0xHEX",
        help="accepted image, keccak256(PCR0 || PCR1 || PCR2) as the contract approves it (repeatable: any)",
    )
    pins.add_argument("--policy", metavar="FILE", help="JSON policy file (format: `verinfer verify --help`)")
    pins.add_argument(
        "--allow-any-image",
        action="store_true",
        help="accept an unpinned image, and say so (VERIFIED (ANY IMAGE: not pinned))",
    )


def register(subparsers: Any) -> None:
    check = subparsers.add_parser(
        "verify",
        help="verify an inference receipt offline against an attestation and a pinned image",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "response",
        help="JSON response of /infer or /v2/models/NAME/infer (or a bare receipt), or of /v1/completions"
        " or /v1/chat/completions (JSON, or the saved SSE transcript of a streamed one)",
    )
    evidence = check.add_mutually_exclusive_group(required=True)
    evidence.add_argument("--attestation", metavar="FILE", help=f"the document: {DOCUMENT_FORMS}")
    evidence.add_argument(
        "--enclave",
        metavar="URL",
        help="fetch the document now, with a fresh nonce, from the enclave that signed the answer"
        " (GET /attestation?signer=: any enclave of a fleet behind one URL), and GET /models",
    )
    check.add_argument(
        "--request",
        metavar="FILE",
        help="the request JSON that produced the response: checks inputHash, the model and request_id"
        " (for a /v1 completion: the exact request body bytes sent)",
    )
    check.add_argument(
        "--manifest", metavar="FILE", help="model manifest JSON (GET /models or models/manifest.json)"
    )
    check.add_argument(
        "--model",
        metavar="NAME",
        help="the model the request was sent to, when the request does not say (V2: the NAME in the URL)",
    )
    check.add_argument(
        "--salt",
        metavar="0xHEX",
        help="a sealed request's commitment salt (its Verinfer-Input-Salt); the receipt commits to it",
    )
    add_pin_options(check, "image pin (one is required for VERIFIED)")
    add_policy_options(check)
    check.set_defaults(handler=cmd_verify)
