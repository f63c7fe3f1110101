"""verinfer.client against real server processes, honest and through a man-in-the-middle.

The man-in-the-middle is an httpx transport that forwards every request to the real server and may rewrite
the answer (or send the request elsewhere): the server itself is never mocked, and the client must refuse
whatever was changed on the way.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pytest

from attestation import Policy, TrustedRoot, verify
from protocol.images import image_id
from verinfer.client import (
    AsyncClient,
    AttestationError,
    Client,
    ForgedReceiptError,
    ReceiptError,
    ServerError,
    StaleNonceError,
    UnknownSignerError,
    VerificationError,
    verify_openai,
)
from verinfer.client_core import make_trust
from verinfer.client_llm import StreamVerifier
from verinfer.processes import running_server

MODELS = Path(__file__).resolve().parent.parent / "models"
HAS_LLM = (MODELS / "llm" / "smollm2-135m-instruct" / "model.onnx").is_file()
needs_llm = pytest.mark.skipif(not HAS_LLM, reason="the LLM is built by `make setup` (models/llm/)")
LLM = "smollm2-135m-instruct"
SAMPLE = [[6.7, 3.0, 5.2, 2.3]]
Rewrite = Callable[[httpx.Request, bytes], bytes]


def _forward(request: httpx.Request, target: str | None) -> httpx.Request:
    if target is None:
        return request
    url = httpx.URL(target).join(request.url.raw_path.decode())
    headers = [(k, v) for k, v in request.headers.items() if k.lower() != "host"]
    return httpx.Request(request.method, url, headers=headers, content=request.content)


def _answer(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response:
    dropped = ("content-length", "content-encoding", "transfer-encoding")
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in dropped]
    return httpx.Response(response.status_code, headers=headers, content=body, request=request)


class Mitm(httpx.HTTPTransport):
    """Forwards to the real server (or to `route(path)`), then lets `rewrite` change the answer's bytes."""

    def __init__(
        self, rewrite: Rewrite | None = None, route: Callable[[str], str | None] | None = None
    ) -> None:
        super().__init__()
        self.rewrite = rewrite
        self.route = route or (lambda _path: None)
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = super().handle_request(_forward(request, self.route(request.url.path)))
        body = response.read()
        return _answer(request, response, self.rewrite(request, body) if self.rewrite else body)


class AsyncMitm(httpx.AsyncHTTPTransport):
    def __init__(self, rewrite: Rewrite) -> None:
        super().__init__()
        self.rewrite = rewrite

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        body = await response.aread()
        return _answer(request, response, self.rewrite(request, body))


def on(path: str, change: Callable[[Any], None]) -> Rewrite:
    """Rewrite the JSON answers of `path` with `change` (in place)."""

    def rewrite(request: httpx.Request, body: bytes) -> bytes:
        if request.url.path != path:
            return body
        data = orjson.loads(body)
        change(data)
        return orjson.dumps(data)

    return rewrite


@pytest.fixture(scope="module")
def root(server_pki: Path) -> TrustedRoot:
    return TrustedRoot.from_file(server_pki / "root.pem")


@pytest.fixture(scope="module")
def pcrs(server: str, root: TrustedRoot) -> dict[int, bytes]:
    """The image's PCR0-2 as the simulated enclave reports them (what `verinfer image measure` computes)."""
    document = httpx.get(f"{server}/attestation", headers={"Accept": "application/cbor"}, timeout=10).content
    return {i: v for i, v in verify(document, Policy(root=root)).pcrs.items() if i < 3}


@pytest.fixture(scope="module")
def policy(root: TrustedRoot, pcrs: dict[int, bytes]) -> Policy:
    return Policy(root=root, expected_pcrs=pcrs)


@pytest.fixture
def client(server: str, policy: Policy) -> Iterator[Client]:
    with Client(server, policy) as c:
        yield c


