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
    data: list[Any] | None = Field(
        default=None, description="absent when parameters.binary_data_size says the data follows the JSON"
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: bytes of raw data after the JSON header"
    )


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | int]


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | int] | None = Field(default=None, description="absent for a binary output")
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: bytes of this output after the JSON header"
    )


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
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data: true to have it as raw bytes after the JSON header"
    )


class V2InferParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    request_id: str | None = Field(default=None, pattern=r"^0x[0-9a-fA-F]{64}$")
    binary_data_output: bool | None = Field(
        default=None, description="true: outputs as raw bytes after the JSON header unless they say otherwise"
    )


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
    outputs: list[V2OutputTensor]
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
    encryptionKey: str = Field(
        description="0x hex X25519 public key requests are sealed to (the attested user_data[32:64]); "
        "its OHTTP key configuration is at GET /.well-known/ohttp-gateway"
    )
    ohttpKeys: str = Field(
        description="base64 of the gateway's application/ohttp-keys (RFC 9458): its configuration names "
        "encryptionKey"
    )
    summary: AttestationSummary


class SealedInferRequest(BaseModel):
    """POST /infer/sealed: an on-chain request's input, sealed to the enclave (docs/PROTOCOL.md)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    sealed_input: str = Field(description="0x hex: 0x01 || u16 aead || enc || HPKE ciphertext of the inputs")
    request_id: str | None = Field(default=None, description="0x hex, 32 bytes (the fulfilment id)")
    output_key: str | None = Field(
        default=None, description="0x hex X25519 public key to seal the output to; null: clear output"
    )


class SealedInferResponse(BaseModel):
    model: str
    model_version: str
    output: str = Field(description="0x hex: the bytes to post on chain (sealed when output_key was given)")
    sealed_output: bool
    receipt: Receipt
    simulated: bool


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


class V2ConfigTensor(BaseModel):
    name: str
    data_type: str = Field(description="TYPE_ and the V2 datatype, e.g. TYPE_FP32")
    dims: list[int] = Field(description="without the batch dimension when max_batch_size > 0")
    is_shape_tensor: bool
    format: str | None = None
    allow_ragged_batch: bool | None = None
    optional: bool | None = None
    label_filename: str | None = None


class V2DynamicBatching(BaseModel):
    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int
    preserve_ordering: bool


class V2ModelConfig(BaseModel):
    """Triton's model configuration (model_config.proto as JSON), read-only: the manifest fixes it."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int = Field(description="0: shapes are used as given; N: requests batched, N at most")
    input: list[V2ConfigTensor]
    output: list[V2ConfigTensor]
    instance_group: list[dict[str, Any]]
    default_model_filename: str
    parameters: dict[str, dict[str, str]]
    dynamic_batching: V2DynamicBatching | None = None


class V2RepositoryIndexRequest(BaseModel):
    ready: bool = Field(default=False, description="true: only the models that are ready")


class V2RepositoryModel(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, or UNAVAILABLE for a manifest model this server does not load")
    reason: str | None = None


class V2Duration(BaseModel):
    count: int
    ns: int


class V2InferenceStats(BaseModel):
    success: V2Duration
    fail: V2Duration
    queue: V2Duration
    compute_input: V2Duration
    compute_infer: V2Duration
    compute_output: V2Duration
    cache_hit: V2Duration
    cache_miss: V2Duration


class V2BatchStats(BaseModel):
    batch_size: int
    compute_infer: V2Duration


class V2ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="milliseconds since the epoch; 0 before the first")
    inference_count: int
    execution_count: int
    inference_stats: V2InferenceStats
    response_stats: dict[str, Any]
    batch_stats: list[V2BatchStats]
    memory_usage: list[Any]


class V2Statistics(BaseModel):
    """Triton's statistics extension: cumulative per-model counters (docs/PROTOCOL.md)."""

    model_stats: list[V2ModelStatistics]


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    InferRequest,
    V2InferRequest,
    ReceiptBatchRequest,
    V2RepositoryIndexRequest,
)
