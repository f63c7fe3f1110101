"""A verifying Python client for a verinfer enclave, sync (`Client`) and async (`AsyncClient`), on httpx.

On first contact the client fetches GET /attestation with a fresh 32-byte nonce, verifies the document
against the caller's trust (root, pinned PCRs and/or image ids), checks that it echoes that nonce, and
binds GET /models to the attested manifest digest. `infer`, `chat` and `complete` then return an answer
only after its receipt verifies against that enclave; any failure raises a VerificationError subclass:

    AttestationError   untrusted root, PCR or image not pinned, no enclave key, manifest not attested
    StaleNonceError    the document does not carry the nonce just sent (a replay)
    ReceiptError       no usable receipt; ForgedReceiptError: it does not match the answer;
                       UnknownSignerError: signed by a key no fresh attestation binds

`Client(..., sealed=True)` sends every call as an Oblivious HTTP request sealed to the enclave's attested
X25519 key (verinfer/client_sealed.py), so the host and anything on the way see only ciphertext; its
receipts commit to the hashes with a per-request salt that only the client and the enclave know.

`chat_stream` / `complete_stream` yield streamed text only as far as a signed checkpoint or the final
receipt vouches for it. `verify_openai` checks a completion obtained with the `openai` client.

A refusal by the server is a ServerError(status, code, message). When a receipt names another enclave
than the cached one (the enclave restarted, or a load balancer sent you to another enclave of the fleet),
the client attests *that* enclave once, with `GET /attestation?signer=ADDRESS&nonce=...` (docs/PROTOCOL.md:
behind a proxy, only the enclave that signs as ADDRESS answers it), keeps it beside the others
(`client.enclaves`), and raises UnknownSignerError if no enclave of a pinned image signs as that key.
The attestation is verified (freshness, max_age_s included) when it is fetched; later receipts are
checked against that verified key: call `attest()` to refresh it. Transport failures are httpx's
exceptions.

    from attestation import Policy, TrustedRoot
    from verinfer.client import Client

    trust = Policy(TrustedRoot.from_file("root.pem"))
    with Client("http://127.0.0.1:8000", trust, image_ids=[IMAGE_ID]) as c:
        print(c.infer("iris-mlp", [[6.7, 3.0, 5.2, 2.3]])["probabilities"])
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

import httpx
import orjson

from attestation import Policy
from protocol.ohttp import KeyConfig

from .client_core import (
    Attested,
    InferResult,
    attested_signer,
    bind_manifest,
    check_document,
    check_infer,
    infer_body,
    make_trust,
    new_nonce,
    signer_address,
)
from .client_errors import (
    AttestationError,
    ForgedReceiptError,
    KeyChanged,
    ReceiptError,
    ServerError,
    StaleNonceError,
    UnknownSignerError,
    VerificationError,
    server_error,
)
from .client_llm import (
    AsyncTextStream,
    Completion,
    StreamVerifier,
    TextStream,
    check_completion,
    llm_body,
    openai_exchange,
)
from .client_sealed import GATEWAY_PATH, KEYS_HEADERS, REQUEST_HEADERS, bound_key_config, seal_request

__all__ = [
    "AsyncClient",
    "AsyncTextStream",
    "AttestationError",
    "Attested",
    "Client",
    "Completion",
    "ForgedReceiptError",
    "InferResult",
    "ReceiptError",
    "ServerError",
    "StaleNonceError",
    "TextStream",
    "UnknownSignerError",
    "VerificationError",
    "verify_openai",
]

DEFAULT_TIMEOUT = 60.0
_CBOR = {"Accept": "application/cbor"}
_JSON = {"Content-Type": "application/json"}
T = TypeVar("T")
SEALED_STREAMS = "a sealed client answers whole completions (OHTTP is one message): use chat()/complete()"


def _content(response: httpx.Response) -> bytes:
    if response.is_error:
        raise server_error(response.status_code, response.content)
    return response.content


def _attestation(response: httpx.Response, signer: str | None) -> bytes:
    """An /attestation answer's body; asked for a `signer` that no enclave behind the URL is (404 from
    every one of them), UnknownSignerError."""
    if signer is not None and response.status_code == 404:
        raise UnknownSignerError(f"no enclave behind {response.request.url.host} signs as {signer}")
    return _content(response)


class _Base:
    """State shared by both clients: the trust and the attested enclave (None until first contact).

    Constructing a client that pins no image raises ValueError unless `allow_any_image=True`: a valid
    chain only proves that *some* enclave signed, and anyone can launch an enclave running their own code
    under the same root. PCR0-2 (`Policy(expected_pcrs=...)`) or an image id name the code you trust."""

    def __init__(
        self, trust: Policy | None, image_ids: Iterable[bytes | str], allow_any_image: bool, sealed: bool
    ) -> None:
        self._trust = make_trust(trust, image_ids, allow_any_image)
        self._attested: Attested | None = None
        self._fleet: dict[bytes, Attested] = {}  # every enclave verified, by signing address
        self._sealed = sealed
        self._key_config: KeyConfig | None = None

    def _keep(self, attested: Attested, signer: str | None) -> Attested:
        """Keep a verified enclave beside the others; the latest becomes the cached one. A plain attest()
        is a refresh: the other enclaves are forgotten and attested again when they next sign."""
        attested = attested_signer(attested, signer)
        if signer is None:
            self._fleet.clear()
        self._fleet[attested.address] = attested
        self._attested = attested
        return attested

    def _known(self, signer: str | None) -> Attested | None:
        return self._fleet.get(signer_address(signer)) if signer is not None else None

    @property
    def enclaves(self) -> list[Attested]:
        """Every enclave this client has verified (several behind a load balancer), first contact first."""
        return list(self._fleet.values())


class Client(_Base):
    """Synchronous verifying client. `trust`: the root and pinned PCRs (default root: AWS Nitro);
    `image_ids`: accepted images, keccak256(PCR0 || PCR1 || PCR2), as bytes or 0x-hex."""

    def __init__(
        self,
        url: str,
        trust: Policy | None = None,
        *,
        image_ids: Iterable[bytes | str] = (),
        allow_any_image: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        headers: dict[str, str] | None = None,
        sealed: bool = False,
    ) -> None:
        super().__init__(trust, image_ids, allow_any_image, sealed)
        self._first_contact = threading.Lock()  # threads sharing a client attest once
        self._http = httpx.Client(base_url=url, timeout=timeout, transport=transport, headers=headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def attest(self, signer: str | None = None) -> Attested:
        """Fetch and verify a fresh attestation (new nonce) and its manifest; it becomes the cached one.
        `signer` (0x address): the enclave that signs as it, kept beside the cached one."""
        nonce = new_nonce()
        params = {"nonce": nonce.hex()} | ({"signer": signer} if signer else {})
        answer = self._http.get("/attestation", params=params, headers=_CBOR)
        document, verified, at = check_document(_attestation(answer, signer), nonce, self._trust)
        manifest = bind_manifest(verified, _content(self._http.get("/models")))
        if self._sealed and signer is None:  # the gateway's key must be the attested one before sealing
            keys = _content(self._http.get(GATEWAY_PATH, headers=KEYS_HEADERS))
            self._key_config = bound_key_config(verified, keys)
        return self._keep(Attested(document, verified, manifest, nonce, at), signer)

    def _post(self, path: str, body: bytes) -> tuple[bytes, bytes | None]:
        """POST `body` to `path`, sealed to the attested key when the client seals; the answer's body and
        the salt its receipt commits with (None when sent in clear)."""
        if not self._sealed:
            return _content(self._http.post(path, content=body, headers=_JSON)), None
        self.attestation  # noqa: B018 - the key configuration is checked when attesting
        assert self._key_config is not None
        exchange = seal_request(self._key_config, path, body)
        answer = self._http.post(GATEWAY_PATH, content=exchange.enc_request, headers=REQUEST_HEADERS)
        return exchange.open(answer.status_code, answer.content), exchange.salt

    @property
    def attestation(self) -> Attested:
        """The verified enclave (attesting on first use)."""
        if self._attested is None:
            with self._first_contact:
                if self._attested is None:
                    self.attest()
        assert self._attested is not None
        return self._attested

    def _checked(self, check: Callable[[Attested, bool], T]) -> T:
        try:
            return check(self.attestation, False)
        except KeyChanged as changed:
            return check(self._attested_signer(changed.signer), True)

    def _attested_signer(self, signer: str | None) -> Attested:
        """The verified enclave that signs as `signer`: known, or attested now. A sealing client attests
        afresh instead: its requests are sealed to one enclave's key, and it must follow a new one."""
        if self._sealed or signer is None:
            return self.attest()
        return self._known(signer) or self.attest(signer)

    def infer(self, model: str, inputs: Any, *, request_id: bytes | str | None = None) -> InferResult:
        """POST /infer; the outputs (numpy arrays by name) once the receipt verifies. Inputs: {name: array},
        tensor objects [{"name", "data", ...}], or a one-input model's (nested) array."""
        self.attestation  # noqa: B018 - attest before sending anything
        request = infer_body(model, inputs, request_id)
        body = orjson.dumps(request)
        content, salt = self._post("/infer", body)
        sent = orjson.loads(body)
        return self._checked(
            lambda att, final: check_infer(att, self._trust, sent, content, final=final, salt=salt)
        )

    def _generate(
        self, path: str, model: str | None, fields: dict[str, Any], options: dict[str, Any]
    ) -> Completion:
        body = llm_body(self.attestation.manifest, model, fields, options)
        content, salt = self._post(path, body)
        return self._checked(
            lambda att, final: check_completion(att, self._trust, body, content, final=final, salt=salt)
        )

    def chat(self, messages: list[dict[str, Any]], *, model: str | None = None, **options: Any) -> Completion:
        """POST /v1/chat/completions (OpenAI options: max_tokens, temperature, ...); model defaults to the
        attested manifest's LLM. The text (`.text`, or str()) only once its receipt verifies."""
        return self._generate("/v1/chat/completions", model, {"messages": messages}, options)

    def complete(self, prompt: str, *, model: str | None = None, **options: Any) -> Completion:
        """POST /v1/completions; like `chat`."""
        return self._generate("/v1/completions", model, {"prompt": prompt}, options)

    def chat_stream(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **options: Any
    ) -> TextStream:
        """A streamed chat completion: iterating yields text only as far as a verified checkpoint or the
        final receipt vouches for it (every 32 tokens by default); `.completion` once it ended."""
        return self._stream("/v1/chat/completions", model, {"messages": messages}, options)

    def complete_stream(self, prompt: str, *, model: str | None = None, **options: Any) -> TextStream:
        """A streamed text completion; like `chat_stream`."""
        return self._stream("/v1/completions", model, {"prompt": prompt}, options)

    def _stream(
        self, path: str, model: str | None, fields: dict[str, Any], options: dict[str, Any]
    ) -> TextStream:
        if self._sealed:
            raise ValueError(SEALED_STREAMS)
        body = llm_body(self.attestation.manifest, model, fields, options, stream=True)
        verifier = StreamVerifier(self._trust, body)
        return TextStream(verifier, self._pieces(path, body, verifier))

    def _pieces(self, path: str, body: bytes, verifier: StreamVerifier) -> Iterator[str]:
        with self._http.stream("POST", path, content=body, headers=_JSON) as answer:
            if answer.is_error:
                raise server_error(answer.status_code, answer.read())
            for chunk in answer.iter_bytes():
                verifier.feed(chunk)
                if text := self._checked(lambda att, final: verifier.release(att, final=final)):
                    yield text
        verifier.feed(b"", ended=True)
        if text := self._checked(lambda att, final: verifier.release(att, final=final)):
            yield text
        verifier.result()

    def verify_openai(self, response: Any, request_body: bytes | None = None) -> Completion:
        """Verify a completion obtained with the `openai` client against this client's attested enclave:
        pass `client.chat.completions.with_raw_response.create(...)` (or its `.http_response`); the
        request bytes are taken from it unless given."""
        request, content = openai_exchange(response, request_body)
        return self._checked(
            lambda att, final: check_completion(att, self._trust, request, content, final=final)
        )


