"""The unsigned alternative: what a competent user would write to serve the same ONNX models.

An ordinary FastAPI + pydantic + onnxruntime server, written as the FastAPI docs teach, so that signed
`/infer` is measured against the server people would otherwise run (bench/bench_load.py), not a straw man:

- the request is a pydantic model, a discriminated union on `model`, so each model's input is validated
  as its own nested list type (iris: features [N, F]; LeNet: image [N, 1, 28, 28]);
- the response is a pydantic model declared as the return type, which FastAPI (>= 0.130) serialises
  straight to JSON bytes in pydantic-core: its documented fast path, faster than ORJSONResponse (deprecated);
- one onnxruntime InferenceSession per model, loaded and warmed at start-up, with the options a competent
  user picks for tiny models (one intra-op and one inter-op thread: no thread hand-off per run), the
  same as the signed server's;
- the endpoint is `async def` and runs the model inline. These models run in 5-30 us, less than the
  threadpool hand-off a `def` endpoint costs (measured: the `def` variant was slower at 1 and at 16
  connections on the 2-core bench machine); `def` is the choice for models that run for milliseconds.

Served by bench_load with uvicorn as the signed server is (one worker, uvloop, httptools, no access log,
no Server header). No signing, no receipts, no hashing: that is the difference being measured.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

MODELS = Path(__file__).resolve().parent.parent / "models"


class Served(NamedTuple):
    """A loaded model and its tensor names, looked up once (each get_inputs() call builds new objects)."""

    session: ort.InferenceSession
    input_name: str
    output_names: list[str]


SESSIONS: dict[str, Served] = {}


class TabularRequest(BaseModel):
    model: Literal["iris-ols", "iris-mlp"]
    inputs: list[list[float]] = Field(min_length=1)


class ImageRequest(BaseModel):
    model: Literal["mnist-lenet"]
    inputs: list[list[list[list[float]]]] = Field(min_length=1)


InferRequest = Annotated[TabularRequest | ImageRequest, Field(discriminator="model")]


class Tensor(BaseModel):
    name: str
    shape: list[int]
    data: list[int] | list[float]


class InferResponse(BaseModel):
    model: str
    outputs: list[Tensor]


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def load_sessions() -> None:
    """Every ONNX model of the manifest (the LLM is not served here), warmed with one zero row."""
    manifest = json.loads((MODELS / "manifest.json").read_text())
    for entry in manifest["models"]:
        if not str(entry["file"]).endswith(".onnx"):
            continue
        session = ort.InferenceSession(
            str(MODELS / entry["file"]), session_options(), providers=["CPUExecutionProvider"]
        )
        spec = session.get_inputs()[0]
        shape = [1 if not isinstance(d, int) or d < 0 else d for d in spec.shape]
        session.run(None, {spec.name: np.zeros(shape, dtype=np.float32)})
        SESSIONS[entry["name"]] = Served(session, spec.name, [o.name for o in session.get_outputs()])


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    load_sessions()
    yield
    SESSIONS.clear()


app = FastAPI(title="unsigned ONNX server", lifespan=lifespan, docs_url=None, redoc_url=None)


@app.post("/infer")
async def infer(request: InferRequest) -> InferResponse:
    served = SESSIONS[request.model]
    try:
        features = np.asarray(request.inputs, dtype=np.float32)
        results = served.session.run(served.output_names, {served.input_name: features})
    except (ValueError, ort.capi.onnxruntime_pybind11_state.InvalidArgument) as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    return InferResponse(
        model=request.model,
        outputs=[
            Tensor(name=name, shape=list(array.shape), data=array.ravel().tolist())
            for name, array in zip(served.output_names, results, strict=True)
        ],
    )


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    """The KServe readiness path, so verinfer.processes.wait_ready serves for both servers."""
    return {"ready": bool(SESSIONS)}
