"""Pydantic models of every request and response body, for /openapi.json and /docs.

They document the wire format; the hot routes do not validate through them (orjson + protocol/inputs.py
are several times faster and give the protocol's own error codes), so each model here must describe
exactly what the handlers accept and return. tests/test_http_edge.py checks real answers against them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Hex32 = Field(pattern=r"^0x[0-9a-fA-F]{64}$")


class ErrorBody(BaseModel):
    """Every refusal outside /v2: a stable machine-readable code and a message for people."""

    code: str
    message: str


class V2ErrorBody(BaseModel):
    """Refusals on KServe V2 routes: V2's required `error`, plus the same stable code."""

    error: str
    code: str


class Receipt(BaseModel):
    """The signed receipt (docs/PROTOCOL.md): EIP-712 over the first five fields."""

    requestId: str = Hex32
    modelHash: str = Hex32
    inputHash: str = Hex32
    outputHash: str = Hex32
    timestampMs: int = Field(ge=0, lt=2**64)
    enclave: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="EIP-55 address of the enclave key")
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="65 bytes r || s || v")


class InputTensor(BaseModel):
    name: str
    data: list[Any] = Field(description="nested lists of numbers (booleans and strings are refused)")
    shape: list[int] | None = Field(default=None, description="optional: data is reshaped to it")
    datatype: str | None = Field(default=None, description="optional V2 datatype, e.g. FP32")


class V2InputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | int]


class InferRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}]}
    )
    model: str
    inputs: list[InputTensor] | list[Any] = Field(
        min_length=1, description="named tensors, or for a one-input model its data as nested lists"
    )
    request_id: str | None = Field(
        default=None, pattern=r"^0x[0-9a-fA-F]{64}$", description="32 bytes; random when absent"
    )


class InferResponse(BaseModel):
    model: str
    model_version: str
    outputs: list[OutputTensor]
    receipt: Receipt
    simulated: bool


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    request_id: str | None = Field(default=None, pattern=r"^0x[0-9a-fA-F]{64}$")


class V2InferRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "inputs": [
                        {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3, 5.2, 2.3]}
                    ]
                }
            ]
        }
    )
    id: str | None = None
    inputs: list[V2InputTensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = Field(
        default=None, description="a subset of outputs; the receipt's outputHash covers exactly these"
    )
    parameters: V2InferParameters | None = None


class V2ResponseParameters(BaseModel):
    receipt: Receipt
    simulated: bool


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]
    parameters: V2ResponseParameters


class AttestationSummary(BaseModel):
    module_id: str
    timestamp_ms: int
    pcrs: dict[str, str]
    nonce: str | None
    user_data: str | None
    public_key: str | None


class AttestationResponse(BaseModel):
    simulated: bool
    warning: str | None = Field(description="set on SIMULATED attestations")
    format: str = Field(description="always COSE_Sign1")
    document: str = Field(description="the attestation document, base64")
    enclave: str
    publicKey: str
    manifestDigest: str
    summary: AttestationSummary


class TensorSpecBody(BaseModel):
    name: str
    dtype: str
    shape: list[int] = Field(description="-1 marks a dynamic dimension")


class ModelBody(BaseModel):
    name: str
    version: str
    file: str
    sha256: str
    modelHash: str
    task: str
    description: str
    inputs: list[TensorSpecBody]
    outputs: list[TensorSpecBody]
    metrics: dict[str, Any]


class ManifestBody(BaseModel):
    format: int
    digest: str = Field(description="sha256 the attestation binds as user_data")
    models: list[ModelBody]


class ReceiptBatchRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: int = Field(default=0, alias="from", ge=0, lt=2**63)
    max: int = Field(default=4096, ge=1, lt=2**63)


class ReceiptBatchResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: int = Field(alias="from")
    count: int
    next: int
    root: str | None = None
    enclave: str | None = None
    signature: str | None = None
    receipts: list[Receipt] | None = None


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, str]


class V2ModelReady(BaseModel):
    name: str
    ready: bool


REQUEST_MODELS: tuple[type[BaseModel], ...] = (InferRequest, V2InferRequest, ReceiptBatchRequest)
