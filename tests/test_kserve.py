"""KServe V2 / Triton conformance, driven by Triton's own client (tritonclient[http]) against a real server:
binary tensor data both ways, compression both ways, versioned routes, model configuration, repository
index, statistics and V2 errors; plus properties of the binary codec (enclave/kserve.py) and the receipt,
which does not depend on the wire format."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import numpy as np
import pytest
import tritonclient.http as triton  # type: ignore[import-untyped]
import tritonclient.http.aio as triton_aio  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from attestation import Policy
from enclave import kserve
from enclave.model_stats import ModelStats
from protocol.errors import RequestError
from protocol.hashing import keccak256
from protocol.inputs import parse_inputs
from protocol.manifest import ModelEntry, TensorSpec
from protocol.tensors import BY_V2, encode_tensors
from verinfer.verify import manifest_from_json, output_hash, verify_inference

from .test_server import attestation_document, root_of

IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
REQUEST_ID = "0x" + "5a" * 32


# --- the codec, with tritonclient building and reading the bodies ------------------------------------------


def entry_of(specs: list[TensorSpec], outputs: list[TensorSpec] | None = None) -> ModelEntry:
    return ModelEntry(
        name="m",
        version="1",
        file="m.onnx",
        sha256="00" * 32,
        task="test",
        description="",
        inputs=tuple(specs),
        outputs=tuple(outputs or specs),
        metrics={},
    )


# JSON carries every one of these exactly (booleans are refused in JSON, so BOOL is binary only).
JSON_TYPES = [
    "FP16",
    "FP32",
    "FP64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
]


@st.composite
def tensors(draw: st.DrawFn, types: list[str] = JSON_TYPES) -> list[tuple[TensorSpec, np.ndarray]]:
    """1 to 3 named finite tensors of random datatypes, each with a dynamic first dimension."""
    count = draw(st.integers(1, 3))
    out = []
    for index in range(count):
        dtype = BY_V2[draw(st.sampled_from(types))]
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
        width = cast(Literal[16, 32, 64], 8 * dtype.numpy.itemsize)
        elements = (
            st.floats(allow_nan=False, allow_infinity=False, width=width) if dtype.numpy.kind == "f" else None
        )
        array = draw(hnp.arrays(dtype.numpy, shape, elements=elements))
        out.append((TensorSpec(f"t{index}", dtype, (-1, *shape[1:])), array))
    return out


def triton_body(
    named: list[tuple[TensorSpec, np.ndarray]], binary: list[bool], order: list[int]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The exact request tritonclient sends, in `order`, each input binary or JSON as `binary` says."""
    inputs = []
    for index in order:
        spec, array = named[index]
        item = triton.InferInput(spec.name, list(array.shape), spec.dtype.v2)
        item.set_data_from_numpy(array, binary_data=binary[index])
        inputs.append(item)
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs)
    headers = [] if json_size is None else [(kserve.HEADER_LENGTH, str(json_size).encode())]
    return body, headers


def decode(
    entry: ModelEntry, body: bytes, headers: list[tuple[bytes, bytes]]
) -> list[tuple[str, np.ndarray]]:
    request, data = kserve.split_request(body, headers)
    raw = kserve.BinaryInputs(data)
    inputs = parse_inputs(entry, request["inputs"], v2=True, raw=raw)
    raw.finish()
    return inputs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(named=tensors(), data=st.data())
