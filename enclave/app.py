"""The HTTP API: /infer, /attestation, /models, /metrics and the KServe Open Inference Protocol V2.

The inference routes are served by enclave/fastpath.py in front of this FastAPI app. Handlers parse JSON
with orjson (no pydantic models) and run the small models inline: a thread-pool hop would cost more than
the inference itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protocol.errors import RequestError, bad_request

from . import __version__
from .fastpath import InferenceFastPath
from .inference import InferenceEndpoints, error_body, parse_json
from .metrics import Metrics
from .runtime import LoadedModel
from .service import MAX_BATCH, EnclaveService, parse_nonce

DEFAULT_MAX_BODY = 4 * 1024 * 1024
_JSON = "application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY

Handler = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=_NUMPY), status_code=status, media_type=_JSON, headers=headers)


def create_app(service: EnclaveService, *, max_body: int = DEFAULT_MAX_BODY) -> InferenceFastPath:
    """The ASGI app: the inference routes on the fast path, everything else on FastAPI."""
    app = FastAPI(title="verinfer enclave", version=__version__, docs_url=None, redoc_url=None)
    metrics = Metrics()
    metrics.info.labels(enclave=service.address, simulated=str(service.simulated).lower()).set(1)
    simulated_header = {"X-Verinfer-Simulated": "true"} if service.simulated else {}

    def endpoint(name: str, *, v2: bool = False) -> Callable[[Handler], Handler]:
        """Counts requests and turns RequestError into the endpoint family's error shape."""

        def wrap(handler: Handler) -> Handler:
            async def run(request: Request) -> Response:
                try:
                    response = await handler(request)
                except RequestError as error:
                    metrics.error_counter(error.code).inc()
                    metrics.request_counter(name, error.status).inc()
                    return Response(error_body(error, v2=v2), status_code=error.status, media_type=_JSON)
                metrics.request_counter(name, response.status_code).inc()
                return response

            return run

        return wrap

    @endpoint("attestation")
    async def get_attestation(request: Request) -> Response:
        nonce = parse_nonce(request.query_params.get("nonce"))
        document = service.attestation(nonce)
        if "application/cbor" in request.headers.get("accept", ""):
            return Response(document, media_type="application/cbor", headers=simulated_header)
        return json_response(service.attestation_json(document), headers=simulated_header)

    @endpoint("receipts_batch")
    async def post_receipts_batch(request: Request) -> Response:
        body = parse_json(await request.body())
        start = body.get("from", 0) if isinstance(body, dict) else None
        limit = body.get("max", MAX_BATCH) if isinstance(body, dict) else None
        if type(start) is not int or type(limit) is not int or start < 0 or limit < 1:
            raise bad_request("invalid_batch", "body must be {from: sequence >= 0, max: count >= 1}")
        return json_response(service.receipt_batch(start, limit))

    @endpoint("models")
    async def get_models(_request: Request) -> Response:
        return json_response(service.manifest.to_json())

    async def get_metrics(_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- KServe Open Inference Protocol V2 -------------------------------------------------------------

    @endpoint("v2", v2=True)
    async def v2_server(_request: Request) -> Response:
        return json_response(
            {"name": "verinfer", "version": __version__, "extensions": ["verinfer_receipts"]}
        )

    async def v2_live(_request: Request) -> Response:
        return json_response({"live": True})

    async def v2_ready(_request: Request) -> Response:
        return json_response({"ready": service.ready}, 200 if service.ready else 503)

    def v2_metadata_body(model: LoadedModel) -> dict[str, Any]:
        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.dtype.v2, "shape": list(s.shape)} for s in specs]

        return {
            "name": model.entry.name,
            "versions": [model.entry.version],
            "platform": "onnxruntime_onnx",
            "inputs": tensors(model.entry.inputs),
            "outputs": tensors(model.entry.outputs),
            "parameters": {"sha256": model.entry.sha256, "modelHash": "0x" + model.entry.sha256},
        }

    @endpoint("v2_model", v2=True)
    async def v2_model(request: Request) -> Response:
        return json_response(v2_metadata_body(service.runtime.get(request.path_params["name"])))

    @endpoint("v2_model_ready", v2=True)
    async def v2_model_ready(request: Request) -> Response:
        model = service.runtime.get(request.path_params["name"])
        return json_response({"name": model.entry.name, "ready": service.ready})

    for path, handler, methods in (
        ("/attestation", get_attestation, ["GET"]),
        ("/models", get_models, ["GET"]),
        ("/receipts/batch", post_receipts_batch, ["POST"]),
        ("/metrics", get_metrics, ["GET"]),
        ("/v2", v2_server, ["GET"]),
        ("/v2/health/live", v2_live, ["GET"]),
        ("/v2/health/ready", v2_ready, ["GET"]),
        ("/v2/models/{name}", v2_model, ["GET"]),
        ("/v2/models/{name}/ready", v2_model_ready, ["GET"]),
    ):
        app.add_api_route(path, handler, methods=methods, include_in_schema=True)

    async def unexpected(_request: Request, exc: Exception) -> Response:
        metrics.error_counter("internal").inc()
        return json_response({"code": "internal", "message": f"internal error: {type(exc).__name__}"}, 500)

    app.add_exception_handler(Exception, unexpected)
    endpoints = InferenceEndpoints(service, metrics)
    return InferenceFastPath(app, endpoints, max_body=max_body, extra_headers=simulated_header)
