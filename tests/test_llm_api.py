"""The OpenAI-compatible LLM API, driven by the official `openai` client against a real server process.

Receipts are checked the way an auditor would: offline, from the exact request bytes the client sent and
the response it got, against the server's attestation (verinfer/verify_llm.py, `verinfer verify`).
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from attestation import Policy, TrustedRoot
from protocol import llm
from protocol.manifest import load_manifest
from verinfer.processes import VERINFER, running_server
from verinfer.verify_llm import verified_text, verify_completion

MODELS = Path(__file__).resolve().parent.parent / "models"
LLM_DIR = MODELS / "llm" / "smollm2-135m-instruct"
MODEL = "smollm2-135m-instruct"
ARTICLE_PROMPT = "Ethereum is the community-run technology"

pytestmark = pytest.mark.skipif(
    not (LLM_DIR / "model.onnx").is_file(), reason="the LLM is built by `make setup` (models/llm/)"
)


class Recorder:
    """The exact bytes of every request the openai client sends."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, request: Any) -> None:  # an httpx request (openai bundles its own httpx)
        self.bodies.append(request.read())


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def client(server: str, recorder: Recorder) -> Iterator[openai.OpenAI]:
    http = openai.DefaultHttpxClient(event_hooks={"request": [recorder]}, timeout=120)
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", http_client=http, max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def attestation(server: str) -> bytes:
    return base64.b64decode(httpx.get(f"{server}/attestation", timeout=10).json()["document"])


@pytest.fixture(scope="module")
def policy(server_pki: Path) -> Policy:
    return Policy(root=TrustedRoot.from_file(server_pki / "root.pem"))


def check(request: bytes, response: bytes, attestation: bytes, policy: Policy) -> Any:
    return verify_completion(
        request,
        response,
        attestation,
        policy=policy,
        manifest=load_manifest(MODELS, check_files=False),
        allow_any_image=True,
    )


def failed(report: Any) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if c.status == "fail"}


def test_models_lists_the_llm_with_its_attested_hash(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    entry = load_manifest(MODELS, check_files=False).models[MODEL]
    assert (models[0].model_extra or {})["modelHash"] == "0x" + entry.sha256


def test_completion_receipt_verifies_offline_and_fails_after_one_changed_character(
    client: openai.OpenAI, recorder: Recorder, attestation: bytes, policy: Policy
) -> None:
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=ARTICLE_PROMPT, max_tokens=24, temperature=0
    )
    request, response = recorder.bodies[-1], raw.http_response.content
    completion = raw.parse()
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert completion.usage is not None and completion.usage.completion_tokens <= 24
    report = check(request, response, attestation, policy)
    assert report.ok, failed(report)
    assert report.partial is None

    text = completion.choices[0].text
    assert text
    body = json.loads(response)
    body["choices"][0]["text"] = ("X" if text[0] != "X" else "Y") + text[1:]
    tampered = check(request, json.dumps(body).encode(), attestation, policy)
    assert "output_hash" in failed(tampered)

    other = request.replace(b'"max_tokens":24', b'"max_tokens":25')
    assert other != request
    assert "input_hash" in failed(check(other, response, attestation, policy))


def _stream_text(stream: Any) -> tuple[str, list[dict[str, Any]]]:
    parts, chunks = [], []
    for chunk in stream:
        chunks.append(chunk.model_dump(mode="json"))
        if chunk.choices:
            choice = chunk.choices[0]
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            parts.append(piece or "")
    return "".join(parts), chunks


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_and_non_streamed_give_identical_text(client: openai.OpenAI, chat: bool) -> None:
    common: dict[str, Any] = {"model": MODEL, "max_tokens": 40, "temperature": 0}
    if chat:
        messages: Any = [{"role": "user", "content": "What is a blockchain?"}]
        whole = client.chat.completions.create(messages=messages, **common)
        text, chunks = _stream_text(client.chat.completions.create(messages=messages, stream=True, **common))
        expected = whole.choices[0].message.content
    else:
        whole_text = client.completions.create(prompt=ARTICLE_PROMPT, **common)
        text, chunks = _stream_text(client.completions.create(prompt=ARTICLE_PROMPT, stream=True, **common))
        expected = whole_text.choices[0].text
    assert text == expected and text
    final = chunks[-1]["verinfer"]
    assert "receipt" in final and final["tokens"] == 40
    assert any("checkpoint" in c["verinfer"] for c in chunks)  # 40 tokens: one checkpoint at 32