def test_binary_and_json_requests_decode_to_the_same_canonical_tensors(
    named: list[tuple[TensorSpec, np.ndarray]], data: st.DataObject
) -> None:
    entry = entry_of([spec for spec, _ in named])
    order = data.draw(st.permutations(range(len(named))))
    mixed = data.draw(st.lists(st.booleans(), min_size=len(named), max_size=len(named)))
    decoded = {
        label: decode(entry, *triton_body(named, flags, order))
        for label, flags in (
            ("binary", [True] * len(named)),
            ("json", [False] * len(named)),
            ("mixed", mixed),
        )
    }
    expected = [(spec.name, array) for spec, array in named]  # model order, whatever the request's order
    for inputs in decoded.values():
        assert [name for name, _ in inputs] == [name for name, _ in expected]
        for (_, got), (_, want) in zip(inputs, expected, strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
        assert keccak256(encode_tensors(inputs)) == keccak256(encode_tensors(expected))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(named=tensors([*JSON_TYPES, "BOOL"]), data=st.data())
def test_binary_answers_read_back_through_tritonclient_and_hash_as_json(
    named: list[tuple[TensorSpec, np.ndarray]], data: st.DataObject
) -> None:
    specs = {spec.name: spec for spec, _ in named}
    outputs = [(spec.name, array) for spec, array in named]
    binary = set(data.draw(st.lists(st.sampled_from(list(specs)), unique=True)))
    head = {"model_name": "m", "model_version": "1", "parameters": {"receipt": {"outputHash": "x"}}}
    body, headers = kserve.encode_response(head, outputs, specs, binary)
    extra = dict(headers)
    length = int(extra[kserve.HEADER_LENGTH]) if binary else None
    assert (extra.get(b"content-type") == kserve.OCTET_STREAM) == bool(binary)
    result = triton.InferenceServerClient.parse_response_body(body, header_length=length)
    for name, array in outputs:
        got = result.as_numpy(name)
        assert got.dtype == array.dtype and got.tobytes() == array.tobytes()
    as_json = kserve.decode_response(body, length)
    assert as_json["parameters"] == head["parameters"]
    assert all("data" in tensor for tensor in as_json["outputs"])
    assert output_hash(as_json["outputs"]) == keccak256(encode_tensors(outputs))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(named=tensors(), data=st.data())
def test_truncated_overlong_and_mis_sized_binary_bodies_are_refused(
    named: list[tuple[TensorSpec, np.ndarray]], data: st.DataObject
) -> None:
    entry = entry_of([spec for spec, _ in named])
    body, headers = triton_body(named, [True] * len(named), list(range(len(named))))
    length = int(headers[0][1])
    header = json.loads(body[:length])
    mutation = data.draw(st.sampled_from(["truncate", "extend", "resize", "header_length"]))
    if mutation == "truncate":
        body = body[: len(body) - data.draw(st.integers(1, len(body) - length))]
    elif mutation == "extend":
        body += data.draw(st.binary(min_size=1, max_size=16))
    elif mutation == "resize":
        tensor = data.draw(st.sampled_from(header["inputs"]))
        size = tensor["parameters"]["binary_data_size"]
        tensor["parameters"]["binary_data_size"] = data.draw(
            st.integers(0, size + 16).filter(lambda n: n != size)
        )
        text = json.dumps(header).encode()
        body, headers = text + body[length:], [(kserve.HEADER_LENGTH, str(len(text)).encode())]
    else:
        shift = data.draw(st.integers(-length, len(body) + 8).filter(lambda n: n not in (0, length)))
        headers = [(kserve.HEADER_LENGTH, str(length + shift).encode())]
    with pytest.raises(RequestError) as refused:
        decode(entry, body, headers)
    assert refused.value.status == 400
    if mutation in ("truncate", "extend", "resize"):
        assert refused.value.code == "invalid_binary_size"


def test_binary_inputs_follow_the_json_rules() -> None:
    """Datatype, shape, element limit and finite values are checked as they are for JSON data."""
    entry = entry_of([TensorSpec("features", BY_V2["FP32"], (-1, 4))])

    def refusal(array: np.ndarray, datatype: str = "FP32", **options: Any) -> str:
        raw = array.tobytes()
        item: dict[str, Any] = {"name": "features", "shape": list(array.shape), "datatype": datatype}
        item.update(options.pop("item", {}))
        item.setdefault("parameters", {"binary_data_size": len(raw)})
        header = json.dumps({"inputs": [item], **options}).encode()
        headers = [(kserve.HEADER_LENGTH, str(len(header)).encode())]
        with pytest.raises(RequestError) as refused:
            request, tail = kserve.split_request(header + raw, headers)
            binary = kserve.BinaryInputs(tail)
            parse_inputs(entry, request["inputs"], v2=True, max_elements=64, raw=binary)
            binary.finish()
        assert refused.value.status == 400
        return refused.value.code

    assert refusal(IRIS.astype(np.float64), "FP64") == "invalid_dtype"
    assert refusal(np.array([[1, 2, np.nan, 4]], np.float32)) == "invalid_value"
    assert refusal(np.array([[1, 2, np.inf, 4]], np.float32)) == "invalid_value"
    assert refusal(np.ones((1, 3), np.float32)) == "invalid_shape"
    assert refusal(np.ones((17, 4), np.float32)) == "tensor_too_large"
    assert refusal(np.ones((1, 4), np.float32), item={"data": [1, 2, 3, 4]}) == "invalid_tensor"
    sizes = ("-1", "4.0", '"16"')
    for size in sizes:
        assert (
            refusal(IRIS, item={"parameters": {"binary_data_size": json.loads(size)}})
            == "invalid_binary_size"
        )
    assert refusal(IRIS, item={"parameters": {"shared_memory_region": "r"}}) == "shared_memory_unsupported"


def test_requested_outputs_pick_the_binary_ones() -> None:
    names = ["probabilities", "label"]
    assert kserve.requested_outputs({}, names) == (None, set())
    assert kserve.requested_outputs({"parameters": {"binary_data_output": True}}, names) == (None, set(names))
    request = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}],
    }
    assert kserve.requested_outputs(request, names) == (set(names), {"probabilities"})
    request = {"outputs": [{"name": "label", "parameters": {"binary_data": True}}]}
    assert kserve.requested_outputs(request, names) == ({"label"}, {"label"})
    for bad, code in (
        ({"outputs": [{"name": "nope"}]}, "unknown_output"),
        ({"parameters": {"binary_data_output": "yes"}}, "invalid_parameters"),
        ({"outputs": [{"name": "label", "parameters": {"classification": 2}}]}, "classification_unsupported"),
    ):
        with pytest.raises(RequestError) as refused:
            kserve.requested_outputs(bad, names)
        assert refused.value.code == code


