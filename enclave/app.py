"""The HTTP API: /infer, /attestation, /models, /receipts/batch, /metrics and KServe V2 (Open Inference).

Layers: protocol/edge.py (body limit, X-Request-ID, access log, metrics of every answer) answers
POST /infer and POST /v2/models/NAME/infer itself with the handlers of enclave/fastpath.py, and hands
everything else to this FastAPI app, which documents every route in /openapi.json and /docs and serves the
rest. Handlers are module-level and reach the service through `request.app.state`; every refusal goes
through the one responder of protocol/edge.py, in the shape of the route's protocol family.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protocol.edge import AccessLog, HttpEdge, install_error_handlers
from protocol.errors import RequestError, bad_request
from protocol.inputs import MAX_BATCH_ELEMENTS

from . import __version__, llm_api, schemas
from .batch_access import BatchAccess
from .batcher import DEFAULT_BATCHING, Batcher, BatchPolicy
from .fastpath import INTERNAL, inference_route, run_endpoint, v2_infer_model
from .inference import InferenceEndpoints, parse_json
from .llm_service import LlmService
from .metrics import Metrics, observe_llm
from .runtime import LoadedModel
from .service import MAX_BATCH, EnclaveService, parse_nonce

DEFAULT_MAX_BODY = 4 * 1024 * 1024
_JSON = "application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_FIXED_LABELS = {
    "/infer": "infer",
    "/attestation": "attestation",
    "/models": "models",
    "/receipts/batch": "receipts_batch",
    "/metrics": "metrics",
    "/v2": "v2",
    "/v2/health/live": "v2_live",
    "/v2/health/ready": "v2_ready",
    "/docs": "docs",
    "/openapi.json": "openapi",
    "/v1/models": "v1_models",
    "/v1/completions": "v1_completions",
    "/v1/chat/completions": "v1_chat_completions",
}


def endpoint_label(path: str) -> str:
    """A bounded set of metric labels: unknown paths must not create new time series."""
    label = _FIXED_LABELS.get(path)
    if label is not None:
        return label
    if v2_infer_model(path) is not None:
        return "v2_infer"
    if path.startswith("/v2/models/"):
        return "v2_model_ready" if path.endswith("/ready") else "v2_model"
    if path.startswith("/v1/signature/"):
        return "v1_signature"
    return "unmatched"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=_NUMPY), status_code=status, media_type=_JSON, headers=headers)


def _state(request: Request) -> Any:
    return request.app.state


def _service(request: Request) -> EnclaveService:
    service: EnclaveService = request.app.state.service
    return service


# --- routes ---------------------------------------------------------------------------------------------


async def _inference_reply(request: Request, v2_model: str | None) -> Response:
    """The fast path's handler, answered through FastAPI (when the edge does not take the route)."""
    state = _state(request)
    headers = list(request.scope["headers"])
    status, payload, extra = await run_endpoint(state.endpoints, v2_model, await request.body(), headers)
    reply = Response(payload, status_code=status, media_type=_JSON, headers=state.extra_headers)
    for key, value in extra:  # a content-type among them replaces the JSON one
        reply.headers[key.decode("latin-1")] = value.decode("latin-1")
    return reply


async def post_infer(request: Request) -> Response:
    """Run a model and sign the answer (served by the fast path; documented and runnable here too)."""
    return await _inference_reply(request, None)


NONCE_QUERY = Query(
    default=None,
    pattern=r"^(0x)?([0-9a-fA-F]{2}){0,1024}$",
    description="hex, at most 1024 bytes: bound into the document so it cannot be a replay",
)


async def get_attestation(request: Request, nonce: str | None = NONCE_QUERY) -> Response:
    """A fresh attestation document binding the enclave key and the manifest digest, with your nonce.

    JSON by default; `Accept: application/cbor` returns the raw COSE_Sign1 document.
    """
    service = _service(request)
    document = service.attestation(parse_nonce(nonce))
    headers = _state(request).extra_headers
    if "application/cbor" in request.headers.get("accept", ""):
        return Response(document, media_type="application/cbor", headers=headers)
    return json_response(service.attestation_json(document), headers=headers)


async def get_models(request: Request) -> Response:
    """The model manifest; its digest is the attested user_data."""
    return json_response(_service(request).manifest.to_json())


async def post_receipts_batch(request: Request) -> Response:
    """A signed Merkle root over this enclave's receipts, for the relay only (bearer token, rate-limited)."""
    _state(request).batch_access.check(request.headers.get("authorization"))
    body = parse_json(await request.body())
    start = _whole(body.get("from", 0)) if isinstance(body, dict) else None
    limit = _whole(body.get("max", MAX_BATCH)) if isinstance(body, dict) else None
    if start is None or limit is None or not 0 <= start < 2**63 or not 1 <= limit < 2**63:
        raise bad_request("invalid_batch", "body must be {from: sequence >= 0, max: count >= 1} (below 2^63)")
    return json_response(_service(request).receipt_batch(start, limit))


