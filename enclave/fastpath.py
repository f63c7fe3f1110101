"""A lean ASGI front for the two inference routes; every other request goes to the FastAPI app.

FastAPI's per-request machinery (Request object, dependency resolution, Response object) costs about as much
as signing a receipt, so the hot routes are served straight from ASGI messages. The body arrives already
read and bounded by protocol/edge.py (in the scope); the same handlers back the documented FastAPI routes
(enclave/app.py).
"""

from __future__ import annotations

import logging

from protocol.edge import BODY_KEY, ASGIApp, Receive, Scope, Send, error_body
from protocol.errors import RequestError

from .inference import InferenceEndpoints, Reply

log = logging.getLogger("verinfer.enclave")
_V2_PREFIX = "/v2/models/"
_V2_SUFFIX = "/infer"
INTERNAL = RequestError(500, "internal", "internal error; nothing was signed")


def v2_infer_model(path: str) -> str | None:
    """The model name of a V2 infer path (/v2/models/NAME/infer), else None."""
    if path.startswith(_V2_PREFIX) and path.endswith(_V2_SUFFIX):
        name = path[len(_V2_PREFIX) : -len(_V2_SUFFIX)]
        if name and "/" not in name:
            return name
    return None


def run_endpoint(endpoints: InferenceEndpoints, v2_model: str | None, body: bytes) -> Reply:
    """One inference request to (status, body); an unexpected failure is a counted 500, never a crash."""
    try:
        return endpoints.infer(body) if v2_model is None else endpoints.v2_infer(v2_model, body)
    except Exception:
        log.exception("inference failed unexpectedly")
        endpoints.metrics.error_counter(INTERNAL.code).inc()
        return INTERNAL.status, error_body(INTERNAL, v2=v2_model is not None)


class InferenceFastPath:
    def __init__(
        self, fallback: ASGIApp, endpoints: InferenceEndpoints, *, extra_headers: dict[str, str]
    ) -> None:
        self.fallback = fallback
        self.endpoints = endpoints
        self.headers = [(b"content-type", b"application/json")] + [
            (k.lower().encode(), v.encode()) for k, v in extra_headers.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == "/infer":
                await self._serve(scope, receive, send, None)
                return
            name = v2_infer_model(path)
            if name is not None:
                await self._serve(scope, receive, send, name)
                return
        await self.fallback(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, v2_model: str | None) -> None:
        body: bytes = scope[BODY_KEY]  # always behind HttpEdge, which read and bounded it
        status, payload = run_endpoint(self.endpoints, v2_model, body)
        headers = [*self.headers, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