def test_model_paths() -> None:
    path = kserve.model_path
    assert path("/v2/models/m") == kserve.ModelPath("m", None, "")
    assert path("/v2/models/m/infer") == kserve.ModelPath("m", None, "infer")
    assert path("/v2/models/m/versions/1") == kserve.ModelPath("m", "1", "")
    assert path("/v2/models/m/versions/7/stats") == kserve.ModelPath("m", "7", "stats")
    for other in (
        "/v2/models/stats",
        "/v2/models/",
        "/v2/models/m/",
        "/v2/models/m/versions",
        "/v2/models/m/versions//infer",
        "/v2/models/m/train",
        "/v2/models/m/infer/x",
        "/infer",
    ):
        assert path(other) is None, other


def test_model_config_without_batching_keeps_the_manifest_shapes() -> None:
    entry = entry_of([TensorSpec("x", BY_V2["FP32"], (-1, 4))], [TensorSpec("y", BY_V2["INT64"], (-1,))])
    config = kserve.model_config(entry, max_batch_size=0, window_s=None)
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == [-1, 4] and config["output"][0]["dims"] == [-1]
    batched = kserve.model_config(entry, max_batch_size=8, window_s=0.002)
    assert batched["input"][0]["dims"] == [4] and batched["output"][0]["dims"] == []
    assert batched["dynamic_batching"]["max_queue_delay_microseconds"] == 2000


def test_model_stats_count_what_they_say() -> None:
    stats = ModelStats({"a": "1", "b": "2"})
    stats.record_request("a", ok=True, total_ns=100, input_ns=10, output_ns=20, inferences=3)
    stats.record_request("a", ok=False, total_ns=7)
    stats.record_queue("a", 5)
    stats.record_execution("a", 4, 50)
    stats.record_request("unknown", ok=True, total_ns=1)  # not a manifest model: ignored
    (a,) = stats.model_stats("a")
    assert a["version"] == "1" and a["inference_count"] == 3 and a["execution_count"] == 1
    inference = a["inference_stats"]
    assert inference["success"] == {"count": 1, "ns": 100} and inference["fail"] == {"count": 1, "ns": 7}
    assert inference["compute_infer"] == {"count": 4, "ns": 200} and inference["queue"] == {
        "count": 1,
        "ns": 5,
    }
    assert a["batch_stats"] == [{"batch_size": 4, "compute_infer": {"count": 1, "ns": 50}}]
    assert a["last_inference"] > 0
    assert [m["name"] for m in stats.model_stats()] == ["a", "b"]


