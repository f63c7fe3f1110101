"""Differential test of the two receipt verifiers: `verinfer verify` (Python) and `verinfer-js verify`.

Seeded mutations of real evidence (js/test/fixtures/evidence: a simulated enclave's /infer, V2, sealed and
LLM answers, with their requests) change one to three things at a time: a hash or signature byte, a
malleable signature, the timestamp, an output value, datatype or shape, the model name, the request id, an
input, a stream chunk's text, chain or token count, a cut stream, usage and finish reason, the pins, the
nonce, the salt, the manifest, the OHTTP key configuration. Python verifies each case in process; one node
process verifies all of them; the exit code, verdict and every check's name and status must agree, and where
Python's verifier raises on its input the JS one must refuse it too.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from verinfer.cli import main as verinfer_main

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "js"
EVIDENCE = JS / "test" / "fixtures" / "evidence"
CASES = 2000
SEED = 20260116
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (JS / "node_modules").is_dir() or not (EVIDENCE / "cases.json").is_file(),
    reason="needs node and js/node_modules (npm ci in js/) and the evidence in js/test/fixtures/evidence",
)


@dataclass
class Case:
    """One `verify` command line: the response and request (bytes), files of its own, and its flags."""

    kind: str  # "infer" or "llm"
    response: bytes
    response_name: str
    request: bytes | None
    flags: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def args(self, directory: Path) -> list[str]:
        args = [str(directory / self.response_name)]
        if self.request is not None:
            args += ["--request", str(directory / ("request.bin" if self.kind == "llm" else "request.json"))]
        return args + [str(directory / flag) if flag in self.files else flag for flag in self.flags]

    def write(self, directory: Path) -> list[str]:
        directory.mkdir(parents=True)
        (directory / self.response_name).write_bytes(self.response)
        if self.request is not None:
            (directory / ("request.bin" if self.kind == "llm" else "request.json")).write_bytes(self.request)
        for name, content in self.files.items():
            (directory / name).write_bytes(content)
        args = self.args(directory)
        (directory / "args.json").write_text(json.dumps(args))
        return args


def evidence(name: str) -> bytes:
    return (EVIDENCE / name).read_bytes()


def base_cases() -> list[Case]:
    facts = json.loads(evidence("cases.json"))["facts"]
    common = [
        "--attestation",
        str(EVIDENCE / "attestation.json"),
        "--root",
        str(EVIDENCE / "root.pem"),
        "--at-document-time",
        "--manifest",
        str(EVIDENCE / "models.json"),
        "--image-id",
        facts["image_id"],
        "--json",
    ]
    v2 = ["--model", "iris-mlp"]
    infer = [
        ("infer-iris-ols", []),
        ("infer-iris-mlp", []),
        ("infer-mnist-lenet", []),
        ("v2-iris-mlp", v2),
        ("v2-subset", v2),
        ("sealed-infer", ["--salt", facts["salts"]["sealed-infer"]]),
    ]
    cases = [
        Case(
            "infer",
            evidence(f"{name}.response.json"),
            "response.json",
            evidence(f"{name}.request.json"),
            [*common, *extra],
        )
        for name, extra in infer
    ]
    llm = [
        ("completion.response.json", "completion.request.bin", []),
        ("completion-stream.response.sse", "completion-stream.request.bin", []),
        ("chat-stream.response.sse", "chat-stream.request.bin", []),
        ("completion-stream-cut.response.sse", "completion-stream.request.bin", []),
        (
            "sealed-completion.response.json",
            "sealed-completion.request.bin",
            ["--salt", facts["salts"]["sealed-completion"]],
        ),
    ]
    cases += [
        Case(
            "llm",
            evidence(response),
            "response." + response.rsplit(".", 1)[1],
            evidence(request),
            [*common, *extra],
        )
        for response, request, extra in llm
    ]
    return cases


# --- mutation helpers ---


def flip_hex(rng: random.Random, text: str) -> str:
    body = text[2:] if text.startswith("0x") else text
    if not body:
        return text + "0"
    i = rng.randrange(len(body))
    digit = rng.choice([d for d in "0123456789abcdef" if d != body[i].lower()])
    return text[: len(text) - len(body)] + body[:i] + digit + body[i + 1 :]


def odd_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            1,
            -1,
            2.5,
            1.0,
            -0.0,
            0.1,
            "",
            "x",
            "1",
            "nan",
            " 1_0 ",
            [],
            {},
            [1],
            2**53 + 1,
            2**63,
            2**64,
            2**70,
            -(2**63) - 1,
            1e20,
            1e400,
        ]
    )


def set_flag(case: Case, flag: str, value: str | None) -> None:
    """Replace (or with None remove) every occurrence of `flag` and its value."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(case.flags):
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = i + 1 < len(case.flags) and not case.flags[i + 1].startswith("--")
            continue
        out.append(arg)
    if value is not None:
        out += [flag, value]
    case.flags = out


