"""The HTTP API: /infer, /attestation, /models, /receipts/batch, /metrics and KServe V2 (Open Inference).

Layers: protocol/edge.py (body limit, X-Request-ID, access log, metrics of every answer) answers
POST /infer and POST /v2/models/NAME[/versions/V]/infer itself with the handlers of enclave/fastpath.py, and
hands everything else to this FastAPI app, which documents every route in /openapi.json and /docs and
serves the rest. Handlers are module-level and reach the service through `request.app.state`; every refusal
goes through the one responder of protocol/edge.py, in the shape of the route's protocol family.
"""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protocol import ohttp
from protocol.edge import (
    SEALED_SALT,
    AccessLog,
    FastHandler,
    FastRoute,
    Headers,
    HttpEdge,
    header_pairs,
    install_error_handlers,
)
from protocol.errors import RequestError, bad_request, not_found
from protocol.inputs import MAX_BATCH_ELEMENTS, parse_json

from . import __version__, kserve, llm_api, schemas
from .batch_access import BatchAccess
from .batcher import DEFAULT_BATCHING, Batcher, BatchPolicy, Job
from .fastpath import INTERNAL, inference_route, run_endpoint
from .gateway import GATEWAY_PATH, PROBLEM_MEDIA_TYPE, ReplayGuard, SealedGateway
from .http_protocol import Arrivals
from .inference import InferenceEndpoints
from .llm_service import LlmService
from .metrics import Metrics, observe_llm
from .model_stats import ModelStats
from .runtime import LoadedModel
from .sealed_inference import sealed_inference
from .service import MAX_BATCH, EnclaveService, parse_nonce

DEFAULT_MAX_BODY = 4 * 1024 * 1024
_JSON = "application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_FIXED_LABELS = {
    "/infer": "infer",
    "/attestation": "attestation",
    "/models": "models",
    "/.well-known/ohttp-gateway": "ohttp_gateway",
    "/infer/sealed": "infer_sealed",
    "/receipts/batch": "receipts_batch",
    "/metrics": "metrics",
    "/v2": "v2",
    "/v2/health/live": "v2_live",
    "/v2/health/ready": "v2_ready",
    "/v2/models/stats": "v2_stats",
    "/v2/repository/index": "v2_repository_index",
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
    target = kserve.model_path(path)
    if target is not None:
        return _MODEL_LABELS[target.action]
    if path.startswith("/v2/repository/models/"):
        return "v2_repository_control"
    if path.startswith("/v1/signature/"):
        return "v1_signature"
    return "unmatched"


_MODEL_LABELS = {
    "": "v2_model",
    "ready": "v2_model_ready",
    "config": "v2_model_config",
    "stats": "v2_model_stats",
    "infer": "v2_infer",
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=_NUMPY), status_code=status, media_type=_JSON, headers=headers)


def _state(request: Request) -> Any:
    return request.app.state


def _service(request: Request) -> EnclaveService:
    service: EnclaveService = request.app.state.service
    return service


# --- routes ---------------------------------------------------------------------------------------------


async def _inference_reply(request: Request, v2_model: str | None, version: str | None = None) -> Response:
    """The fast path's handler, answered through FastAPI (when the edge does not take the route)."""
    state = _state(request)
    headers = list(request.scope["headers"])
    body = await request.body()
    salt = request.scope.get(SEALED_SALT)
    status, payload, extra = await run_endpoint(
        state.endpoints, v2_model, body, headers, salt, version=version
    )
    return _fast_reply(status, payload, extra, state.extra_headers)


def _fast_reply(status: int, payload: bytes, extra: Headers, headers: dict[str, str]) -> Response:
    """A fast handler's (status, body, headers) as a FastAPI Response: JSON unless `extra` names another
    content-type."""
    reply = Response(payload, status_code=status, media_type=_JSON, headers=headers)
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


SIGNER_QUERY = Query(
    default=None,
    pattern=r"^0x[0-9a-fA-F]{40}$",
    description="an enclave address: only the enclave that signs as it answers, others say 404 (a fleet)",
)


def check_signer(service: EnclaveService, signer: str | None) -> None:
    """Behind a load balancer, `?signer=` reaches the enclave that signed a given receipt: every other
    enclave refuses with 404, and the balancer tries the next one (verinfer/fleet.py)."""
    if signer is not None and signer.lower() != service.address.lower():
        raise not_found("unknown_signer", f"this enclave signs as {service.address}, not {signer}")