# --- tritonclient against the real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.removeprefix("http://")) as connection:
        yield connection


def iris_input(binary: bool = True) -> triton.InferInput:
    item = triton.InferInput("features", list(IRIS.shape), "FP32")
    item.set_data_from_numpy(IRIS, binary_data=binary)
    return item


def json_outputs(result: triton.InferResult) -> list[dict[str, Any]]:
    """The answer's outputs as JSON tensors, however they came."""
    outputs = []
    for tensor in result.get_response()["outputs"]:
        array = result.as_numpy(tensor["name"])
        outputs.append({**tensor, "shape": list(array.shape), "data": array.ravel().tolist()})
    return outputs


def test_server_metadata_health_and_versioned_readiness(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "verinfer"
    assert {"binary_tensor_data", "model_configuration", "model_repository", "statistics"} <= set(
        metadata["extensions"]
    )
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris-mlp") and client.is_model_ready("iris-mlp", "1")
    assert not client.is_model_ready("iris-mlp", "2") and not client.is_model_ready("nope", "1")
    assert client.get_model_metadata("mnist-lenet", "1") == client.get_model_metadata("mnist-lenet")
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("iris-mlp", "2")
    assert missing.value.status() == "404" and "version '1'" in missing.value.message()


def test_model_configuration_matches_the_manifest(server: str, client: triton.InferenceServerClient) -> None:
    manifest = manifest_from_json(httpx.get(f"{server}/models").json())
    for name in ("iris-ols", "iris-mlp", "mnist-lenet"):
        config = client.get_model_config(name)
        assert client.get_model_config(name, "1") == config
        entry = manifest.models[name]
        assert config["name"] == name and config["platform"] == "onnxruntime_onnx"
        assert config["backend"] == "onnxruntime"
        batch = config["max_batch_size"]
        assert batch >= 0 and ("dynamic_batching" in config) == (batch > 0)
        for got, spec in zip(config["input"] + config["output"], entry.inputs + entry.outputs, strict=True):
            assert got["name"] == spec.name and got["data_type"] == "TYPE_" + spec.dtype.v2
            assert got["dims"] == list(spec.shape[1:] if batch else spec.shape)
    assert client.get_model_config("iris-mlp")["max_batch_size"] > 0  # the server batches it by default
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_config("iris-mlp", "3")
    assert missing.value.status() == "404"


def test_repository_index_and_no_model_control(server: str, client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    by_name = {row["name"]: row for row in index}
    for name in ("iris-ols", "iris-mlp", "mnist-lenet"):
        assert by_name[name] == {"name": name, "version": "1", "state": "READY"}
    ready = httpx.post(f"{server}/v2/repository/index", json={"ready": True}).json()
    assert all(row["state"] == "READY" for row in ready) and {r["name"] for r in ready} >= {"iris-mlp"}
    assert httpx.post(f"{server}/v2/repository/index", json={}).json() == index
    bad = httpx.post(f"{server}/v2/repository/index", json={"ready": "yes"})
    assert bad.status_code == 400 and set(bad.json()) == {"error", "code"}
    for control in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException) as refused:
            control("iris-mlp")
        assert refused.value.status() == "403" and "attested manifest" in refused.value.message()


@pytest.mark.parametrize("version", ["", "1"])
def test_binary_request_and_answer_verify_like_json(
    server: str, server_pki: Path, client: triton.InferenceServerClient, version: str
) -> None:
    """The same inputs as binary data and as JSON: equal inputHash and outputHash, and the binary answer's
    receipt verifies once its outputs are read back as JSON tensors."""
    parameters = {"request_id": REQUEST_ID}
    binary = client.infer("iris-mlp", [iris_input()], model_version=version, parameters=parameters)
    plain = client.infer(
        "iris-mlp",
        [iris_input(binary=False)],
        model_version=version,
        outputs=[triton.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "label")],
        parameters=parameters,
    )
    assert all("binary_data_size" in t["parameters"] for t in binary.get_response()["outputs"])
    assert all("data" in t for t in plain.get_response()["outputs"])
    for name in ("probabilities", "label"):
        assert binary.as_numpy(name).tobytes() == plain.as_numpy(name).tobytes()
    assert binary.as_numpy("label").tolist() == [0, 2]
    receipts = [r.get_response()["parameters"]["receipt"] for r in (binary, plain)]
    assert receipts[0]["inputHash"] == receipts[1]["inputHash"]
    assert receipts[0]["outputHash"] == receipts[1]["outputHash"]
    assert receipts[0]["requestId"] == REQUEST_ID

    response = {**binary.get_response(), "outputs": json_outputs(binary)}
    request = {
        "model": "iris-mlp",
        "inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": IRIS.ravel().tolist()}],
        "parameters": parameters,
    }
    report = verify_inference(
        response,
        attestation_document(server),
        policy=Policy(root=root_of(server_pki)),
        request=request,
        manifest=manifest_from_json(httpx.get(f"{server}/models").json()),
    )
    assert report.ok, report.to_json()