def remove_switch(case: Case, flag: str) -> None:
    case.flags = [arg for arg in case.flags if arg != flag]


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- mutations of a receipt (anywhere one is) ---

RECEIPT_FIELDS = ("requestId", "modelHash", "inputHash", "outputHash", "enclave", "signature")


def mutate_receipt(rng: random.Random, receipt: Any) -> str:
    if not isinstance(receipt, dict):
        return "not a receipt"
    op = rng.randrange(12)
    name = rng.choice(RECEIPT_FIELDS)
    value = receipt.get(name)
    if op <= 3 and isinstance(value, str):
        receipt[name] = flip_hex(rng, value)
        return f"flip {name}"
    if op == 4 and isinstance(receipt.get("signature"), str):
        raw = bytearray(bytes.fromhex(receipt["signature"][2:]))
        if len(raw) == 65:
            s = SECP256K1_N - int.from_bytes(raw[32:64], "big")
            raw[32:64] = s.to_bytes(32, "big")
            raw[64] = 55 - raw[64] if raw[64] in (27, 28) else raw[64]
            receipt["signature"] = "0x" + raw.hex()
        return "high-s signature"
    if op == 5 and isinstance(receipt.get("signature"), str):
        receipt["signature"] = receipt["signature"][:-2] + rng.choice(["00", "01", "1d", "1a", "1b", "1c"])
        return "signature v"
    if op == 6:
        stamp = receipt.get("timestampMs")
        receipt["timestampMs"] = rng.choice(
            [
                (stamp + 1) if isinstance(stamp, int) else 1,
                float(stamp) if isinstance(stamp, int) else 1.0,
                str(stamp),
                -1,
                2**64,
                2**64 - 1,
                None,
                True,
            ]
        )
        return "timestamp"
    if op == 7:
        receipt.pop(name, None)
        return f"drop {name}"
    if op == 8 and isinstance(value, str):
        receipt[name] = rng.choice(
            [
                "0X" + value[2:],
                value[2:],
                value + "00",
                value[:-2],
                value.upper(),
                " ".join([value[:4], value[4:]]),
            ]
        )
        return f"reformat {name}"
    if op == 9:
        receipt[name] = odd_value(rng)
        return f"odd {name}"
    if op == 10 and isinstance(value, str):
        receipt[rng.choice(RECEIPT_FIELDS)] = value
        return "copy a field"
    return "receipt untouched"


# --- mutations of an /infer or V2 answer and its request ---


def receipt_holder(response: Any) -> Any:
    if isinstance(response, dict) and "receipt" in response:
        return response["receipt"]
    parameters = response.get("parameters") if isinstance(response, dict) else None
    return parameters.get("receipt") if isinstance(parameters, dict) else None


def mutate_data(rng: random.Random, data: Any) -> Any:
    """A changed copy of nested tensor data (or a replacement for it)."""
    if not isinstance(data, list) or not data:
        return odd_value(rng)
    data = copy.deepcopy(data)
    holder = data
    while isinstance(holder[0], list) and holder[0] and rng.random() < 0.8:
        holder = (
            holder[rng.randrange(len(holder))]
            if all(isinstance(x, list) and x for x in holder)
            else holder[0]
        )
    i = rng.randrange(len(holder))
    value = holder[i]
    choice = rng.randrange(9)
    if choice <= 2 and isinstance(value, (int, float)) and not isinstance(value, bool):
        holder[i] = value + rng.choice([1e-7, 1e-3, 1, -1, 0.5])
    elif choice == 3 and isinstance(value, float):
        holder[i] = int(value)
    elif choice == 4:
        holder[i] = odd_value(rng)
    elif choice == 5:
        holder.append(holder[i])
    elif choice == 6:
        del holder[i]
    elif choice == 7 and isinstance(value, (int, float)) and not isinstance(value, bool):
        holder[i] = str(value)
    else:
        holder[i] = [holder[i]]
    return data


