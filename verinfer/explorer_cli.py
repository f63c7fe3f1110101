"""`verinfer explorer`: serve the explorer page (verinfer/explorer/) on the host, on loopback by default.

The page does every check itself in the browser; this server only hands out three static files and the
settings given on the command line (config.json), so it is never the enclave it checks and holds nothing a
user must trust beyond the page's own code (which can be read, or opened from the file instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from attestation.cli import EXIT_OK, UsageError

log = logging.getLogger("verinfer.explorer")

PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/explorer.js": ("explorer.js", "text/javascript; charset=utf-8"),
    "/explorer.css": ("explorer.css", "text/css; charset=utf-8"),
}
# The page talks to enclaves and RPC endpoints the user names (connect-src *), and to nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src *; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PCR_ARG = re.compile(r"^([0-2])=(?:0x)?([0-9a-fA-F]{96})$")
HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")
ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def page_directory() -> Path:
    return Path(str(resources.files("verinfer") / "explorer"))


def load_page() -> dict[str, tuple[bytes, str]]:
    folder = page_directory()
    return {path: ((folder / name).read_bytes(), kind) for path, (name, kind) in PAGE_FILES.items()}


def simulator_root_pem(pki_dir: str | None) -> str:
    """The root.pem of a simulator's PKI: read, never created (a missing one means no simulator ran here)."""
    from attestation.sim_pki import default_directory

    path = (Path(pki_dir) if pki_dir else default_directory()) / "root.pem"
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(
            f"no simulator root at {path} ({exc.strerror}): start `verinfer serve --nsm sim`"
        ) from exc


def measured_image_id() -> str:
    """The image id of this installation's source and models (`verinfer image measure`): what a simulated
    enclave started from the same tree attests."""
    from enclave.image import SOURCE_ROOT, measure_image
    from protocol.images import image_id

    measurement = measure_image(SOURCE_ROOT / "models", SOURCE_ROOT)
    return "0x" + image_id(dict(measurement.pcrs)).hex()


def page_config(args: argparse.Namespace) -> dict[str, Any]:
    """config.json: what the page fills in for the user; every value is checked again in the page."""
    config: dict[str, Any] = {}
    if args.enclave:
        config["enclave"] = args.enclave.rstrip("/")
    if args.root == "sim":
        config["rootPem"] = simulator_root_pem(args.pki_dir)
    elif args.root != "aws":
        try:
            config["rootPem"] = Path(args.root).read_text()
        except OSError as exc:
            raise UsageError(f"--root {args.root}: {exc.strerror}") from exc
        if "-----BEGIN CERTIFICATE-----" not in config["rootPem"]:
            raise UsageError(f"--root {args.root}: not a PEM certificate")
    for text in args.pcr:
        match = PCR_ARG.match(text)
        if not match:
            raise UsageError(f"--pcr {text!r}: expected N=HEX with N in 0..2 and 48 bytes of hex")
        config[f"pcr{match[1]}"] = match[2].lower()
    if args.image_id:
        if not HEX32.match(args.image_id):
            raise UsageError("--image-id is 0x and 64 hex digits")
        config["imageId"] = args.image_id
    elif args.pin_measured:
        config["imageId"] = measured_image_id()
    if bool(args.rpc) != bool(args.contract):
        raise UsageError("--rpc and --contract go together")
    if args.contract and not ADDRESS.match(args.contract):
        raise UsageError("--contract is a 0x-hex address")
    if args.rpc:
        config["rpc"] = args.rpc
        config["contract"] = args.contract
    if args.check:
        config["check"] = True
    return config


class ExplorerHandler(BaseHTTPRequestHandler):
    server_version = "verinfer-explorer"
    sys_version = ""

    def __init__(self, *args: Any, files: dict[str, tuple[bytes, str]], **kwargs: Any) -> None:
        self.files = files
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        found = self.files.get(path)
        status = HTTPStatus.OK if found else HTTPStatus.NOT_FOUND
        body, kind = found or (b"not found\n", "text/plain; charset=utf-8")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def make_server(host: str, port: int, config: dict[str, Any]) -> ThreadingHTTPServer:
    files = load_page()
    files["/config.json"] = (json.dumps(config, indent=1).encode(), "application/json")
    server = ThreadingHTTPServer((host, port), partial(ExplorerHandler, files=files))
    server.daemon_threads = True
    return server


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = page_config(args)
    try:
        server = make_server(args.host, args.port, config)
    except OSError as exc:
        print(
            f"verinfer explorer: cannot listen on {args.host} port {args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    host, port = str(server.server_address[0]), int(server.server_address[1])
    origin = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(f"explorer on {origin}/  (page files: {page_directory()}; Ctrl-C stops it)", flush=True)
    if config.get("enclave"):
        print(f"the enclave must allow this origin: verinfer serve ... --cors-origin {origin}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


def register(subparsers: Any) -> None:
    explorer = subparsers.add_parser(
        "explorer",
        help="serve the explorer page: verify an enclave and its receipts in your browser",
        description=(
            "Serves the explorer page on the host (loopback by default). Every check runs in the browser; "
            "the options below only fill in the page's settings. The page also opens from "
            f"{page_directory() / 'index.html'}."
        ),
    )
    explorer.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    explorer.add_argument("--port", type=int, default=8780, help="port (default 8780; 0 picks a free one)")
    explorer.add_argument("--enclave", metavar="URL", help="the enclave's URL, filled in")
    explorer.add_argument(
        "--root",
        default="aws",
        metavar="aws|sim|PEM",
        help="pinned root: aws (default), sim (the simulator's root.pem) or a PEM file",
    )
    explorer.add_argument("--pki-dir", help="the simulator's PKI directory (with --root sim)")
    explorer.add_argument("--pcr", action="append", default=[], metavar="N=HEX", help="pin PCR N (0, 1, 2)")
    explorer.add_argument("--image-id", metavar="0xHEX", help="pin an image id")
    explorer.add_argument(
        "--pin-measured",
        action="store_true",
        help="pin the image id `verinfer image measure` computes here (a simulated enclave of this tree)",
    )
    explorer.add_argument("--rpc", metavar="URL", help="JSON-RPC URL of the chain with the verifier contract")
    explorer.add_argument("--contract", metavar="0xADDRESS", help="the InferenceVerifier contract")
    explorer.add_argument("--check", action="store_true", help="check the enclave as soon as the page loads")
    explorer.set_defaults(handler=run)
