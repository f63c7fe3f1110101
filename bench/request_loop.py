"""N signed /infer requests through the enclave's ASGI app, in process (what bench_instructions counts).

Run inside a tree (the current one, or the baseline commit's, via PYTHONPATH); it uses whichever module
layout that tree has (protocol/ after the split, enclave/ before it).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from attestation.nsm import open_nsm
from enclave.app import create_app
from enclave.service import EnclaveService

# Decided by the tree on disk (the working directory), not by what imports: the editable install would
# otherwise lend the baseline tree today's protocol/.
SPLIT = Path("protocol").is_dir()
load_manifest = importlib.import_module("protocol.manifest" if SPLIT else "enclave.manifest").load_manifest

INPUTS = {"iris-ols": [[5.1, 3.5, 1.4]], "iris-mlp": [[6.7, 3.0, 5.2, 2.3]]}


def build_app(pki: str) -> Any:
    service = EnclaveService(load_manifest("models"), open_nsm("sim", pki_dir=pki))
    if not SPLIT:  # before the split there was no access log
        return create_app(service)
    access_log = importlib.import_module("protocol.edge").AccessLog(open(os.devnull, "w"))  # noqa: SIM115
    return create_app(service, access_log=access_log)


async def serve(app: Any, body: bytes, count: int) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/infer",
        "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(_message: Any) -> None:
        return None

    for _ in range(count):
        await app(dict(scope), receive, send)


def main(model: str, count: int) -> None:
    with tempfile.TemporaryDirectory() as pki:
        app = build_app(pki)
        asyncio.run(serve(app, orjson.dumps({"model": model, "inputs": INPUTS[model]}), count))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