async def get_attestation(
    request: Request, nonce: str | None = NONCE_QUERY, signer: str | None = SIGNER_QUERY
) -> Response:
    """A fresh attestation document binding the enclave key and the manifest digest, with your nonce.

    JSON by default; `Accept: application/cbor` returns the raw COSE_Sign1 document. With `signer`, only
    the enclave that signs as that address answers (404 `unknown_signer` elsewhere).
    """
    service = _service(request)
    check_signer(service, signer)
    document = service.attestation(parse_nonce(nonce))
    state = _state(request)
    if "application/cbor" in request.headers.get("accept", ""):
        return Response(document, media_type="application/cbor", headers=state.extra_headers)
    body = service.attestation_json(document)
    body["ohttpKeys"] = base64.b64encode(state.gateway.keys_body).decode()
    return json_response(body, headers=state.extra_headers)


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


async def get_ohttp_keys(request: Request) -> Response:
    """The OHTTP key configuration (RFC 9458 section 3, `application/ohttp-keys`) of the attested X25519
    key: `user_data[32:64]` of every attestation document is its public key."""
    gateway: SealedGateway = _state(request).gateway
    headers = {**_state(request).extra_headers, "Cache-Control": "max-age=300"}
    return Response(gateway.keys_body, media_type=ohttp.KEYS_MEDIA_TYPE, headers=headers)


async def post_ohttp_request(request: Request) -> Response:
    """A sealed request (`message/ohttp-req`, RFC 9458): opened inside the enclave, served by the route it
    names, answered sealed (`message/ohttp-res`); what cannot be opened is refused in problem+json.
    (Served by the edge's fast path; documented and runnable here too.)"""
    gateway: SealedGateway = _state(request).gateway
    status, payload, extra = await gateway.handle(await request.body(), list(request.scope["headers"]))
    return _fast_reply(status, payload, extra, {})


async def post_sealed_infer(request: Request) -> Response:
    """For a relay serving an on-chain sealed request: run the model on an input sealed to the enclave's
    X25519 key (protocol/sealing.py) and sign keccak256 of the sealed input and of the output posted."""
    service = _service(request)
    answer = sealed_inference(service, await request.body())
    return json_response(answer, headers=_state(request).extra_headers)


async def get_metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def v2_server(_request: Request) -> Response:
    """Server metadata: the KServe V2 / Triton extensions this server implements."""
    return json_response({"name": "verinfer", "version": __version__, "extensions": list(kserve.EXTENSIONS)})


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
        "platform": kserve.PLATFORM,
        "inputs": tensors(model.entry.inputs),
        "outputs": tensors(model.entry.outputs),
        "parameters": {"sha256": model.entry.sha256, "modelHash": "0x" + model.entry.sha256},
    }


def _model(request: Request, name: str, version: str | None) -> LoadedModel:
    """The served model `name`, at `version` when the route names one (the manifest's only), else 404."""
    model = _service(request).runtime.get(name)
    kserve.check_version(model.entry, version)
    return model


async def v2_model(request: Request, name: str) -> Response:
    return json_response(v2_metadata_body(_model(request, name, None)))


async def v2_model_version(request: Request, name: str, version: str) -> Response:
    return json_response(v2_metadata_body(_model(request, name, version)))


def _ready_reply(request: Request, name: str, version: str | None) -> Response:
    model = _model(request, name, version)
    ready = _service(request).ready
    return json_response({"name": model.entry.name, "ready": ready}, 200 if ready else 503)


async def v2_model_ready(request: Request, name: str) -> Response:
    return _ready_reply(request, name, None)


async def v2_model_version_ready(request: Request, name: str, version: str) -> Response:
    return _ready_reply(request, name, version)


def _config_reply(request: Request, name: str, version: str | None) -> Response:
    model = _model(request, name, version)
    endpoints: InferenceEndpoints = _state(request).endpoints
    batcher = endpoints.batcher
    config = kserve.model_config(
        model.entry,
        max_batch_size=endpoints.max_batch_size(model.entry.name),
        window_s=None if batcher is None else batcher.window_s,
    )
    return json_response(config)


async def v2_model_config(request: Request, name: str) -> Response:
    """Triton's model configuration; max_batch_size > 0 where the dynamic batcher batches the model."""
    return _config_reply(request, name, None)


async def v2_model_version_config(request: Request, name: str, version: str) -> Response:
    return _config_reply(request, name, version)


def _stats(request: Request) -> ModelStats:
    endpoints: InferenceEndpoints = _state(request).endpoints
    return endpoints.stats


async def v2_all_stats(request: Request) -> Response:
    """Statistics of every model (Triton's statistics extension); docs/PROTOCOL.md says what each measures."""
    return json_response({"model_stats": _stats(request).model_stats()})


def _stats_reply(request: Request, name: str, version: str | None) -> Response:
    model = _model(request, name, version)
    return json_response({"model_stats": _stats(request).model_stats(model.entry.name)})


async def v2_model_stats(request: Request, name: str) -> Response:
    return _stats_reply(request, name, None)