def mutate_tensors(rng: random.Random, tensors: Any) -> str:
    if not isinstance(tensors, list) or not tensors:
        return "no tensors"
    tensor = rng.choice(tensors)
    if not isinstance(tensor, dict):
        return "odd tensor"
    op = rng.randrange(10)
    if op <= 3 and "data" in tensor:
        tensor["data"] = mutate_data(rng, tensor["data"])
        return "data"
    if op == 4:
        tensor["datatype"] = rng.choice(["FP64", "FP16", "INT64", "UINT8", "BOOL", "fp32", "X", 1])
        return "datatype"
    if op == 5:
        shape = tensor.get("shape")
        tensor["shape"] = rng.choice(
            [
                [-1],
                [1, -1],
                [*shape, 1] if isinstance(shape, list) else [1],
                list(reversed(shape)) if isinstance(shape, list) else [],
                [0],
                "1",
                None,
                [2, 2.0],
                [True, 4],
                7,
            ]
        )
        return "shape"
    if op == 6:
        tensor["name"] = rng.choice(["other", "", "features ", 5, None, "r\u00e9sultat"])
        return "name"
    if op == 7:
        tensor.pop(rng.choice(["name", "data", "shape", "datatype"]), None)
        return "drop key"
    if op == 8 and len(tensors) > 1:
        tensors.reverse()
        return "reorder"
    if op == 9:
        tensors.append(copy.deepcopy(tensor))
        return "duplicate"
    return "tensors untouched"


def mutate_infer_response(rng: random.Random, case: Case) -> str:
    response = json.loads(case.response)
    op = rng.randrange(10)
    if op <= 3:
        note = mutate_receipt(rng, receipt_holder(response))
    elif op <= 6:
        note = "outputs: " + mutate_tensors(rng, response.get("outputs"))
    elif op == 7:
        key = "model" if "model" in response else "model_name"
        response[key] = rng.choice(["iris-ols", "mnist-lenet", "nope", "", None, 7])
        note = "response model"
    elif op == 8:
        response["outputs"] = rng.choice([None, {}, [], "x", [1]])
        note = "outputs replaced"
    else:
        response.pop(rng.choice(["outputs", "receipt", "parameters", "model", "model_name"]), None)
        note = "response key dropped"
    case.response = dumps(response)
    return note


def mutate_infer_request(rng: random.Random, case: Case) -> str:
    if case.request is None:
        return "no request"
    request = json.loads(case.request)
    op = rng.randrange(9)
    inputs = request.get("inputs")
    if op <= 2:
        if inputs and all(isinstance(i, dict) for i in inputs):
            note = "inputs: " + mutate_tensors(rng, inputs)
        else:
            request["inputs"] = mutate_data(rng, inputs)
            note = "nested inputs"
    elif op == 3:
        holder = request.get("parameters") if isinstance(request.get("parameters"), dict) else request
        wanted = holder.get("request_id")
        holder["request_id"] = rng.choice(
            [flip_hex(rng, wanted) if isinstance(wanted, str) else "0x" + "ab" * 32, "0x1234", 12, None, ""]
        )
        note = "request id"
    elif op == 4:
        request.pop("request_id", None)
        if isinstance(request.get("parameters"), dict):
            request["parameters"].pop("request_id", None)
        note = "no request id"
    elif op == 5:
        request["model"] = rng.choice(
            ["iris-ols", "iris-mlp", "mnist-lenet", "smollm2-135m-instruct", "x", 5]
        )
        note = "request model"
    elif op == 6:
        case.request = None
        return "no request"
    elif op == 7 and inputs and isinstance(inputs[0], dict) and len(inputs) == 1:
        request["inputs"] = inputs[0].get("data")
        note = "inputs as a nested list"
    else:
        request["inputs"] = rng.choice(
            [None, [], {}, "x", [[1, 2, 3, 4]], [{"name": "features", "data": [1]}]]
        )
        note = "inputs replaced"
    case.request = dumps(request)
    return note


