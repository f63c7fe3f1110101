"""The inference endpoints as functions from request bytes to (status, response bytes).

Kept free of any web framework so the hot path pays only for parsing, inference, hashing and signing;
enclave/fastpath.py serves them over ASGI. Errors become the endpoint family's JSON shape: {code, message}
for /infer, {error, code} for the V2 protocol (protocol/edge.py). V2 requests and answers may carry
tensors as binary data (enclave/kserve.py); the receipt is the same either way. Both routes count into the
per-model statistics (enclave/model_stats.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from protocol.edge import error_body
from protocol.errors import RequestError, bad_request
from protocol.inputs import MAX_BATCH_ELEMENTS, may_hold_bools, parse_inputs, parse_json

from . import kserve
from .batcher import Batcher
from .metrics import Metrics
from .model_stats import ModelStats
from .runtime import LoadedModel
from .service import EnclaveService, InferenceResult, parse_request_id

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
Headers = list[tuple[bytes, bytes]]
Reply = tuple[int, bytes, Headers]  # JSON unless the headers name another content-type
_NO_HEADERS: Headers = []


def tensor_json(name: str, array: np.ndarray, model: LoadedModel) -> dict[str, Any]:
    spec = model.output_specs[name]
    return {"name": name, "datatype": spec.dtype.v2, "shape": list(array.shape), "data": array.ravel()}


@dataclass(slots=True)
class _Track:
    """One request's progress, for statistics: the model once known, and when each stage ended (ns)."""

    started: int
    model: str | None = None
    parsed: int = 0
    ran: int = 0
    inferences: int = 1
    queue_ns: int | None = None  # known here only when unbatched (0); the batcher reports its own


