"""`serve` and `image measure`: the commands that run inside the image (`python -m enclave`) and from
`verinfer`. Host-side commands (verify, proxy, image stage) live in verinfer/cli.py, outside the image."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import IO, Any

from attestation.cli import EXIT_OK, UsageError
from protocol.inputs import MAX_BATCH_ELEMENTS, OVERFLOW_WARNING

DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "models"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from attestation.nsm import NsmUnavailableError, open_nsm
    from protocol.edge import AccessLog
    from protocol.manifest import ManifestError, load_manifest

    from .app import create_app
    from .batch_access import BatchAccess
    from .image import measure_image
    from .llm_service import load_llm
    from .service import EnclaveService
    from .vsock import vsock_listener

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # A client's out-of-range float is a 400 invalid_value, not something for the server's log.
    warnings.filterwarnings("ignore", message=OVERFLOW_WARNING, category=RuntimeWarning)
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
    batch_access = BatchAccess(_batch_token_digest(args.batch_token_sha256), rate_per_s=args.batch_rate)
    service = EnclaveService(manifest, nsm)
    llm = None
    if not args.no_llm:
        llm = load_llm(
            service,
            max_batch=args.llm_max_batch,
            max_context=args.llm_context,
            queue_limit=args.llm_queue,
            threads=args.llm_threads,
            checkpoint_tokens=args.llm_checkpoint_tokens,
            spin=not args.llm_no_spin,
        )
        if llm is not None:
            log.info("LLM %s served on /v1 (%d-token context)", llm.name, args.llm_context)
    app = create_app(
        service,
        max_body=args.max_body,
        max_elements=args.max_elements,
        batch_access=batch_access,
        access_log=AccessLog(_access_log_stream(args.access_log)),
        llm=llm,
    )
    if not batch_access.enabled:
        log.info("POST /receipts/batch is disabled (no --batch-token-sha256)")
    # No "server: uvicorn" header: it only helps fingerprinting, and each header costs uvicorn per response.
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, server_header=False
    )
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


def _access_log_stream(where: str) -> IO[str] | None:
    if where == "off":
        return None
    if where == "-":
        return sys.stderr
    try:
        return Path(where).open("a", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot open the access log {where}: {exc}") from exc


def _batch_token_digest(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        digest = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise UsageError("--batch-token-sha256 takes the 64-hex-digit sha256 of the relay's token")
    return digest


def cmd_measure(args: argparse.Namespace) -> int:
    from protocol.images import image_id

    from .image import SOURCE_ROOT, measure_image

    root = Path(args.root) if args.root else SOURCE_ROOT
    models = Path(args.models) if args.models else root / "models"
    measurement = measure_image(models, root)
    image = "0x" + image_id(measurement.pcrs).hex()
    if args.json:
        pcrs = {str(i): v.hex() for i, v in measurement.pcrs.items()}
        print(json.dumps({"pcrs": pcrs, "imageId": image, "files": list(measurement.files)}, indent=2))
    else:
        for index, value in measurement.pcrs.items():
            print(f"PCR{index} {value.hex()}")
        print(f"imageId {image}   (keccak256(PCR0 || PCR1 || PCR2), what the contract approves)")
        print(f"{len(measurement.files)} files measured (simulator PCRs; hardware ones come from nitro-cli)")
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
    serve.add_argument(
        "--max-body", type=int, default=4 * 1024 * 1024, metavar="BYTES", help="request body limit (413)"
    )
    serve.add_argument(
        "--max-elements",
        type=int,
        default=MAX_BATCH_ELEMENTS,
        metavar="N",
        help="most tensor elements one request may carry (400 tensor_too_large)",
    )
    serve.add_argument(
        "--batch-token-sha256",
        default=os.environ.get("VERINFER_BATCH_TOKEN_SHA256"),
        metavar="HEX",
        help="sha256 of the relay's bearer token for POST /receipts/batch (env VERINFER_BATCH_TOKEN_SHA256);"
        " without it the route is disabled",
    )
    serve.add_argument(
        "--access-log",
        default="-",
        metavar="PATH",
        help="one line per request: '-' for stderr (default), a file to append to, or 'off'",
    )
    serve.add_argument(
        "--batch-rate", type=float, default=2.0, metavar="PER_S", help="receipt batches per second"
    )
    llm = serve.add_argument_group("LLM (the manifest's text-generation model, on /v1)")
    llm.add_argument("--no-llm", action="store_true", help="do not load the manifest's LLM")
    llm.add_argument("--llm-threads", type=int, default=None, metavar="N", help="default: all CPUs")
    llm.add_argument(
        "--llm-no-spin",
        action="store_true",
        help="onnxruntime's threads sleep between kernels instead of spinning (for a shared host)",
    )
    llm.add_argument(
        "--llm-max-batch", type=int, default=4, metavar="N", help="sequences decoded together (default 4)"
    )
    llm.add_argument(
        "--llm-context",
        type=int,
        default=2048,
        metavar="TOKENS",
        help="context window served (prompt + output)",
    )
    llm.add_argument(
        "--llm-queue", type=int, default=16, metavar="N", help="requests waiting beyond the batch (then 429)"
    )
    llm.add_argument(
        "--llm-checkpoint-tokens",
        type=int,
        default=32,
        metavar="N",
        help="streamed completions carry a signed checkpoint receipt every N tokens",
    )
    serve.set_defaults(handler=cmd_serve)


def register(subparsers: Any) -> None:
    register_serve(subparsers)
