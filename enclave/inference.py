"""The inference endpoints as functions from request bytes to (status, response bytes).

Kept free of any web framework so the hot path pays only for parsing, inference, hashing and signing;
enclave/fastpath.py serves them over ASGI. Errors become the endpoint family's JSON shape: {code, message}
for /infer, {error, code} for the V2 protocol (protocol/edge.py).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson

from protocol.edge import error_body
from protocol.errors import RequestError, bad_request
from protocol.inputs import MAX_BATCH_ELEMENTS, may_hold_bools, parse_inputs

from .batcher import Batcher
from .metrics import Metrics
from .runtime import LoadedModel
from .service import EnclaveService, InferenceResult, parse_request_id

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
Headers = list[tuple[bytes, bytes]]
Reply = tuple[int, bytes, Headers]  # JSON unless the headers name another content-type
_NO_HEADERS: Headers = []


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request("invalid_json", f"body is not valid JSON: {exc}") from exc


def tensor_json(name: str, array: np.ndarray, model: LoadedModel) -> dict[str, Any]:
    spec = model.output_specs[name]
    return {"name": name, "datatype": spec.dtype.v2, "shape": list(array.shape), "data": array.ravel()}


class InferenceEndpoints:
    """POST /infer and POST /v2/models/{name}/infer as (body, headers) -> (status, body, headers).

    With a `batcher`, models run on its worker thread, batched with concurrent requests (enclave/batcher.py);
    without one, on the event loop, one request at a time.
    """

    def __init__(
        self,
        service: EnclaveService,
        metrics: Metrics,
        *,
        max_elements: int = MAX_BATCH_ELEMENTS,
        batcher: Batcher | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.max_elements = max_elements
        self.batcher = batcher

    async def infer(self, body: bytes, _headers: Headers = _NO_HEADERS) -> Reply:
        """POST /infer: {model, inputs, request_id?} -> outputs and a signed receipt."""
        try:
            return 200, orjson.dumps(await self._infer(body), option=_NUMPY), _NO_HEADERS
        except RequestError as error:
            self.metrics.error_counter(error.code).inc()
            return error.status, error_body(error, v2=False), _NO_HEADERS

    async def v2_infer(self, name: str, body: bytes, _headers: Headers = _NO_HEADERS) -> Reply:
        """POST /v2/models/{name}/infer: the Open Inference Protocol, receipt in `parameters`."""
        try:
            return 200, orjson.dumps(await self._v2_infer(name, body), option=_NUMPY), _NO_HEADERS
        except RequestError as error:
            self.metrics.error_counter(error.code).inc()
            return error.status, error_body(error, v2=True), _NO_HEADERS

    async def _infer(self, body: bytes) -> dict[str, Any]:
        request = parse_json(body)
        if not isinstance(request, dict):
            raise bad_request("invalid_json", "body must be a JSON object {model, inputs, request_id?}")
        if "model" not in request or "inputs" not in request:
            raise bad_request("missing_field", "body needs 'model' and 'inputs'")
        model = self.service.runtime.get(request["model"])
        inputs = self._inputs(model, request["inputs"], body, v2=False)
        result = await self._run(model, inputs, parse_request_id(request.get("request_id")), None)
        return {
            "model": model.entry.name,
            "model_version": model.entry.version,
            "outputs": [tensor_json(n, a, model) for n, a in result.outputs],
            "receipt": result.receipt.to_json(),
            "simulated": self.service.simulated,
        }

    async def _v2_infer(self, name: str, body: bytes) -> dict[str, Any]:
        model = self.service.runtime.get(name)
        request = parse_json(body)
        if not isinstance(request, dict) or "inputs" not in request:
            raise bad_request("missing_field", "body needs 'inputs' (a list of tensors)")
        if "id" in request and not isinstance(request["id"], str):
            raise bad_request("invalid_id", "'id' must be a string")
        parameters = request.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise bad_request("invalid_parameters", "'parameters' must be an object")
        inputs = self._inputs(model, request["inputs"], body, v2=True)
        wanted = requested_outputs(request.get("outputs"), model)
        result = await self._run(model, inputs, parse_request_id(parameters.get("request_id")), wanted)
        response: dict[str, Any] = {
            "model_name": model.entry.name,
            "model_version": model.entry.version,
            "outputs": [tensor_json(n, a, model) for n, a in result.outputs],
            "parameters": {"receipt": result.receipt.to_json(), "simulated": self.service.simulated},
        }
        if "id" in request:
            response["id"] = request["id"]  # checked to be a string before any work
        return response

    def _inputs(
        self, model: LoadedModel, inputs: Any, body: bytes, *, v2: bool
    ) -> list[tuple[str, np.ndarray]]:
        return parse_inputs(
            model.entry, inputs, v2=v2, max_elements=self.max_elements, check_bools=may_hold_bools(body)
        )

    async def _run(
        self,
        model: LoadedModel,
        inputs: list[tuple[str, np.ndarray]],
        request_id: bytes,
        only: set[str] | None,
    ) -> InferenceResult:
        start = time.perf_counter()
        if self.batcher is None:
            result = self.service.infer(model, inputs, request_id, only)
        else:
            result = await self.batcher.infer(model, inputs, request_id, only)
        latency, count = self.metrics.model_series(model.entry.name)
        latency.observe(time.perf_counter() - start)
        count.inc()
        return result


def requested_outputs(value: Any, model: LoadedModel) -> set[str] | None:
    """V2 lets callers pick outputs; the receipt's outputHash then covers exactly the returned ones."""
    if value is None:
        return None
    names = set(model.output_specs)
    if not isinstance(value, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) and o["name"] in names for o in value
    ):
        raise bad_request("unknown_output", f"requested outputs must be among {sorted(names)}")
    return {o["name"] for o in value}