def test_infer_verifies_and_returns_numpy_outputs(client: Client) -> None:
    result = client.infer("iris-mlp", SAMPLE)
    probabilities = result["probabilities"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (1, 3)
    assert abs(float(probabilities.sum()) - 1) < 1e-5 and int(result["label"][0]) == 2
    assert result.report.verified and result.receipt["enclave"] == client.attestation.enclave
    assert client.attestation.simulated
    named = client.infer(
        "iris-mlp", {"features": np.array(SAMPLE, dtype=np.float64)}, request_id=b"\x07" * 32
    )
    assert named.receipt["requestId"] == "0x" + "07" * 32
    assert np.array_equal(named["probabilities"], probabilities)


def test_async_client_pinned_by_image_id(server: str, root: TrustedRoot, pcrs: dict[int, bytes]) -> None:
    paths: list[str] = []

    def record(request: httpx.Request, body: bytes) -> bytes:
        paths.append(request.url.path)
        return body

    async def run() -> tuple[list[Any], str]:
        pin = ["0x" + image_id(pcrs).hex()]
        async with AsyncClient(server, Policy(root=root), image_ids=pin, transport=AsyncMitm(record)) as c:
            results = await asyncio.gather(
                c.infer("iris-ols", [[5.1, 3.5, 1.4]]), *(c.infer("iris-mlp", SAMPLE) for _ in range(3))
            )
            return list(results), (await c.attestation()).image_id

    results, attested_image = asyncio.run(run())
    assert attested_image == "0x" + image_id(pcrs).hex()
    assert results[0]["petal_width"].shape == (1, 1) and all(r.report.verified for r in results)
    assert len({r.receipt["requestId"] for r in results}) == 4  # the client picks a fresh id per request
    assert paths.count("/attestation") == 1 and paths.count("/infer") == 4  # concurrent: attested once


def test_unpinned_client_is_refused_unless_explicit(
    server: str, root: TrustedRoot, pcrs: dict[int, bytes]
) -> None:
    with pytest.raises(ValueError, match="no image is pinned"):
        Client(server, Policy(root=root))
    with pytest.raises(ValueError, match="no image is pinned"):
        Client(server, Policy(root=root, expected_pcrs={0: pcrs[0], 1: pcrs[1]}))
    with Client(server, Policy(root=root), allow_any_image=True) as c:
        assert c.infer("iris-mlp", SAMPLE).report.verdict_line.startswith("VERIFIED (ANY IMAGE")


def test_wrong_pcr0_is_refused_before_any_request(
    server: str, root: TrustedRoot, pcrs: dict[int, bytes]
) -> None:
    mitm = Mitm()
    wrong = Policy(root=root, expected_pcrs={**pcrs, 0: b"\x00" * 47 + b"\x01"})
    with Client(server, wrong, transport=mitm) as c, pytest.raises(AttestationError) as caught:
        c.infer("iris-mlp", SAMPLE)
    assert caught.value.code == "pcr_mismatch" and mitm.paths == ["/attestation"]
    with (
        Client(server, Policy(root=root), image_ids=[b"\x01" * 32]) as c,
        pytest.raises(AttestationError) as other,
    ):
        c.attest()
    assert other.value.code == "image_mismatch"


def test_untrusted_root_is_refused(server: str, pcrs: dict[int, bytes]) -> None:
    with Client(server, Policy(expected_pcrs=pcrs)) as c, pytest.raises(AttestationError) as caught:
        c.attest()  # the AWS root: a simulated document does not chain to it
    assert "root" in caught.value.code or "chain" in caught.value.code


def test_replayed_attestation_is_a_stale_nonce(server: str, policy: Policy) -> None:
    old = httpx.get(
        f"{server}/attestation", params={"nonce": "ab" * 32}, headers={"Accept": "application/cbor"}
    )
    replay = Mitm(lambda request, body: old.content if request.url.path == "/attestation" else body)
    with Client(server, policy, transport=replay) as c, pytest.raises(StaleNonceError):
        c.infer("iris-mlp", SAMPLE)
    without = httpx.get(f"{server}/attestation", headers={"Accept": "application/cbor"}).content
    replay.rewrite = lambda request, body: without if request.url.path == "/attestation" else body
    with Client(server, policy, transport=replay) as c, pytest.raises(StaleNonceError, match="no nonce"):
        c.attest()


def test_manifest_that_is_not_attested_is_refused(server: str, policy: Policy) -> None:
    def swap(manifest: Any) -> None:
        manifest["models"][0]["sha256"] = manifest["models"][1]["sha256"]

    with (
        Client(server, policy, transport=Mitm(on("/models", swap))) as c,
        pytest.raises(AttestationError) as caught,
    ):
        c.attest()
    assert caught.value.code == "manifest_mismatch"


def _flip_output(response: Any) -> None:
    response["outputs"][0]["data"][0] += 0.25


def _flip_signature(response: Any) -> None:
    signature = response["receipt"]["signature"]
    response["receipt"]["signature"] = (
        signature[:10] + ("0" if signature[10] != "0" else "1") + signature[11:]
    )


def _other_request(response: Any) -> None:
    response["receipt"]["inputHash"] = "0x" + "11" * 32


@pytest.mark.parametrize("change", [_flip_output, _flip_signature, _other_request])
def test_forged_receipt_is_refused(server: str, policy: Policy, change: Callable[[Any], None]) -> None:
    with Client(server, policy, transport=Mitm(on("/infer", change))) as c, pytest.raises(ForgedReceiptError):
        c.infer("iris-mlp", SAMPLE)


def test_async_client_refuses_forged_outputs(server: str, policy: Policy) -> None:
    async def run() -> None:
        async with AsyncClient(server, policy, transport=AsyncMitm(on("/infer", _flip_output))) as c:
            await c.infer("iris-mlp", SAMPLE)

    with pytest.raises(ForgedReceiptError) as caught:
        asyncio.run(run())
    assert caught.value.report is not None and not caught.value.report.ok


def test_server_refusal_is_a_server_error(client: Client) -> None:
    with pytest.raises(ServerError) as caught:
        client.infer("no-such-model", SAMPLE)
    assert caught.value.status == 404 and caught.value.code
    with pytest.raises(ServerError) as bad:
        client.infer("iris-mlp", [[1.0, 2.0]])
    assert bad.value.status == 400


def test_reattests_once_when_the_enclave_key_changes(
    server_pki: Path, server: str, root: TrustedRoot
) -> None:
    """A second enclave (same PKI, new key) answers: the client re-attests and accepts it; a receipt from an
    enclave that even a fresh attestation does not bind is refused. Any image is accepted here only because
    the second server measures the tree as it is now, which other work may be editing (pinning: above)."""
    with running_server("--nsm", "sim", "--pki-dir", str(server_pki), "--no-llm") as other:
        target: dict[str, str | None] = {"all": None, "infer": None}
        mitm = Mitm(route=lambda path: target["infer"] if path == "/infer" else target["all"])
        with Client(server, Policy(root=root), allow_any_image=True, transport=mitm) as c:
            first = c.attestation.enclave
            target["all"] = target["infer"] = other
            result = c.infer("iris-mlp", SAMPLE)
            assert result.receipt["enclave"] == c.attestation.enclave != first
            assert mitm.paths.count("/attestation") == 2
            target["all"] = None  # attestations from the first enclave, receipts from the second
            c.attest()
            with pytest.raises(UnknownSignerError):
                c.infer("iris-mlp", SAMPLE)
            assert mitm.paths.count("/attestation") == 4  # one re-attestation, then refused


@needs_llm
def test_chat_and_completion_are_verified(client: Client) -> None:
    chat = client.chat([{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    assert chat.text and str(chat) == chat.text and chat.report.verified
    assert chat.body is not None and chat.body["choices"][0]["message"]["content"] == chat.text
    completion = client.complete("Ethereum is", max_tokens=6, temperature=0)
    assert completion.text and completion.usage["completion_tokens"] <= 6


@needs_llm
def test_tampered_chat_is_refused(server: str, policy: Policy) -> None:
    def change(body: Any) -> None:
        body["choices"][0]["message"]["content"] += " (edited)"

    mitm = Mitm(on("/v1/chat/completions", change))
    with Client(server, policy, transport=mitm) as c, pytest.raises(ForgedReceiptError, match="output_hash"):
        c.chat([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)


@needs_llm
def test_openai_client_responses_are_verified(server: str, client: Client) -> None:
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0) as ai:
        raw = ai.chat.completions.with_raw_response.create(
            model=LLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0
        )
    verified = verify_openai(raw, client)
    assert verified.text == raw.parse().choices[0].message.content
    request, content = raw.http_response.request.content, raw.http_response.content
    tampered = orjson.loads(content)
    tampered["choices"][0]["message"]["content"] = "Something else entirely"
    with pytest.raises(ForgedReceiptError, match="output_hash"):
        client.verify_openai(orjson.dumps(tampered), request)
    with pytest.raises(ForgedReceiptError, match="input_hash"):
        client.verify_openai(content, request.replace(b'"Hi"', b'"Ho"'))
    with pytest.raises(VerificationError):
        client.verify_openai(base64.b64encode(content), request)
    with pytest.raises(TypeError, match="raw response"):
        client.verify_openai(raw.parse())


@needs_llm
def test_openai_streamed_response_is_verified(server: str, client: Client) -> None:
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0) as ai:
        raw = ai.completions.with_raw_response.create(
            model=LLM, prompt="Ethereum is", max_tokens=6, temperature=0, stream=True
        )
        verified = client.verify_openai(raw)
    assert verified.text and verified.body is None and verified.report.verified
    assert "".join(chunk.choices[0].text for chunk in raw.parse() if chunk.choices) == verified.text


def sse_events(body: bytes) -> list[bytes]:
    return [event for event in body.split(b"\n\n") if event.strip()]


def tamper_first_text(request: httpx.Request, body: bytes) -> bytes:
    if request.url.path != "/v1/completions":
        return body
    events = sse_events(body)
    for index, event in enumerate(events):
        chunk = orjson.loads(event.removeprefix(b"data:").strip()) if b"[DONE]" not in event else None
        if chunk and chunk["choices"] and chunk["choices"][0].get("text"):
            chunk["choices"][0]["text"] = "!" + chunk["choices"][0]["text"]
            events[index] = b"data: " + orjson.dumps(chunk)
            break
    return b"\n\n".join(events) + b"\n\n"


def cut_after_first_checkpoint(request: httpx.Request, body: bytes) -> bytes:
    if request.url.path != "/v1/completions":
        return body
    events = sse_events(body)
    first = next(i for i, event in enumerate(events) if b'"checkpoint"' in event)
    return b"\n\n".join(events[: first + 1]) + b"\n\n"


LONG: dict[str, Any] = {"max_tokens": 40, "temperature": 0}  # past the server's checkpoint every 32 tokens


@needs_llm
def test_streamed_text_is_released_as_far_as_signatures_vouch(client: Client) -> None:
    stream = client.complete_stream("Ethereum is the community-run technology", **LONG)
    with pytest.raises(ReceiptError):
        stream.completion  # noqa: B018 - not before the end
    pieces = list(stream)
    completion = stream.completion
    assert "".join(pieces) == completion.text and completion.report.verified
    assert completion.usage["completion_tokens"] == 40 and len(pieces) == 2  # checkpoint, then the rest


@needs_llm
def test_tampered_or_cut_streams_release_nothing_unvouched(server: str, policy: Policy) -> None:
    prompt = "Ethereum is the community-run technology"
    with Client(server, policy, transport=Mitm(tamper_first_text)) as c:
        pieces: list[str] = []
        with pytest.raises(ForgedReceiptError, match="chain"):
            pieces.extend(c.complete_stream(prompt, **LONG))
        assert pieces == []
    with Client(server, policy, transport=Mitm(cut_after_first_checkpoint)) as c:
        stream = c.complete_stream(prompt, **LONG)
        with pytest.raises(ReceiptError, match="ended before its final receipt"):
            pieces.extend(stream)
        assert len(pieces) == 1 and pieces[0]


@needs_llm
def test_async_chat_and_stream_are_verified(server: str, policy: Policy) -> None:
    async def run() -> tuple[str, str, str]:
        async with AsyncClient(server, policy) as c:
            chat = await c.chat([{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
            stream = await c.chat_stream([{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
            pieces = [piece async for piece in stream]
            return chat.text, "".join(pieces), stream.completion.text

    chat, streamed, whole = asyncio.run(run())
    assert chat == streamed == whole and chat


@needs_llm
def test_stream_verifier_releases_the_same_text_whatever_the_chunking(
    server: str, client: Client, policy: Policy
) -> None:
    """Network chunks split events anywhere: text is released at the same checkpoints, never early."""
    body = orjson.dumps(
        {"model": LLM, "prompt": "Ethereum is the community-run technology", "stream": True, **LONG}
    )
    transcript = httpx.post(f"{server}/v1/completions", content=body, timeout=60).content
    releases: list[tuple[int, str]] = []
    verifier = StreamVerifier(make_trust(policy, (), False), body)
    for start in range(0, len(transcript), 7):
        verifier.feed(transcript[start : start + 7])
        if text := verifier.release(client.attestation, final=True):
            releases.append((start, text))
    verifier.feed(b"", ended=True)
    assert verifier.release(client.attestation, final=True) == ""
    assert "".join(text for _, text in releases) == verifier.result().text and len(releases) == 2
    first_checkpoint = transcript.index(b'"checkpoint"')
    assert releases[0][0] + 7 > transcript.index(b"\n\n", first_checkpoint)  # released only once whole