class InferenceEndpoints:
    """POST /infer and POST /v2/models/{name}[/versions/{v}]/infer as (body, headers) -> (status, body,
    headers).

    With a `batcher`, models run batched with concurrent requests (enclave/batcher.py), whose callbacks
    feed `stats` (enclave/app.py wires them); without one, one request at a time, counted here.
    """

    def __init__(
        self,
        service: EnclaveService,
        metrics: Metrics,
        *,
        max_elements: int = MAX_BATCH_ELEMENTS,
        batcher: Batcher | None = None,
        stats: ModelStats | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.max_elements = max_elements
        self.batcher = batcher
        self.stats = stats or ModelStats({n: m.entry.version for n, m in service.runtime.models.items()})

    def max_batch_size(self, name: str) -> int:
        """Triton's max_batch_size: the dynamic batcher's limit for a model it batches, else 0."""
        if self.batcher is None or not self.batcher.exact.get(name, False):
            return 0
        return self.batcher.batch_limit(name)

    async def infer(self, body: bytes, _headers: Headers = _NO_HEADERS, salt: bytes | None = None) -> Reply:
        """POST /infer: {model, inputs, request_id?} -> outputs and a signed receipt (over salted
        commitments for a sealed request, `salt`)."""
        track = _Track(time.perf_counter_ns())
        return await self._answer(track, self._infer_reply(body, track, salt), v2=False)

    async def v2_infer(
        self,
        name: str,
        body: bytes,
        headers: Headers = _NO_HEADERS,
        version: str | None = None,
        salt: bytes | None = None,
    ) -> Reply:
        """POST /v2/models/{name}[/versions/{version}]/infer: the Open Inference Protocol, JSON or binary
        tensor data, receipt in `parameters`."""
        track = _Track(time.perf_counter_ns())
        work = self._v2_infer(name, version, body, headers, track, salt=salt)
        return await self._answer(track, work, v2=True)

    async def _answer(self, track: _Track, work: Awaitable[Reply], *, v2: bool) -> Reply:
        """The reply of `work`, or its refusal in the route family's shape; either way counted in stats."""
        try:
            reply = await work
        except RequestError as error:
            self.metrics.error_counter(error.code).inc()
            self._record(track, ok=False)
            return error.status, error_body(error, v2=v2), _NO_HEADERS
        except Exception:
            self._record(track, ok=False)
            raise
        self._record(track, ok=True)
        return reply

    async def _infer_reply(self, body: bytes, track: _Track, salt: bytes | None) -> Reply:
        return 200, orjson.dumps(await self._infer(body, track, salt), option=_NUMPY), _NO_HEADERS

    def _record(self, track: _Track, *, ok: bool) -> None:
        if track.model is None:  # refused before a model was named: nothing to count against
            return
        now = time.perf_counter_ns()
        if not ok:
            self.stats.record_request(track.model, ok=False, total_ns=now - track.started)
            return
        self.stats.record_request(
            track.model,
            ok=True,
            total_ns=now - track.started,
            input_ns=track.parsed - track.started,
            output_ns=now - track.ran,
            inferences=track.inferences,
            queue_ns=track.queue_ns,
        )

    async def _infer(self, body: bytes, track: _Track, salt: bytes | None) -> dict[str, Any]:
        request = parse_json(body)
        if not isinstance(request, dict):
            raise bad_request("invalid_json", "body must be a JSON object {model, inputs, request_id?}")
        if "model" not in request or "inputs" not in request:
            raise bad_request("missing_field", "body needs 'model' and 'inputs'")
        model = self.service.runtime.get(request["model"])
        track.model = model.entry.name
        inputs = self._inputs(model, request["inputs"], body, v2=False)
        request_id = parse_request_id(request.get("request_id"))
        result = await self._run(model, inputs, request_id, None, track, salt=salt)
        return {
            "model": model.entry.name,
            "model_version": model.entry.version,
            "outputs": [tensor_json(n, a, model) for n, a in result.outputs],
            "receipt": result.receipt.to_json(),
            "simulated": self.service.simulated,
        }

    async def _v2_infer(
        self,
        name: str,
        version: str | None,
        body: bytes,
        headers: Headers,
        track: _Track,
        *,
        salt: bytes | None,
    ) -> Reply:
        model = self.service.runtime.get(name)
        kserve.check_version(model.entry, version)
        track.model = model.entry.name
        request, binary_data = kserve.split_request(body, headers)
        if not isinstance(request, dict) or "inputs" not in request:
            raise bad_request("missing_field", "body needs 'inputs' (a list of tensors)")
        if "id" in request and not isinstance(request["id"], str):
            raise bad_request("invalid_id", "'id' must be a string")
        parameters = request.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise bad_request("invalid_parameters", "'parameters' must be an object")
        raw = kserve.BinaryInputs(binary_data)
        inputs = self._inputs(model, request["inputs"], body, v2=True, raw=raw)
        raw.finish()
        wanted, binary = kserve.requested_outputs(request, model.output_names)
        request_id = parse_request_id(parameters.get("request_id"))
        result = await self._run(model, inputs, request_id, wanted, track, salt=salt)
        response: dict[str, Any] = {"model_name": model.entry.name, "model_version": model.entry.version}
        if "id" in request:
            response["id"] = request["id"]  # checked to be a string before any work
        response["parameters"] = {"receipt": result.receipt.to_json(), "simulated": self.service.simulated}
        payload, extra = kserve.encode_response(response, result.outputs, model.output_specs, binary)
        return 200, payload, extra

    def _inputs(
        self,
        model: LoadedModel,
        inputs: Any,
        body: bytes,
        *,
        v2: bool,
        raw: kserve.BinaryInputs | None = None,
    ) -> list[tuple[str, np.ndarray]]:
        return parse_inputs(
            model.entry,
            inputs,
            v2=v2,
            max_elements=self.max_elements,
            check_bools=may_hold_bools(body),
            raw=raw,
        )

    async def _run(
        self,
        model: LoadedModel,
        inputs: list[tuple[str, np.ndarray]],
        request_id: bytes,
        only: set[str] | None,
        track: _Track,
        *,
        salt: bytes | None = None,
    ) -> InferenceResult:
        name = model.entry.name
        track.parsed = time.perf_counter_ns()
        if self.max_batch_size(name) > 0:
            track.inferences = int(inputs[0][1].shape[0])
        if self.batcher is None:
            outputs = model.run(dict(inputs))
            self.stats.record_execution(name, 1, time.perf_counter_ns() - track.parsed)
            track.queue_ns = 0
            result = self.service.sign_outputs(model, inputs, outputs, request_id, only, salt=salt)
            self.service.record(result.receipt)
        else:
            result = await self.batcher.infer(model, inputs, request_id, only, salt)
        track.ran = time.perf_counter_ns()
        latency, count = self.metrics.model_series(name)
        latency.observe((track.ran - track.parsed) / 1e9)
        count.inc()
        return result