async def v2_model_version_stats(request: Request, name: str, version: str) -> Response:
    return _stats_reply(request, name, version)


async def v2_infer(request: Request, name: str) -> Response:
    """KServe V2 inference, JSON or binary tensor data; the receipt is in `parameters` (fast path)."""
    return await _inference_reply(request, name)


async def v2_infer_version(request: Request, name: str, version: str) -> Response:
    """KServe V2 inference of the manifest's version of the model (fast path)."""
    return await _inference_reply(request, name, version)


async def v2_repository_index(request: Request) -> Response:
    """Every model of the attested manifest and whether this server serves it (the LLM is on /v1)."""
    state = _state(request)
    served = set(_service(request).runtime.models)
    if state.llm is not None:
        served.add(state.llm.name)
    return json_response(kserve.repository_index(_service(request).manifest, served, await request.body()))


async def v2_repository_control(_request: Request, name: str) -> Response:
    """Model load and unload are refused: the served models are those of the attested manifest."""
    raise kserve.MODEL_CONTROL


def _body(model: type[Any], *, required: bool = True) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": required, "content": {_JSON: {"schema": ref}}}}


def _errors(model: type[Any], *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model} for status in statuses}


_E = schemas.ErrorBody
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_V2E = schemas.V2ErrorBody


def _model_routes(
    version: str, *, metadata: Any, ready: Any, config: Any, stats: Any, infer: Any
) -> tuple[tuple[str, Any, str, dict[str, Any]], ...]:
    """The per-model V2 routes, under /v2/models/{name} and again under /v2/models/{name}/versions/{v}."""
    base = "/v2/models/{name}" + version
    refusals = _errors(_V2E, 400, 404, 422)
    return (
        (base, metadata, "GET", {"responses": {200: {"model": schemas.V2ModelMetadata}, **refusals}}),
        (
            base + "/ready",
            ready,
            "GET",
            {
                "responses": {
                    200: {"model": schemas.V2ModelReady},
                    503: {"model": schemas.V2ModelReady},
                    **refusals,
                }
            },
        ),
        (base + "/config", config, "GET", {"responses": {200: {"model": schemas.V2ModelConfig}, **refusals}}),
        (base + "/stats", stats, "GET", {"responses": {200: {"model": schemas.V2Statistics}, **refusals}}),
        (
            base + "/infer",
            infer,
            "POST",
            {
                "responses": {
                    200: {
                        "model": schemas.V2InferResponse,
                        "content": {kserve.OCTET_STREAM.decode(): {}},
                        "description": "JSON, or with binary outputs a JSON header of "
                        "Inference-Header-Content-Length bytes and the raw tensors",
                    },
                    **_errors(_V2E, 400, 404, 413, 415, 422),
                },
                "openapi_extra": _body(schemas.V2InferRequest),
            },
        ),
    )


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
                **_errors(_E, 400, 404),
            }
        },
    ),
    ("/models", get_models, "GET", {"responses": {200: {"model": schemas.ManifestBody}}}),
    (
        GATEWAY_PATH,
        get_ohttp_keys,
        "GET",
        {"responses": {200: {"content": {ohttp.KEYS_MEDIA_TYPE: _BINARY}}}},
    ),
    (
        GATEWAY_PATH,
        post_ohttp_request,
        "POST",
        {
            "responses": {
                200: {"content": {ohttp.RESPONSE_MEDIA_TYPE: _BINARY}},
                400: {"content": {PROBLEM_MEDIA_TYPE: {}}},
                **_errors(_E, 413, 415),
            },
            "openapi_extra": {
                "requestBody": {"required": True, "content": {ohttp.REQUEST_MEDIA_TYPE: _BINARY}}
            },
        },
    ),
    (
        "/infer/sealed",
        post_sealed_infer,
        "POST",
        {
            "responses": {200: {"model": schemas.SealedInferResponse}, **_errors(_E, 400, 404, 413, 422)},
            "openapi_extra": _body(schemas.SealedInferRequest),
        },
    ),
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
        "/v2/models/stats",
        v2_all_stats,
        "GET",
        {"responses": {200: {"model": schemas.V2Statistics}}},
    ),
    *_model_routes(
        "",
        metadata=v2_model,
        ready=v2_model_ready,
        config=v2_model_config,
        stats=v2_model_stats,
        infer=v2_infer,
    ),
    *_model_routes(
        "/versions/{version}",
        metadata=v2_model_version,
        ready=v2_model_version_ready,
        config=v2_model_version_config,
        stats=v2_model_version_stats,
        infer=v2_infer_version,
    ),
    (
        "/v2/repository/index",
        v2_repository_index,
        "POST",
        {
            "responses": {200: {"model": list[schemas.V2RepositoryModel]}, **_errors(_V2E, 400)},
            "openapi_extra": _body(schemas.V2RepositoryIndexRequest, required=False),
        },
    ),
    (
        "/v2/repository/models/{name}/load",
        v2_repository_control,
        "POST",
        {"responses": {403: {"model": _V2E}}},
    ),
    (
        "/v2/repository/models/{name}/unload",
        v2_repository_control,
        "POST",
        {"responses": {403: {"model": _V2E}}},
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


def _with_gateway(
    gateway: SealedGateway, inference: FastRoute | None, llm: FastRoute | None, method: str, path: str
) -> FastHandler | None:
    """The edge's fast route: the OHTTP gateway's POST, the inference routes and the LLM's generation."""
    if method == "POST" and path == GATEWAY_PATH:
        return gateway.handle
    handler = None if inference is None else inference(method, path)
    return handler if handler is not None or llm is None else llm(method, path)


def _claims(route: FastRoute, method: str, path: str) -> bool:
    return route(method, path) is not None


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
    arrivals: Arrivals | None = None,
    replay: ReplayGuard | None = None,
) -> HttpEdge:
    """The ASGI app. `fast_path=False` serves inference through the FastAPI routes (for tests); `llm`
    serves the manifest's LLM behind the OpenAI-compatible /v1 routes; `batching=None` runs each request
    on its own instead of batching concurrent ones; `arrivals` is the server's count of inference requests
    received and not answered (enclave/http_protocol.py), which lets a lone request's batch run at once."""
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
    stats = ModelStats({name: m.entry.version for name, m in service.runtime.models.items()})

    def on_batch(model: LoadedModel, size: int, seconds: float) -> None:
        stats.record_execution(model.entry.name, size, int(seconds * 1e9))

    def on_job(job: Job) -> None:
        if job.result is not None:
            stats.record_queue(job.model.entry.name, int((job.started - job.queued) * 1e9))

    batcher = (
        None
        if batching is None
        else Batcher(
            service,
            max_batch=batching.max_batch,
            window_s=batching.window_s,
            on_batch=on_batch,
            on_job=on_job,
            arrivals=arrivals,
        )
    )
    endpoints = InferenceEndpoints(service, metrics, max_elements=max_elements, batcher=batcher, stats=stats)
    api.state.service = service
    api.state.metrics = metrics
    api.state.endpoints = endpoints
    api.state.batch_access = batch_access or BatchAccess(None)
    api.state.extra_headers = {"X-Verinfer-Simulated": "true"} if service.simulated else {}

    def on_error(error: RequestError) -> None:
        metrics.error_counter(error.code).inc()

    api.state.on_error = on_error

    for path, handler, method, options in ROUTES:
        api.add_api_route(path, handler, methods=[method], **options)
    llm_api.install(api, llm)
    if llm is not None:
        observe_llm(metrics, llm)
    install_error_handlers(
        api,
        on_error=on_error,
        parameter_codes={"nonce": "invalid_nonce", "signer": "invalid_signer"},
        internal=INTERNAL,
    )
    api.openapi = lambda: openapi_schema(api)  # type: ignore[method-assign]
    api.router.on_shutdown.append(access_log.flush)

    def observe(path: str, status: int, seconds: float) -> None:
        endpoint = endpoint_label(path)
        metrics.request_counter(endpoint, status).inc()
        metrics.observe_request(endpoint, seconds)

    inference = inference_route(endpoints) if fast_path else None
    if arrivals is not None:  # count what the batcher will see: the fast route's requests
        arrivals.is_inference = None if inference is None else partial(_claims, inference)
        metrics.inference_in_flight.set_function(arrivals)
    fast_headers = header_pairs(api.state.extra_headers)

    def edge(log: AccessLog, fast_route: FastRoute | None, direct_route: FastRoute | None = None) -> HttpEdge:
        return HttpEdge(
            api,
            max_body=max_body,
            access_log=log,
            observe=observe,
            on_error=on_error,
            fast_route=fast_route,
            fast_headers=api.state.extra_headers,
            direct_route=direct_route,
        )

    # Requests opened by the gateway reach the same routes, limits and metrics, but write no access-log
    # line: it would put a sealed request's path in the host-visible log.
    gateway = SealedGateway(
        service.sealing_key,
        edge(AccessLog(None), inference),
        fast_route=inference,
        fast_headers=fast_headers,
        replay=replay,
        on_refusal=lambda code: metrics.error_counter(code).inc(),
    )
    api.state.gateway = gateway
    if fast_path:
        generation = None if llm is None else llm_api.llm_route(llm, on_error)
        # the HTTP protocol may answer inference and the gateway itself: their replies are whole bodies
        whole = partial(_with_gateway, gateway, inference, None)
        return edge(access_log, partial(_with_gateway, gateway, inference, generation), whole)
    return edge(access_log, None)