def verify_openai(response: Any, client: Client, request_body: bytes | None = None) -> Completion:
    """`client.verify_openai(response, request_body)`: see there."""
    return client.verify_openai(response, request_body)


class AsyncClient(_Base):
    """The asyncio twin of Client: same arguments, same checks, awaitable methods."""

    def __init__(
        self,
        url: str,
        trust: Policy | None = None,
        *,
        image_ids: Iterable[bytes | str] = (),
        allow_any_image: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
        sealed: bool = False,
    ) -> None:
        super().__init__(trust, image_ids, allow_any_image, sealed)
        self._first_contact = asyncio.Lock()  # concurrent first requests attest once
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, transport=transport, headers=headers)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def attest(self, signer: str | None = None) -> Attested:
        nonce = new_nonce()
        params = {"nonce": nonce.hex()} | ({"signer": signer} if signer else {})
        answer = await self._http.get("/attestation", params=params, headers=_CBOR)
        document, verified, at = check_document(_attestation(answer, signer), nonce, self._trust)
        manifest = bind_manifest(verified, _content(await self._http.get("/models")))
        if self._sealed and signer is None:  # the gateway's key must be the attested one before sealing
            keys = _content(await self._http.get(GATEWAY_PATH, headers=KEYS_HEADERS))
            self._key_config = bound_key_config(verified, keys)
        return self._keep(Attested(document, verified, manifest, nonce, at), signer)

    async def _post(self, path: str, body: bytes) -> tuple[bytes, bytes | None]:
        """As Client._post: sealed to the attested key when the client seals."""
        if not self._sealed:
            return _content(await self._http.post(path, content=body, headers=_JSON)), None
        await self.attestation()
        assert self._key_config is not None
        exchange = seal_request(self._key_config, path, body)
        answer = await self._http.post(GATEWAY_PATH, content=exchange.enc_request, headers=REQUEST_HEADERS)
        return exchange.open(answer.status_code, answer.content), exchange.salt

    async def attestation(self) -> Attested:
        """The verified enclave (attesting on first use)."""
        if self._attested is None:
            async with self._first_contact:
                if self._attested is None:
                    await self.attest()
        assert self._attested is not None
        return self._attested

    async def _checked(self, check: Callable[[Attested, bool], T]) -> T:
        try:
            return check(await self.attestation(), False)
        except KeyChanged as changed:
            return check(await self._attested_signer(changed.signer), True)

    async def _attested_signer(self, signer: str | None) -> Attested:
        """As Client._attested_signer."""
        if self._sealed or signer is None:
            return await self.attest()
        return self._known(signer) or await self.attest(signer)

    async def infer(self, model: str, inputs: Any, *, request_id: bytes | str | None = None) -> InferResult:
        await self.attestation()
        body = orjson.dumps(infer_body(model, inputs, request_id))
        content, salt = await self._post("/infer", body)
        sent = orjson.loads(body)
        return await self._checked(
            lambda att, final: check_infer(att, self._trust, sent, content, final=final, salt=salt)
        )

    async def _generate(
        self, path: str, model: str | None, fields: dict[str, Any], options: dict[str, Any]
    ) -> Completion:
        body = llm_body((await self.attestation()).manifest, model, fields, options)
        content, salt = await self._post(path, body)
        return await self._checked(
            lambda att, final: check_completion(att, self._trust, body, content, final=final, salt=salt)
        )

    async def chat(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **options: Any
    ) -> Completion:
        return await self._generate("/v1/chat/completions", model, {"messages": messages}, options)

    async def complete(self, prompt: str, *, model: str | None = None, **options: Any) -> Completion:
        return await self._generate("/v1/completions", model, {"prompt": prompt}, options)

    async def chat_stream(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **options: Any
    ) -> AsyncTextStream:
        return await self._stream("/v1/chat/completions", model, {"messages": messages}, options)

    async def complete_stream(
        self, prompt: str, *, model: str | None = None, **options: Any
    ) -> AsyncTextStream:
        return await self._stream("/v1/completions", model, {"prompt": prompt}, options)

    async def _stream(
        self, path: str, model: str | None, fields: dict[str, Any], options: dict[str, Any]
    ) -> AsyncTextStream:
        if self._sealed:
            raise ValueError(SEALED_STREAMS)
        body = llm_body((await self.attestation()).manifest, model, fields, options, stream=True)
        verifier = StreamVerifier(self._trust, body)
        return AsyncTextStream(verifier, self._pieces(path, body, verifier))

    async def _pieces(self, path: str, body: bytes, verifier: StreamVerifier) -> AsyncIterator[str]:
        async with self._http.stream("POST", path, content=body, headers=_JSON) as answer:
            if answer.is_error:
                raise server_error(answer.status_code, await answer.aread())
            async for chunk in answer.aiter_bytes():
                verifier.feed(chunk)
                if text := await self._checked(lambda att, final: verifier.release(att, final=final)):
                    yield text
        verifier.feed(b"", ended=True)
        if text := await self._checked(lambda att, final: verifier.release(att, final=final)):
            yield text
        verifier.result()

    async def verify_openai(self, response: Any, request_body: bytes | None = None) -> Completion:
        request, content = openai_exchange(response, request_body)
        return await self._checked(
            lambda att, final: check_completion(att, self._trust, request, content, final=final)
        )