def test_mixed_binary_and_json_outputs(client: triton.InferenceServerClient) -> None:
    outputs = [
        triton.InferRequestedOutput("label"),
        triton.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = client.infer("iris-mlp", [iris_input()], outputs=outputs)
    tensors = {t["name"]: t for t in result.get_response()["outputs"]}
    assert tensors["label"]["parameters"] == {"binary_data_size": 16} and "data" not in tensors["label"]
    assert len(tensors["probabilities"]["data"]) == 6
    assert result.as_numpy("label").tolist() == [0, 2]
    only = client.infer("iris-mlp", [iris_input()], outputs=[triton.InferRequestedOutput("label")])
    assert [t["name"] for t in only.get_response()["outputs"]] == ["label"]


@pytest.mark.parametrize("request_coding", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_coding", [None, "gzip", "deflate"])
def test_compression_both_ways(
    client: triton.InferenceServerClient, request_coding: str | None, response_coding: str | None
) -> None:
    result = client.infer(
        "mnist-lenet",
        [mnist_input()],
        model_version="1",
        request_compression_algorithm=request_coding,
        response_compression_algorithm=response_coding,
    )
    assert result.as_numpy("logits").shape == (3, 10) and result.as_numpy("digit").shape == (3,)


def mnist_input() -> triton.InferInput:
    images = np.linspace(0, 1, 3 * 28 * 28, dtype=np.float32).reshape(3, 1, 28, 28)
    item = triton.InferInput("image", list(images.shape), "FP32")
    item.set_data_from_numpy(images)
    return item


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_answers_are_compressed_when_asked(server: str, coding: str) -> None:
    """What tritonclient's response_compression_algorithm relies on: the answer really is compressed."""
    body, json_size = triton.InferenceServerClient.generate_request_body([mnist_input()])
    headers = {"Inference-Header-Content-Length": str(json_size), "Accept-Encoding": coding}
    packed = gzip.compress(body) if coding == "gzip" else zlib.compress(body)
    headers["Content-Encoding"] = coding
    with httpx.Client() as http:
        raw = http.post(f"{server}/v2/models/mnist-lenet/infer", content=packed, headers=headers)
        assert raw.status_code == 200, raw.text
        assert raw.headers["content-encoding"] == coding
        assert raw.headers["content-type"] == "application/octet-stream"
        length = int(raw.headers["inference-header-content-length"])
        assert json.loads(raw.content[:length])["outputs"][0]["parameters"]["binary_data_size"] == 120


def test_statistics_count_inferences(client: triton.InferenceServerClient) -> None:
    def stats(name: str) -> dict[str, Any]:
        (entry,) = client.get_inference_statistics(name)["model_stats"]
        return cast(dict[str, Any], entry)

    before = stats("iris-ols")
    features = np.array([[5.1, 3.5, 1.4], [6.7, 3.0, 5.2], [6.0, 2.2, 4.0]], np.float32)
    item = triton.InferInput("features", [3, 3], "FP32")
    item.set_data_from_numpy(features)
    for _ in range(3):
        client.infer("iris-ols", [item])
    wrong = triton.InferInput("features", [1, 2], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 2), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("iris-ols", [wrong])
    after = stats("iris-ols")
    success, failed = after["inference_stats"]["success"], after["inference_stats"]["fail"]
    assert success["count"] >= before["inference_stats"]["success"]["count"] + 3 and success["ns"] > 0
    assert failed["count"] >= before["inference_stats"]["fail"]["count"] + 1
    assert after["inference_count"] >= before["inference_count"] + 9  # three rows each
    assert after["execution_count"] >= before["execution_count"] + 3
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 0
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]
    for stage in ("queue", "compute_input", "compute_output"):  # one of each for every success
        assert after["inference_stats"][stage]["count"] == success["count"], stage
    assert after["inference_stats"]["compute_infer"]["count"] >= success["count"]
    versioned = client.get_inference_statistics("iris-ols", "1")["model_stats"][0]
    assert versioned["name"] == "iris-ols" and versioned["version"] == "1"
    everything = client.get_inference_statistics()["model_stats"]
    assert {m["name"] for m in everything} == {"iris-ols", "iris-mlp", "mnist-lenet"}
    for missing in (("nope", ""), ("iris-ols", "2")):
        with pytest.raises(InferenceServerException) as refused:
            client.get_inference_statistics(*missing)
        assert refused.value.status() == "404"


def test_async_client(server: str) -> None:
    async def run() -> tuple[np.ndarray, dict[str, Any], bool]:
        async with triton_aio.InferenceServerClient(server.removeprefix("http://")) as aio:
            ready = await aio.is_model_ready("iris-mlp", "1")
            result = await aio.infer(
                "iris-mlp", [iris_input()], model_version="1", response_compression_algorithm="gzip"
            )
            config = await aio.get_model_config("iris-mlp")
            stats = await aio.get_inference_statistics("iris-mlp")
            assert config["name"] == "iris-mlp" and stats["model_stats"][0]["inference_count"] > 0
            return result.as_numpy("label"), result.get_response(), ready

    labels, response, ready = asyncio.run(run())
    assert ready and labels.tolist() == [0, 2]
    assert response["parameters"]["receipt"]["signature"].startswith("0x")


def post(server: str, path: str, body: bytes, header_length: int | None) -> httpx.Response:
    headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    return httpx.post(f"{server}{path}", content=body, headers=headers)


def test_binary_errors_are_clear_v2_400s(server: str, client: triton.InferenceServerClient) -> None:
    body, json_size = triton.InferenceServerClient.generate_request_body([iris_input()])
    assert json_size is not None
    path = "/v2/models/iris-mlp/infer"
    cases = {
        "truncated": (body[:-4], json_size, "invalid_binary_size"),
        "overlong": (body + b"\0" * 4, json_size, "invalid_binary_size"),
        "no header length": (body, None, "invalid_json"),
        "header length past the body": (body, len(body) + 1, "invalid_header_length"),
        "header length not a number": (body, -1, "invalid_header_length"),
    }
    for what, (content, length, code) in cases.items():
        response = post(server, path, content, length)
        assert response.status_code == 400, what
        assert set(response.json()) == {"error", "code"} and response.json()["code"] == code, what
    header = json.loads(body[:json_size])
    header["inputs"][0]["parameters"]["binary_data_size"] = 28
    text = json.dumps(header).encode()
    wrong = post(server, path, text + body[json_size:], len(text))
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_binary_size"
    assert "binary data" in wrong.json()["error"]
    versioned = post(server, "/v2/models/iris-mlp/versions/9/infer", body, json_size)
    assert versioned.status_code == 404 and versioned.json()["code"] == "unknown_version"
    with pytest.raises(InferenceServerException) as refused:
        client.infer("iris-mlp", [iris_input()], model_version="9")
    assert refused.value.status() == "404"
    for route in ("/v2/nope", "/v2/models/iris-mlp/versions/1/nope", "/v2/repository/nope"):
        missing = httpx.get(f"{server}{route}")
        assert missing.status_code == 404 and set(missing.json()) == {"error", "code"}, route