# --- mutations of a completion and its request ---


def sse_events(data: bytes) -> list[bytes]:
    return data.split(b"\n\n")


def chunk_of(event: bytes) -> dict[str, Any] | None:
    """The JSON object of a `data:` event, or None."""
    line = event.strip()
    if not line.startswith(b"data:"):
        return None
    try:
        chunk = json.loads(line[5:])
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def mutate_chunk(rng: random.Random, chunk: dict[str, Any]) -> str:
    extension = chunk.get("verinfer")
    choices = chunk.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    op = rng.randrange(10)
    if op <= 2:
        if "text" in choice:
            text = choice["text"] if isinstance(choice["text"], str) else ""
            choice["text"] = rng.choice([text + "x", "", "\u00e9", text.upper(), None, 3])
        elif isinstance(choice.get("delta"), dict):
            choice["delta"]["content"] = rng.choice(["x", "", None, "\u4e2d"])
        return "chunk text"
    if op == 3 and isinstance(extension, dict):
        extension["chain"] = rng.choice([flip_hex(rng, str(extension.get("chain", "0x00"))), None, 5, ""])
        return "chunk chain"
    if op == 4 and isinstance(extension, dict):
        extension["tokens"] = rng.choice([0, 1, 99, "7", "x", 3.7, -1, 2**32])
        return "chunk tokens"
    if op == 5 and isinstance(extension, dict):
        for key in ("checkpoint", "receipt"):
            if key in extension:
                return f"{key}: " + mutate_receipt(rng, extension[key])
        return "no receipt in chunk"
    if op == 6:
        choice["finish_reason"] = rng.choice(["stop", "length", None, "foo", 1, ""])
        return "finish_reason"
    if op == 7:
        usage = (
            extension.get("usage")
            if isinstance(extension, dict) and "usage" in extension
            else chunk.get("usage")
        )
        if isinstance(usage, dict):
            usage[rng.choice(["prompt_tokens", "completion_tokens"])] = rng.choice(
                [0, 1, 5.0, "3", None, True, 2**32]
            )
            return "usage"
        chunk["usage"] = rng.choice([{"prompt_tokens": 1, "completion_tokens": 2}, None, {}, 0])
        return "chunk usage"
    if op == 8:
        chunk["model"] = rng.choice(["other", None, 3])
        return "chunk model"
    if isinstance(extension, dict):
        extension.pop(rng.choice(["receipt", "checkpoint", "chain", "usage", "tokens"]), None)
    return "chunk key dropped"


def mutate_stream(rng: random.Random, case: Case) -> str:
    events = sse_events(case.response)
    data = [i for i, e in enumerate(events) if chunk_of(e) is not None]
    op = rng.randrange(9)
    if op <= 3 and data:
        i = rng.choice(data)
        chunk = chunk_of(events[i])
        assert chunk is not None
        note = mutate_chunk(rng, chunk)
        events[i] = b"data: " + dumps(chunk)
    elif op == 4 and data:
        i = rng.choice(data)
        del events[i]
        note = "chunk dropped"
    elif op == 5 and len(data) > 1:
        i, j = rng.sample(data, 2)
        events[i], events[j] = events[j], events[i]
        note = "chunks swapped"
    elif op == 6:
        events = events[: rng.randrange(1, len(events) + 1)]
        note = "cut"
    elif op == 7 and data:
        i = rng.choice(data)
        events[i] = rng.choice(
            [b"data: {not json", b"data: [1]", b"data: 5", b": comment", b"data:", b"event: x"]
        )
        note = "bad chunk"
    else:
        receipts = [i for i in data if b'"receipt"' in events[i]]
        chunk = chunk_of(events[receipts[0]]) if receipts else None
        if chunk is not None and isinstance(chunk.get("verinfer"), dict):
            chunk["verinfer"].pop("receipt", None)
            events[receipts[0]] = b"data: " + dumps(chunk)
        note = "final receipt dropped"
    case.response = b"\n\n".join(events)
    return note


