"""`serve` and `image measure`: the commands that run inside the image (`python -m enclave`) and from
`verinfer`. Host-side commands (verify, proxy, image stage) live in verinfer/cli.py, outside the image."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from attestation.cli import EXIT_OK, UsageError
from protocol.inputs import OVERFLOW_WARNING

if TYPE_CHECKING:
    from .settings import ServeSettings


def cmd_serve(args: argparse.Namespace) -> int:
    from .settings import ServeSettings, SettingsError, load_settings

    given = {name: value for name, value in vars(args).items() if name in ServeSettings.model_fields}
    try:
        settings = load_settings(given)
    except SettingsError as exc:
        raise UsageError(str(exc)) from exc
    if settings.nsm is None:
        raise UsageError(
            "serve needs --nsm nitro (inside a Nitro enclave) or --nsm sim (development: simulated "
            "attestation), or VERINFER_NSM"
        )
    return serve(settings)


def serve(settings: ServeSettings) -> int:
    """Run the server until SIGTERM/SIGINT, then give open requests `shutdown_timeout` seconds."""
    import uvicorn

    from attestation.nsm import NsmUnavailableError, open_nsm
    from protocol.edge import AccessLog
    from protocol.manifest import ManifestError, load_manifest

    from .app import create_app
    from .batch_access import BatchAccess
    from .batcher import BatchPolicy
    from .http_protocol import Arrivals, counting_protocol
    from .image import measure_image
    from .llm_service import load_llm
    from .operations import ReportingServer, http_url, tcp_listener, with_cors
    from .service import EnclaveService
    from .vsock import vsock_listener

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # A client's out-of-range float is a 400 invalid_value, not something for the server's log.
    warnings.filterwarnings("ignore", message=OVERFLOW_WARNING, category=RuntimeWarning)
    log = logging.getLogger("verinfer.serve")
    try:
        manifest = load_manifest(settings.models)
    except ManifestError as exc:
        raise UsageError(str(exc)) from exc
    if settings.nsm == "sim":
        measurement = measure_image(settings.models)
        log.warning("NSM: SIMULATOR. Attestations are SIMULATED and verify only against the simulator root.")
        log.warning("simulated PCR0 %s", measurement.pcr0.hex())
        nsm = open_nsm("sim", pki_dir=settings.pki_dir, pcrs=measurement.pcrs)
        nsm_name = "SIMULATED NSM"
    else:
        try:
            nsm = open_nsm("nitro")
        except NsmUnavailableError as exc:
            log.error("refusing to start: %s", exc)
            return 1
        log.warning("NSM: nitro (/dev/nsm). Attestations are signed by the Nitro hypervisor.")
        nsm_name = "nitro NSM"
    batch_access = BatchAccess(
        _batch_token_digest(settings.batch_token_sha256), rate_per_s=settings.batch_rate
    )
    service = EnclaveService(manifest, nsm)
    llm = None
    if not settings.no_llm:
        llm = load_llm(
            service,
            max_batch=settings.llm_max_batch,
            max_context=settings.llm_context,
            queue_limit=settings.llm_queue,
            threads=settings.llm_threads,
            checkpoint_tokens=settings.llm_checkpoint_tokens,
            spin=not settings.llm_no_spin,
        )
        if llm is not None:
            log.info("LLM %s served on /v1 (%d-token context)", llm.name, settings.llm_context)
    batching = (
        BatchPolicy(max_batch=settings.infer_max_batch, window_s=settings.infer_batch_window_ms / 1000)
        if settings.infer_max_batch > 0
        else None
    )
    access_log = AccessLog(
        _access_log_stream(settings.access_log), json_lines=settings.access_log_format == "json"
    )
    arrivals = Arrivals()  # counted by the protocol below, read by the batcher
    app = create_app(
        service,
        max_body=settings.max_body,
        max_elements=settings.max_elements,
        batch_access=batch_access,
        access_log=access_log,
        llm=llm,
        batching=batching,
        arrivals=arrivals,
    )
    if not batch_access.enabled:
        log.info("POST /receipts/batch is disabled (no --batch-token-sha256)")
    if settings.cors_origins:
        log.info("CORS: allowing origins %s", ", ".join(settings.cors_origins))
    # The socket is bound here, so a busy port fails now and port 0 has its real number to report.
    if settings.vsock is not None:
        try:
            sock = vsock_listener(settings.vsock)
        except OSError as exc:
            log.error("cannot listen on vsock port %d: %s", settings.vsock, exc)
            return 1
        where = f"vsock port {settings.vsock}"
    else:
        try:
            sock = tcp_listener(settings.host, settings.port)
        except OSError as exc:
            log.error("cannot listen on %s port %d: %s", settings.host, settings.port, exc)
            return 1
        where = http_url(sock)
    # No "server: uvicorn" header: it only helps fingerprinting, and each header costs uvicorn per response.
    config = uvicorn.Config(
        with_cors(app, settings.cors_origins),
        log_level="warning",
        access_log=False,
        server_header=False,
        # No X-Forwarded-* rewriting: nothing here uses the client's address, and it costs every request.
        proxy_headers=False,
        # one write per answer, arrivals, direct answers (enclave/http_protocol.py); with CORS every answer
        # goes through the middleware
        http=counting_protocol(arrivals, None if settings.cors_origins else app),
        timeout_graceful_shutdown=settings.shutdown_timeout,
    )

    def serving() -> None:
        log.info("serving on %s as enclave %s (%s)", where, service.address, nsm_name)

    ReportingServer(config, on_serving=serving).run(sockets=[sock])
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


class _SettingsHelp(argparse.HelpFormatter):
    """Help with each option's environment variable and default, read from ServeSettings only when help
    is shown (importing pydantic-settings would cost every `verinfer` command ~0.2 s)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        from .settings import ServeSettings, describe

        text = action.help or ""
        if action.dest in ServeSettings.model_fields:
            text = f"{text} ({describe(action.dest)})".lstrip().replace("%", "%%")
        return text


