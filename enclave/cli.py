"""`verinfer serve | verify | proxy | image measure | image stage`, and the image entry point's commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from attestation.cli import EXIT_OK, EXIT_REJECTED, UsageError, pcr_args, verification_time
from attestation.roots import resolve_root
from attestation.verify import Policy

DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "models"


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{what} must be HOST:PORT (or CID:PORT), got {text!r}")
    return host, int(port)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from attestation.nsm import NsmUnavailableError, open_nsm

    from .app import create_app
    from .image import measure_image
    from .manifest import ManifestError, load_manifest
    from .service import EnclaveService
    from .vsock import vsock_listener

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log = logging.getLogger("verinfer.serve")
    try:
        manifest = load_manifest(args.models)
    except ManifestError as exc:
        raise UsageError(str(exc)) from exc
    if args.nsm == "sim":
        measurement = measure_image(Path(args.models))
        log.warning("NSM: SIMULATOR. Attestations are SIMULATED and verify only against the simulator root.")
        log.warning("simulated PCR0 %s", measurement.pcr0.hex())
        nsm = open_nsm("sim", pki_dir=args.pki_dir, pcrs=measurement.pcrs)
    else:
        try:
            nsm = open_nsm("nitro")
        except NsmUnavailableError as exc:
            log.error("refusing to start: %s", exc)
            return 1
    service = EnclaveService(manifest, nsm)
    app = create_app(service, max_body=args.max_body)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if args.vsock is not None:
        try:
            sock = vsock_listener(args.vsock)
        except OSError as exc:
            log.error("cannot listen on vsock port %d: %s", args.vsock, exc)
            return 1
        log.info("serving on vsock port %d as enclave %s", args.vsock, service.address)
        server.run(sockets=[sock])
    else:
        log.info("serving on http://%s:%d as enclave %s", args.host, args.port, service.address)
        server.run()
    return EXIT_OK


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from exc


def cmd_verify(args: argparse.Namespace) -> int:
    from .manifest import ManifestError
    from .verifier import load_attestation, manifest_from_json, verify_inference

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


def cmd_proxy(args: argparse.Namespace) -> int:
    from .vsock import start_proxy, tcp_connector, vsock_connector

    host, port = _host_port(args.listen, "--listen")
    if args.vsock:
        cid, vport = _host_port(args.vsock, "--vsock")
        if not cid.isdigit():
            raise UsageError("--vsock takes CID:PORT with a numeric CID")
        connect = vsock_connector(int(cid), vport)
        target = f"vsock {cid}:{vport}"
    else:
        upstream_host, upstream_port = _host_port(args.upstream, "--upstream")
        connect = tcp_connector(upstream_host, upstream_port)
        target = f"tcp {args.upstream}"

    async def main() -> None:
        server = await start_proxy(host, port, connect)
        print(f"proxy: {args.listen} -> {target}", file=sys.stderr, flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return EXIT_OK


def cmd_measure(args: argparse.Namespace) -> int:
    from .hashing import keccak256
    from .image import SOURCE_ROOT, measure_image

    root = Path(args.root) if args.root else SOURCE_ROOT
    models = Path(args.models) if args.models else root / "models"
    measurement = measure_image(models, root)
    image_id = "0x" + keccak256(measurement.pcr0 + measurement.pcr1 + measurement.pcr2).hex()
    if args.json:
        pcrs = {str(i): v.hex() for i, v in measurement.pcrs.items()}
        print(json.dumps({"pcrs": pcrs, "imageId": image_id, "files": list(measurement.files)}, indent=2))
    else:
        for index, value in measurement.pcrs.items():
            print(f"PCR{index} {value.hex()}")
        print(f"imageId {image_id}   (keccak256(PCR0 || PCR1 || PCR2), what the contract approves)")
        print(f"{len(measurement.files)} files measured (simulator PCRs; hardware ones come from nitro-cli)")
    return EXIT_OK


def cmd_stage(args: argparse.Namespace) -> int:
    from .image import SOURCE_ROOT, stage_context

    models = Path(args.models) if args.models else SOURCE_ROOT / "models"
    measurement = stage_context(Path(args.dest), models_dir=models)
    print(f"staged {len(measurement.files)} files in {args.dest} (PCR0 {measurement.pcr0.hex()})")
    return EXIT_OK


def register_measure(subparsers: Any, name: str) -> None:
    measure = subparsers.add_parser(name, help="the image measurement the simulator reports as PCR0-2")
    measure.add_argument("--root", help="source (or image /app) root; default: this installation")
    measure.add_argument("--models", help="models directory; default: ROOT/models")
    measure.add_argument("--json", action="store_true")
    measure.set_defaults(handler=cmd_measure)


def register_serve(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the enclave inference server")
    where = serve.add_mutually_exclusive_group()
    where.add_argument(
        "--vsock", type=int, metavar="PORT", help="listen on AF_VSOCK (inside a Nitro enclave)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--nsm",
        choices=("sim", "nitro"),
        default="sim",
        help="NSM backend: 'nitro' needs /dev/nsm and never falls back; 'sim' is development only",
    )
    serve.add_argument(
        "--models", default=str(DEFAULT_MODELS), help="directory with manifest.json and ONNX files"
    )
    serve.add_argument("--pki-dir", default=None, help="simulator PKI directory (with --nsm sim)")
    serve.add_argument("--max-body", type=int, default=4 * 1024 * 1024, metavar="BYTES")
    serve.set_defaults(handler=cmd_serve)


def register(subparsers: Any) -> None:
    register_serve(subparsers)
    image = subparsers.add_parser("image", help="the enclave image: measurement and build context")
    image_commands = image.add_subparsers(dest="image_command", required=True)
    register_measure(image_commands, "measure")
    stage = image_commands.add_parser(
        "stage", help="write Dockerfile.enclave's build context (exactly the image)"
    )
    stage.add_argument("dest")
    stage.add_argument("--models", help="models directory (default: the repository's models/)")
    stage.set_defaults(handler=cmd_stage)

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

    proxy = subparsers.add_parser("proxy", help="forward TCP to an enclave's vsock port (runs on the parent)")
    proxy.add_argument("--listen", required=True, metavar="HOST:PORT")
    target = proxy.add_mutually_exclusive_group(required=True)
    target.add_argument("--vsock", metavar="CID:PORT")
    target.add_argument("--upstream", metavar="HOST:PORT", help="forward to TCP instead (testing)")
    proxy.set_defaults(handler=cmd_proxy)