def mutate_completion(rng: random.Random, case: Case) -> str:
    body = json.loads(case.response)
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    op = rng.randrange(8)
    if op <= 2:
        note = mutate_receipt(rng, body.get("receipt"))
    elif op == 3:
        if "text" in choice:
            text = choice["text"] if isinstance(choice["text"], str) else ""
            choice["text"] = rng.choice([text + " ", "", None, 1])
        note = "text"
    elif op == 4:
        choice["finish_reason"] = rng.choice(["stop", "length", None, "foo"])
        note = "finish_reason"
    elif op == 5:
        usage = body.get("usage")
        if isinstance(usage, dict):
            usage[rng.choice(["prompt_tokens", "completion_tokens"])] = rng.choice(
                [0, 9, 1.0, None, "1", 2**40]
            )
        note = "usage"
    elif op == 6:
        body["model"] = rng.choice(["other", None, 1])
        note = "model"
    else:
        body.pop(rng.choice(["receipt", "usage", "choices", "model"]), None)
        note = "key dropped"
    case.response = dumps(body)
    return note


def mutate_llm_request(rng: random.Random, case: Case) -> str:
    if case.request is None:
        return "no request"
    op = rng.randrange(5)
    if op == 0:
        case.request += b" "
        return "request byte appended"
    if op == 1:
        try:
            request = json.loads(case.request)
        except ValueError:
            return "request not JSON"
        if isinstance(request, dict):
            request["model"] = rng.choice(["iris-mlp", "other", 3, None])
            case.request = dumps(request)
        return "request model"
    if op == 2:
        case.request = None
        return "no request"
    if op == 3:
        case.request = rng.choice([b"not json", b"[1, 2]", b"\xff\xfe", b"{}"])
        return "odd request"
    case.request = case.request.replace(b'"temperature": 0', b'"temperature": 1')
    return "temperature"


# --- mutations of the pins and the evidence ---


def mutate_pins(rng: random.Random, case: Case) -> str:
    facts = json.loads(evidence("cases.json"))["facts"]
    op = rng.randrange(12)
    if op == 0:
        set_flag(case, "--image-id", flip_hex(rng, facts["image_id"]))
        return "wrong image id"
    if op == 1:
        set_flag(case, "--image-id", None)
        return "no pin"
    if op == 2:
        set_flag(case, "--image-id", None)
        for index, value in facts["pcrs"].items():
            case.flags += ["--pcr", f"{index}={value}"]
        if rng.random() < 0.5:
            case.flags += ["--pcr", f"{rng.choice('012')}={flip_hex(rng, facts['pcrs']['1'])}"]
        return "PCR pins"
    if op == 3:
        case.flags.append("--allow-any-image")
        if rng.random() < 0.5:
            set_flag(case, "--image-id", None)
        return "any image"
    if op == 4:
        case.flags += ["--nonce", rng.choice(["6a73" + "5e" * 30, "00" * 32, "6a73"])]
        return "nonce"
    if op == 5:
        case.flags += ["--max-age", rng.choice(["600", "-1", "0", "1e-9", "inf"])]
        return "max age"
    if op == 6:
        set_flag(case, "--root", None)
        return "AWS root"
    if op == 7:
        set_flag(case, "--attestation", str(EVIDENCE / "attestation.b64"))
        return "document without key configurations"
    if op == 8:
        attestation = json.loads(evidence("attestation.json"))
        keys = bytearray(base64.b64decode(attestation["ohttpKeys"]))
        where = rng.randrange(len(keys))
        keys[where] ^= 1 << rng.randrange(8)
        attestation["ohttpKeys"] = base64.b64encode(bytes(keys)).decode()
        case.files["attestation.json"] = dumps(attestation)
        set_flag(case, "--attestation", "attestation.json")
        return f"ohttpKeys byte {where}"
    if op == 9:
        salt = next((case.flags[i + 1] for i, a in enumerate(case.flags) if a == "--salt"), None)
        set_flag(case, "--salt", rng.choice([flip_hex(rng, salt or "0x" + "00" * 32), None]))
        return "salt"
    if op == 10:
        manifest = json.loads(evidence("models.json"))
        model = rng.choice(manifest["models"])
        change = rng.randrange(3)
        if change == 0:
            model["sha256"] = flip_hex(rng, model["sha256"])
        elif change == 1:
            model["version"] = "2"
        else:
            manifest["models"].remove(model)
        case.files["models.json"] = dumps(manifest)
        set_flag(case, "--manifest", "models.json")
        return "manifest"
    if op == 11:
        set_flag(case, "--manifest", None)
        return "no manifest"
    set_flag(case, "--model", rng.choice(["iris-mlp", "iris-ols", "mnist-lenet", "x"]))
    return "--model"


