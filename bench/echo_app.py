"""Baselines: bare FastAPI endpoints that take the same JSON body as /infer and return it.

- `/echo` parses and serialises with orjson, as the enclave server does, so its ratio measures only what
  inference, validation, hashing and signing add (the strict comparison);
- `/echo-idiomatic` is FastAPI as usually written: the body declared as a `dict` parameter (validated by
  FastAPI/pydantic) and returned for FastAPI to serialise.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.responses import Response

app = FastAPI(docs_url=None, redoc_url=None)


@app.post("/echo")
async def echo(request: Request) -> Response:
    return Response(orjson.dumps(orjson.loads(await request.body())), media_type="application/json")


@app.post("/echo-idiomatic")
async def echo_idiomatic(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI idiom
    return body