def register_serve(subparsers: Any) -> None:
    """Options carry no argparse defaults (SUPPRESS): an option not given comes from the environment, the
    config file or ServeSettings' default, in that order (enclave/settings.py)."""
    serve = subparsers.add_parser(
        "serve",
        help="run the enclave inference server",
        argument_default=argparse.SUPPRESS,
        formatter_class=_SettingsHelp,
        description="Options can also come from VERINFER_* environment variables or a TOML/JSON config "
        "file (--config): command line > environment > config file > defaults.",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="TOML or JSON file of settings (keys: the option names in snake_case)",
    )
    serve.add_argument(
        "--nsm",
        choices=("sim", "nitro"),
        help="required. 'nitro' needs /dev/nsm and never falls back; 'sim' is development only",
    )
    where = serve.add_mutually_exclusive_group()
    where.add_argument(
        "--vsock", type=int, metavar="PORT", help="listen on AF_VSOCK (inside a Nitro enclave)"
    )
    serve.add_argument("--host", help="TCP address to listen on")
    serve.add_argument("--port", type=int, help="TCP port (0: any free port, reported in 'serving on')")
    serve.add_argument("--models", help="directory with manifest.json and ONNX files")
    serve.add_argument("--pki-dir", help="simulator PKI directory (with --nsm sim)")
    serve.add_argument("--max-body", type=int, metavar="BYTES", help="request body limit (413)")
    serve.add_argument(
        "--max-elements",
        type=int,
        metavar="N",
        help="most tensor elements one request may carry (400 tensor_too_large)",
    )
    serve.add_argument(
        "--batch-token-sha256",
        metavar="HEX",
        help="sha256 of the relay's bearer token for POST /receipts/batch; without it the route is disabled",
    )
    serve.add_argument("--batch-rate", type=float, metavar="PER_S", help="receipt batches per second")
    serve.add_argument(
        "--infer-max-batch",
        type=int,
        metavar="N",
        help="concurrent ONNX requests for one model run together, up to N (0: no batcher)",
    )
    serve.add_argument(
        "--infer-batch-window-ms",
        type=float,
        metavar="MS",
        help="how long the batcher waits for a batch to fill",
    )
    ops = serve.add_argument_group("operations")
    ops.add_argument(
        "--access-log",
        metavar="PATH",
        help="one line per request: '-' for stderr, a file to append to, or 'off'",
    )
    ops.add_argument("--access-log-format", choices=("text", "json"), help="json: one JSON object a line")
    ops.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="ORIGIN",
        help="let browser code from ORIGIN (e.g. https://app.example, or '*') call the API; repeatable",
    )
    ops.add_argument(
        "--shutdown-timeout",
        type=int,
        metavar="SECONDS",
        help="on SIGTERM, how long open requests may take before they are cancelled",
    )
    llm = serve.add_argument_group("LLM (the manifest's text-generation model, on /v1)")
    llm.add_argument("--no-llm", action="store_true", help="do not load the manifest's LLM")
    llm.add_argument("--llm-threads", type=int, metavar="N", help="onnxruntime threads (none: all CPUs)")
    llm.add_argument(
        "--llm-no-spin",
        action="store_true",
        help="onnxruntime's threads sleep between kernels instead of spinning (for a shared host)",
    )
    llm.add_argument("--llm-max-batch", type=int, metavar="N", help="sequences decoded together")
    llm.add_argument(
        "--llm-context", type=int, metavar="TOKENS", help="context window served (prompt + output)"
    )
    llm.add_argument(
        "--llm-queue", type=int, metavar="N", help="requests waiting beyond the batch (then 429)"
    )
    llm.add_argument(
        "--llm-checkpoint-tokens",
        type=int,
        metavar="N",
        help="streamed completions carry a signed checkpoint receipt every N tokens",
    )
    serve.set_defaults(handler=cmd_serve)


def register(subparsers: Any) -> None:
    register_serve(subparsers)
