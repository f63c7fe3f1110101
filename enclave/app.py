"""The HTTP API: /infer, /attestation, /models, /metrics and the KServe Open Inference Protocol V2.

Handlers parse JSON with orjson straight from the body (no pydantic models on the hot path) and run the
small models inline: a thread-pool hop would cost more than the inference itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .errors import ApiError, bad_request
from .metrics import Metrics
from .runtime import LoadedModel, parse_inputs
from .service import EnclaveService, InferenceResult, parse_nonce, parse_request_id

DEFAULT_MAX_BODY = 4 * 1024 * 1024
_JSON = "application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY

Handler = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=_NUMPY), status_code=status, media_type=_JSON, headers=headers)


def tensor_json(name: str, array: np.ndarray, model: LoadedModel) -> dict[str, Any]:
    spec = next(s for s in model.entry.outputs if s.name == name)
    return {"name": name, "datatype": spec.dtype.v2, "shape": list(array.shape), "data": array.ravel()}


def create_app(service: EnclaveService, *, max_body: int = DEFAULT_MAX_BODY) -> FastAPI:
    app = FastAPI(title="verinfer enclave", version=__version__, docs_url=None, redoc_url=None)
    metrics = Metrics()
    metrics.info.labels(enclave=service.address, simulated=str(service.simulated).lower()).set(1)
    simulated_header = {"X-Verinfer-Simulated": "true"} if service.simulated else {}

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise ApiError(413, "body_too_large", f"request body exceeds {max_body} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise ApiError(413, "body_too_large", f"request body exceeds {max_body} bytes")
            chunks.append(chunk)
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise bad_request("invalid_json", f"body is not valid JSON: {exc}") from exc

    def endpoint(name: str, *, v2: bool = False) -> Callable[[Handler], Handler]:
        """Counts requests and turns ApiError into the endpoint family's error shape."""

        def wrap(handler: Handler) -> Handler:
            async def run(request: Request) -> Response:
                try:
                    response = await handler(request)
                except ApiError as error:
                    metrics.error_counter(error.code).inc()
                    metrics.request_counter(name, error.status).inc()
                    body = (
                        {"error": error.message, "code": error.code}
                        if v2
                        else {"code": error.code, "message": error.message}
                    )
                    return json_response(body, error.status)
                metrics.request_counter(name, response.status_code).inc()
                return response

            return run

        return wrap

    def infer(
        model: LoadedModel,
        inputs: list[tuple[str, np.ndarray]],
        request_id: bytes,
        only: set[str] | None = None,
    ) -> InferenceResult:
        start = time.perf_counter()
        result = service.infer(model, inputs, request_id, only)
        metrics.model_latency(model.entry.name).observe(time.perf_counter() - start)
        metrics.model_inferences(model.entry.name).inc()
        return result

    @endpoint("infer")
    async def post_infer(request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise bad_request("invalid_json", "body must be a JSON object {model, inputs, request_id?}")
        if "model" not in body or "inputs" not in body:
            raise bad_request("missing_field", "body needs 'model' and 'inputs'")
        model = service.runtime.get(body["model"])
        inputs = parse_inputs(model.entry, body["inputs"])
        result = infer(model, inputs, parse_request_id(body.get("request_id")))
        return json_response(
            {
                "model": model.entry.name,
                "model_version": model.entry.version,
                "outputs": [tensor_json(n, a, model) for n, a in result.outputs],
                "receipt": result.receipt.to_json(),
                "simulated": service.simulated,
            }
        )

    @endpoint("attestation")
    async def get_attestation(request: Request) -> Response:
        nonce = parse_nonce(request.query_params.get("nonce"))
        document = service.attestation(nonce)
        if "application/cbor" in request.headers.get("accept", ""):
            return Response(document, media_type="application/cbor", headers=simulated_header)
        return json_response(service.attestation_json(document), headers=simulated_header)

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

    @endpoint("v2_infer", v2=True)
    async def v2_infer(request: Request) -> Response:
        model = service.runtime.get(request.path_params["name"])
        body = await read_json(request)
        if not isinstance(body, dict) or "inputs" not in body:
            raise bad_request("missing_field", "body needs 'inputs' (a list of tensors)")
        parameters = body.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise bad_request("invalid_parameters", "'parameters' must be an object")
        inputs = parse_inputs(model.entry, body["inputs"], v2=True)
        wanted = _requested_outputs(body.get("outputs"), model)
        result = infer(model, inputs, parse_request_id(parameters.get("request_id")), wanted)
        response: dict[str, Any] = {
            "model_name": model.entry.name,
            "model_version": model.entry.version,
            "outputs": [tensor_json(n, a, model) for n, a in result.outputs],
            "parameters": {"receipt": result.receipt.to_json(), "simulated": service.simulated},
        }
        if "id" in body:
            response["id"] = body["id"]
        return json_response(response)

    for path, handler, methods in (
        ("/infer", post_infer, ["POST"]),
        ("/attestation", get_attestation, ["GET"]),
        ("/models", get_models, ["GET"]),
        ("/metrics", get_metrics, ["GET"]),
        ("/v2", v2_server, ["GET"]),
        ("/v2/health/live", v2_live, ["GET"]),
        ("/v2/health/ready", v2_ready, ["GET"]),
        ("/v2/models/{name}", v2_model, ["GET"]),
        ("/v2/models/{name}/ready", v2_model_ready, ["GET"]),
        ("/v2/models/{name}/infer", v2_infer, ["POST"]),
    ):
        app.add_api_route(path, handler, methods=methods, include_in_schema=True)

    async def unexpected(_request: Request, exc: Exception) -> Response:
        metrics.error_counter("internal").inc()
        return json_response({"code": "internal", "message": f"internal error: {type(exc).__name__}"}, 500)

    app.add_exception_handler(Exception, unexpected)
    return app


def _requested_outputs(value: Any, model: LoadedModel) -> set[str] | None:
    """V2 lets callers pick outputs; the receipt's outputHash then covers exactly the returned ones."""
    if value is None:
        return None
    names = {s.name for s in model.entry.outputs}
    if not isinstance(value, list) or not all(isinstance(o, dict) and o.get("name") in names for o in value):
        raise bad_request("unknown_output", f"requested outputs must be among {sorted(names)}")
    return {o["name"] for o in value}