def test_a_client_that_disconnects_verifies_the_prefix_up_to_its_last_checkpoint(
    client: openai.OpenAI, recorder: Recorder, attestation: bytes, policy: Policy, server: str
) -> None:
    stream = client.completions.create(
        model=MODEL, prompt=ARTICLE_PROMPT, max_tokens=400, temperature=0, stream=True
    )
    request = recorder.bodies[-1]
    events: list[bytes] = []
    for chunk in stream:
        dumped = chunk.model_dump(mode="json", exclude_none=True)
        events.append(b"data: " + orjson.dumps(dumped) + b"\n\n")
        if chunk.model_extra and chunk.model_extra["verinfer"]["tokens"] >= 72:
            break
    stream.close()  # the client goes away mid-generation
    transcript = b"".join(events)
    report = check(request, transcript, attestation, policy)
    assert report.ok, failed(report)
    assert report.partial is not None and "first 64 tokens" in report.partial
    prefix = verified_text(transcript, request)
    assert prefix and prefix in "".join(
        json.loads(e[6:])["choices"][0]["text"] for e in events if json.loads(e[6:]).get("choices")
    )
    # One changed character in the vouched-for prefix breaks the chain the checkpoint signs.
    cut = transcript.index(b'"text":"') + len(b'"text":"')
    tampered = (
        transcript[:cut] + (b"Q" if transcript[cut : cut + 1] != b"Q" else b"R") + transcript[cut + 1 :]
    )
    assert not check(request, tampered, attestation, policy).ok
    # The server stopped generating for it: nothing is left running.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{server}/metrics", timeout=5).text
        if "verinfer_llm_active_sequences 0.0" in metrics:
            break
        time.sleep(0.1)
    assert "verinfer_llm_active_sequences 0.0" in metrics