def _whole(value: Any) -> int | None:
    """A JSON integer; 5.0 counts (JSON Schema's "integer" admits it), 5.5, true and "5" do not."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return None


async def get_metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def v2_server(_request: Request) -> Response:
    return json_response({"name": "verinfer", "version": __version__, "extensions": ["verinfer_receipts"]})


async def v2_live(_request: Request) -> Response:
    return json_response({"live": True})


async def v2_ready(request: Request) -> Response:
    ready = _service(request).ready
    return json_response({"ready": ready}, 200 if ready else 503)


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


async def v2_model(request: Request, name: str) -> Response:
    return json_response(v2_metadata_body(_service(request).runtime.get(name)))


async def v2_model_ready(request: Request, name: str) -> Response:
    service = _service(request)
    model = service.runtime.get(name)
    return json_response({"name": model.entry.name, "ready": service.ready})


async def v2_infer(request: Request, name: str) -> Response:
    """KServe V2 inference; the receipt is in `parameters` (served by the fast path)."""
    return await _inference_reply(request, name)


def _body(model: type[Any]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {_JSON: {"schema": ref}}}}


def _errors(model: type[Any], *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model} for status in statuses}


_E = schemas.ErrorBody
_V2E = schemas.V2ErrorBody
ROUTES: tuple[tuple[str, Any, str, dict[str, Any]], ...] = (
    (
        "/infer",
        post_infer,
        "POST",
        {
            "responses": {200: {"model": schemas.InferResponse}, **_errors(_E, 400, 404, 413, 422)},
            "openapi_extra": _body(schemas.InferRequest),
        },
    ),
    (
        "/attestation",
        get_attestation,
        "GET",
        {
            "responses": {
                200: {"model": schemas.AttestationResponse, "content": {"application/cbor": {}}},
                **_errors(_E, 400),
            }
        },
    ),
    ("/models", get_models, "GET", {"responses": {200: {"model": schemas.ManifestBody}}}),
    (
        "/receipts/batch",
        post_receipts_batch,
        "POST",
        {
            "responses": {
                200: {"model": schemas.ReceiptBatchResponse},
                **_errors(_E, 400, 401, 403, 410, 413, 429),
            },
            "openapi_extra": _body(schemas.ReceiptBatchRequest),
        },
    ),
    ("/metrics", get_metrics, "GET", {"responses": {200: {"content": {"text/plain": {}}}}}),
    ("/v2", v2_server, "GET", {"responses": {200: {"model": schemas.V2ServerMetadata}}}),
    ("/v2/health/live", v2_live, "GET", {"responses": {200: {"model": schemas.V2Live}}}),
    (
        "/v2/health/ready",
        v2_ready,
        "GET",
        {"responses": {200: {"model": schemas.V2Ready}, 503: {"model": schemas.V2Ready}}},
    ),
    (
        "/v2/models/{name}",
        v2_model,
        "GET",
        {"responses": {200: {"model": schemas.V2ModelMetadata}, **_errors(_V2E, 400, 404, 422)}},
    ),
    (
        "/v2/models/{name}/ready",
        v2_model_ready,
        "GET",
        {"responses": {200: {"model": schemas.V2ModelReady}, **_errors(_V2E, 400, 404, 422)}},
    ),
    (
        "/v2/models/{name}/infer",
        v2_infer,
        "POST",
        {
            "responses": {200: {"model": schemas.V2InferResponse}, **_errors(_V2E, 400, 404, 413, 422)},
            "openapi_extra": _body(schemas.V2InferRequest),
        },
    ),
)


def openapi_schema(api: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request bodies, which handlers parse themselves (faster, own codes)."""
    if api.openapi_schema:
        return api.openapi_schema
    schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (*schemas.REQUEST_MODELS, *llm_api.REQUEST_MODELS):
        body = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    api.openapi_schema = schema
    return schema


def create_app(
    service: EnclaveService,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_elements: int = MAX_BATCH_ELEMENTS,
    batch_access: BatchAccess | None = None,
    access_log: AccessLog | None = None,
    fast_path: bool = True,
    llm: LlmService | None = None,
    batching: BatchPolicy | None = DEFAULT_BATCHING,
) -> HttpEdge:
    """The ASGI app. `fast_path=False` serves inference through the FastAPI routes (for tests); `llm`
    serves the manifest's LLM behind the OpenAI-compatible /v1 routes; `batching=None` runs every model
    on the event loop, one request at a time, instead of on the dynamic batcher's worker."""
    access_log = access_log or AccessLog(None)
    api = FastAPI(
        title="verinfer enclave",
        version=__version__,
        description="Signed, attested inference. Receipts and formats: docs/PROTOCOL.md.",
        docs_url="/docs",
        redoc_url=None,
    )
    metrics = Metrics()
    metrics.info.labels(enclave=service.address, simulated=str(service.simulated).lower()).set(1)
    batcher = (
        None
        if batching is None
        else Batcher(service, max_batch=batching.max_batch, window_s=batching.window_s)
    )
    endpoints = InferenceEndpoints(service, metrics, max_elements=max_elements, batcher=batcher)
    api.state.service = service
    api.state.metrics = metrics
    api.state.endpoints = endpoints
    api.state.batch_access = batch_access or BatchAccess(None)
    api.state.extra_headers = {"X-Verinfer-Simulated": "true"} if service.simulated else {}

    def on_error(error: RequestError) -> None:
        metrics.error_counter(error.code).inc()

    for path, handler, method, options in ROUTES:
        api.add_api_route(path, handler, methods=[method], **options)
    llm_api.install(api, llm)
    if llm is not None:
        observe_llm(metrics, llm)
    install_error_handlers(
        api, on_error=on_error, parameter_codes={"nonce": "invalid_nonce"}, internal=INTERNAL
    )
    api.openapi = lambda: openapi_schema(api)  # type: ignore[method-assign]
    api.router.on_shutdown.append(access_log.flush)

    def observe(path: str, status: int, seconds: float) -> None:
        endpoint = endpoint_label(path)
        metrics.request_counter(endpoint, status).inc()
        metrics.observe_request(endpoint, seconds)

    return HttpEdge(
        api,
        max_body=max_body,
        access_log=access_log,
        observe=observe,
        on_error=on_error,
        fast_route=inference_route(endpoints) if fast_path else None,
        fast_headers=api.state.extra_headers,
    )
