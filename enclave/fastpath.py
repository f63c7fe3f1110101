"""The inference routes as handlers from (body, headers) to (status, body, headers), served by the HTTP edge:
POST /infer and POST /v2/models/NAME[/versions/VERSION]/infer.

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
from .kserve import ModelPath, model_path

log = logging.getLogger("verinfer.enclave")
INTERNAL = RequestError(500, "internal", "internal error; nothing was signed")


def v2_infer_path(path: str) -> ModelPath | None:
    """The model (and version, if given) of a V2 infer path, else None."""
    target = model_path(path)
    return target if target is not None and target.action == "infer" else None


async def run_endpoint(
    endpoints: InferenceEndpoints,
    v2_model: str | None,
    body: bytes,
    headers: Headers,
    salt: bytes | None = None,
    *,
    version: str | None = None,
) -> Reply:
    """One inference request to (status, body, headers); an unexpected failure is a counted 500. `salt`:
    the request came sealed (enclave/gateway.py) and is signed over salted commitments."""
    try:
        if v2_model is None:
            return await endpoints.infer(body, headers, salt)
        return await endpoints.v2_infer(v2_model, body, headers, version, salt)
    except Exception:
        log.exception("inference failed unexpectedly")
        endpoints.metrics.error_counter(INTERNAL.code).inc()
        return INTERNAL.status, error_body(INTERNAL, v2=v2_model is not None), []


def inference_route(endpoints: InferenceEndpoints) -> FastRoute:
    """The edge's fast route for POST /infer and V2 infer, versioned or not (protocol/edge.py)."""
    infer: FastHandler = partial(run_endpoint, endpoints, None)

    def route(method: str, path: str) -> FastHandler | None:
        if method != "POST":
            return None
        if path == "/infer":
            return infer
        target = v2_infer_path(path)
        if target is None:
            return None
        return partial(run_endpoint, endpoints, target.name, version=target.version)

    return route