def test_saved_stream_verifies_with_the_cli(
    server: str, server_pki: Path, tmp_path: Path, attestation: bytes
) -> None:
    request = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 8,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        content=request,
        headers={"content-type": "application/json"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        transcript = response.read()
    assert transcript.endswith(b"data: [DONE]\n\n")
    (tmp_path / "request.json").write_bytes(request)
    (tmp_path / "stream.sse").write_bytes(transcript)
    (tmp_path / "attestation.cbor").write_bytes(attestation)
    (tmp_path / "manifest.json").write_text(httpx.get(f"{server}/models", timeout=5).text)
    args = [
        VERINFER,
        "verify",
        str(tmp_path / "stream.sse"),
        "--attestation",
        str(tmp_path / "attestation.cbor"),
        "--request",
        str(tmp_path / "request.json"),
        "--manifest",
        str(tmp_path / "manifest.json"),
        "--root",
        str(server_pki / "root.pem"),
        "--allow-any-image",
    ]
    ok = subprocess.run(args, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "VERIFIED" in ok.stdout and "PREFIX" not in ok.stdout
    text_start = transcript.index(b'"content":"', transcript.index(b'"content":"') + 1) + len(b'"content":"')
    changed = transcript[:text_start] + b"#" + transcript[text_start + 1 :]
    (tmp_path / "stream.sse").write_bytes(changed)
    bad = subprocess.run(args, capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "REJECTED" in bad.stdout


def test_saved_json_answer_verifies_with_the_cli_even_reformatted(
    server: str, server_pki: Path, tmp_path: Path, attestation: bytes
) -> None:
    """A client may save the answer pretty-printed: the CLI still sees a completion (by its `object`)."""
    request = orjson.dumps({"model": MODEL, "prompt": ARTICLE_PROMPT, "max_tokens": 8, "temperature": 0})
    answer = httpx.post(
        f"{server}/v1/completions", content=request, headers={"content-type": "application/json"}, timeout=60
    )
    (tmp_path / "request.json").write_bytes(request)
    (tmp_path / "answer.json").write_text(json.dumps(answer.json(), indent=2))
    (tmp_path / "attestation.cbor").write_bytes(attestation)
    args = [VERINFER, "verify", str(tmp_path / "answer.json"),
            "--attestation", str(tmp_path / "attestation.cbor"), "--request", str(tmp_path / "request.json"),
            "--root", str(server_pki / "root.pem"), "--allow-any-image"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "output_hash" in done.stdout and "VERIFIED" in done.stdout


def test_signature_endpoint_signs_request_and_response_hashes(
    client: openai.OpenAI, recorder: Recorder, server: str
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0
    )
    completion = raw.parse()
    signed = httpx.get(f"{server}/v1/signature/{completion.id}", timeout=5).json()
    assert signed["text"] == llm.signature_text(recorder.bodies[-1], raw.http_response.content)
    assert signed["signing_algo"] == "ecdsa"
    signer = Account.recover_message(encode_defunct(text=signed["text"]), signature=signed["signature"])
    assert signer == signed["signing_address"] == (completion.model_extra or {})["receipt"]["enclave"]
    assert httpx.get(f"{server}/v1/signature/chatcmpl-unknown", timeout=5).status_code == 404


def test_greedy_and_seeded_sampling_are_deterministic(client: openai.OpenAI) -> None:
    def text(**params: Any) -> str:
        out = client.completions.create(model=MODEL, prompt=ARTICLE_PROMPT, max_tokens=16, **params)
        return str(out.choices[0].text)

    assert text(temperature=0) == text(temperature=0)
    seeded = text(temperature=0.9, top_p=0.95, seed=7)
    assert seeded == text(temperature=0.9, top_p=0.95, seed=7)
    assert any(text(temperature=1.0, seed=s) != seeded for s in (1, 2, 3))


def test_stop_strings_end_the_text_before_them(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt=ARTICLE_PROMPT, max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[8:11]
    cut = client.completions.create(
        model=MODEL, prompt=ARTICLE_PROMPT, max_tokens=24, temperature=0, stop=stop
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "gpt-4", "prompt": "x"}, 404, "model_not_found", "model"),
        ({"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "invalid_request", "temperature"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 1.5}, 400, "invalid_request", "max_tokens"),
        ({"model": MODEL, "prompt": "x", "stream": "yes"}, 400, "invalid_request", "stream"),
        ({"model": MODEL, "prompt": "x", "frobnicate": 1}, 400, "invalid_request", "frobnicate"),
        ({"model": MODEL, "prompt": "x", "n": 2}, 400, "unsupported_parameter", "n"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 2048}, 400, "context_length_exceeded", "max_tokens"),
        ({"model": MODEL, "prompt": "word " * 2100}, 400, "context_length_exceeded", "messages"),
        ({"model": MODEL, "prompt": [10**9]}, 400, "invalid_request", "prompt"),
        ({"model": MODEL, "prompt": ""}, 400, "invalid_request", "prompt"),
        ({"model": MODEL}, 400, "invalid_request", "prompt"),
    ],
)
def test_bad_requests_get_openai_shaped_4xx_and_the_server_stays_up(
    client: openai.OpenAI, server: str, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.post("/completions", body=body, cast_to=object)  # the client's own request path
    assert caught.value.status_code == status
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == code and error["param"] == param and error["type"].endswith("_error")
    assert error["message"]
    assert httpx.get(f"{server}/v2/health/live", timeout=5).status_code == 200


def test_bad_json_and_chat_messages_are_refused(server: str) -> None:
    url = f"{server}/v1/chat/completions"
    for body in (
        b"{",
        b"[]",
        orjson.dumps({"model": MODEL, "messages": []}),
        orjson.dumps({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}),
    ):
        answer = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10)
        assert answer.status_code == 400, body
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_generation_runs_off_the_event_loop(client: openai.OpenAI, server: str) -> None:
    """Health and tensor inference answer quickly while a long completion is being generated."""
    done = threading.Event()

    def generate() -> None:
        client.completions.create(model=MODEL, prompt=ARTICLE_PROMPT, max_tokens=160, temperature=0)
        done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    time.sleep(0.5)
    slowest = 0.0
    for _ in range(10):
        started = time.perf_counter()
        assert httpx.get(f"{server}/v2/health/live", timeout=5).status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
    assert not done.is_set(), "the completion finished before the probes: make it longer"
    worker.join()
    assert slowest < 0.5


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    args = ["--nsm", "sim", "--pki-dir", str(tmp_path), "--llm-max-batch", "1", "--llm-queue", "0"]
    with running_server(*args) as url:
        body = {"model": MODEL, "prompt": ARTICLE_PROMPT, "max_tokens": 64, "temperature": 0}
        results: list[httpx.Response] = []

        def post() -> None:
            results.append(httpx.post(f"{url}/v1/completions", json=body, timeout=60))

        threads = [threading.Thread(target=post) for _ in range(3)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        statuses = sorted(r.status_code for r in results)
        assert statuses[0] == 200 and 429 in statuses
        refused = next(r for r in results if r.status_code == 429)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        for series in (
            "verinfer_llm_queue_depth",
            "verinfer_llm_time_to_first_token_seconds_count",
            "verinfer_llm_generated_tokens",
            "verinfer_llm_decode_tokens_per_second_count",
        ):
            assert series in metrics
