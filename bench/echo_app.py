"""The baseline: a bare FastAPI endpoint that takes the same JSON body as /infer and returns it.

It parses and serialises with orjson, as the enclave server does, so the ratio measures what inference,
validation, hashing and signing add, not a difference in JSON libraries.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI(docs_url=None, redoc_url=None)


@app.post("/echo")
async def echo(request: Request) -> Response:
    return Response(orjson.dumps(orjson.loads(await request.body())), media_type="application/json")