def mutate(rng: random.Random, case: Case) -> Case:
    case = copy.deepcopy(case)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        target = rng.random()
        mutation: Callable[[random.Random, Case], str]
        if target < 0.2:
            mutation = mutate_pins
        elif case.kind == "infer":
            mutation = mutate_infer_response if target < 0.65 else mutate_infer_request
        elif case.response_name.endswith(".sse"):
            mutation = mutate_stream if target < 0.8 else mutate_llm_request
        else:
            mutation = mutate_completion if target < 0.8 else mutate_llm_request
        case.notes.append(mutation(rng, case))
    return case


# --- running both verifiers ---


def python_verdict(args: list[str]) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = verinfer_main(["verify", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    except Exception as exc:
        return {"crash": f"{type(exc).__name__}: {exc}"}
    if code == 2:
        return {"code": 2, "verdict": None, "checks": []}
    report = json.loads(out.getvalue())
    return {
        "code": code,
        "verdict": report["verdict"],
        "checks": [[c["name"], c["status"]] for c in report["checks"]],
    }


def test_js_and_python_verifiers_agree_on_mutated_evidence(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    bases = base_cases()
    cases: dict[str, tuple[Case, list[str]]] = {}
    for index in range(len(bases)):  # every base case unmutated first: they must verify in both
        cases[f"{index:05d}"] = (bases[index], bases[index].write(tmp_path / f"{index:05d}"))
    for index in range(len(bases), CASES):
        case = mutate(rng, rng.choice(bases))
        cases[f"{index:05d}"] = (case, case.write(tmp_path / f"{index:05d}"))

    assert NODE is not None
    node = subprocess.Popen(
        [NODE, str(JS / "test" / "differential_verify.mjs"), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=JS,
    )
    python = {case_id: python_verdict(args) for case_id, (_, args) in cases.items()}
    stdout, stderr = node.communicate(timeout=300)
    assert node.returncode == 0, stderr.decode()
    js = {line["id"]: line for line in map(json.loads, stdout.decode().splitlines())}

    for index in range(len(bases)):
        assert python[f"{index:05d}"].get("verdict") == "VERIFIED", python[f"{index:05d}"]
    disagreements = []
    verdicts: dict[str, int] = {}
    for case_id, (case, args) in cases.items():
        ours, theirs = python[case_id], js.get(case_id, {"missing": True})
        if "crash" in ours or "crash" in theirs:
            agree = "crash" in ours and "crash" in theirs
            verdicts["CRASH"] = verdicts.get("CRASH", 0) + 1
        else:
            agree = (ours["code"], ours["verdict"], ours["checks"]) == (
                theirs["code"],
                theirs["verdict"],
                theirs["checks"],
            ) and not theirs.get("inconsistent")
            key = ours["verdict"] or "USAGE"
            verdicts[key] = verdicts.get(key, 0) + 1
        if not agree:
            disagreements.append(f"{case_id} {case.notes}: python {ours} js {theirs} (args {args})")
    assert not disagreements, f"{len(disagreements)} disagreements:\n" + "\n".join(disagreements[:20])
    # the mutations reach every verdict
    assert (
        verdicts.get("VERIFIED", 0) > 50
        and verdicts.get("REJECTED", 0) > 500
        and verdicts.get("UNPINNED", 0) > 5
    )
