"""The two inference routes as handlers from body bytes to (status, JSON bytes), served by the HTTP edge.

FastAPI's per-request machinery (Request object, dependency resolution, Response object) costs about as much
as signing a receipt, so protocol/edge.py answers these routes straight from ASGI messages, after its body
limit; every other request goes to the FastAPI app. The same handlers back the documented FastAPI routes
(enclave/app.py), so both paths answer alike.
"""

from __future__ import annotations

import logging
from functools import partial

from protocol.edge import FastHandler, FastRoute, error_body
from protocol.errors import RequestError

from .inference import Headers, InferenceEndpoints, Reply

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


async def run_endpoint(
    endpoints: InferenceEndpoints, v2_model: str | None, body: bytes, headers: Headers
) -> Reply:
    """One inference request to (status, body, headers); an unexpected failure is a counted 500."""
    try:
        if v2_model is None:
            return await endpoints.infer(body, headers)
        return await endpoints.v2_infer(v2_model, body, headers)
    except Exception:
        log.exception("inference failed unexpectedly")
        endpoints.metrics.error_counter(INTERNAL.code).inc()
        return INTERNAL.status, error_body(INTERNAL, v2=v2_model is not None), []


def inference_route(endpoints: InferenceEndpoints) -> FastRoute:
    """The edge's fast route for POST /infer and POST /v2/models/NAME/infer (protocol/edge.py)."""
    infer: FastHandler = partial(run_endpoint, endpoints, None)

    def route(method: str, path: str) -> FastHandler | None:
        if method != "POST":
            return None
        if path == "/infer":
            return infer
        name = v2_infer_model(path)
        return None if name is None else partial(run_endpoint, endpoints, name)

    return route
