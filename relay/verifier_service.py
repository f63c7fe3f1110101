"""`verinfer relay verifier`: the attestation verifier as a service (what a verifier enclave would run).

It verifies an enclave's attestation against the configured root and PCR policy and answers the signed
EIP-712 registration that anyone may then submit with registerEnclave. The document must be fresh: it must
carry a nonce this service chose. Two ways to get one there:

1. The caller fetches it (the default, and the only way for enclaves the service cannot or may not reach):
   POST /challenges answers a single-use nonce; the caller fetches the enclave's
   GET /attestation?nonce=<hex> and posts the document (or the whole JSON answer) with that nonce to
   POST /registrations. The nonce is consumed by that post, whatever the outcome.
2. The service fetches it, only from the enclave URLs it was started with (--enclave-allow): any other URL
   is refused (403 enclave_not_allowed) before any connection is made, so the service cannot be used to
   reach hosts on its network (SSRF).

Every request goes through protocol.edge.HttpEdge (body limit with 413 before buffering, X-Request-ID,
access log); every error is {"code", "message"}. /openapi.json documents the bodies, /docs renders them.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from starlette.concurrency import run_in_threadpool
from web3 import Web3

from attestation import Policy, VerifiedAttestation
from protocol.edge import AccessLog, HttpEdge, install_error_handlers
from protocol.errors import RequestError

from .registration import (
    NONCE_BYTES,
    RegistrationError,
    check_attestation,
    document_from,
    fetch_attestation_async,
    sign_registration,
)

DEFAULT_MAX_BODY = 64 * 1024  # a posted GET /attestation answer is under 16 KiB
DEFAULT_CHALLENGE_TTL_S = 60.0
DEFAULT_MAX_CHALLENGES = 10_000
DEFAULT_FETCH_DEADLINE_S = 10.0
MAX_CHAIN_ID = 2**256 - 1  # the registry's EIP-712 domain takes block.chainid, a uint256


# --- bodies -------------------------------------------------------------------------------------------------


_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def _address(value: str) -> str:
    digits = value[2:]
    if not _HEX_ADDRESS.match(value) or (
        digits not in (digits.lower(), digits.upper()) and not Web3.is_checksum_address(value)
    ):
        raise ValueError("must be a 0x-prefixed 20-byte hex address, with a valid checksum if mixed case")
    return value


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class AttestationAnswer(BaseModel):
    """The JSON object the enclave's GET /attestation answers; only `document` is used."""

    model_config = ConfigDict(extra="allow")
    document: str = Field(description="base64 COSE_Sign1 attestation document")


class RegistrationRequest(_Camel):
    """Either `attestation` with the `nonce` it was made for, or `enclave` (an allow-listed URL)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    chain_id: Annotated[
        int, Field(strict=True, ge=1, le=MAX_CHAIN_ID, description="EIP-155 chain id, 1 to 2**256 - 1")
    ]
    contract: Annotated[str, AfterValidator(_address), Field(description="the InferenceVerifier address")]
    attestation: str | AttestationAnswer | None = Field(
        default=None,
        description="base64 document, or the whole JSON answer of the enclave's GET /attestation?nonce=",
    )
    nonce: Annotated[str, Field(pattern=r"^(0x)?[0-9a-fA-F]{64}$")] | None = Field(
        default=None, description="the POST /challenges nonce the attestation was fetched with"
    )
    enclave: Annotated[str, Field(max_length=2048)] | None = Field(
        default=None, description="enclave base URL for the service to fetch from (--enclave-allow only)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> RegistrationRequest:
        if (self.attestation is None) == (self.enclave is None):
            raise ValueError("give either attestation (with nonce) or enclave")
        if self.attestation is not None and self.nonce is None:
            raise ValueError("attestation needs the nonce it was fetched with")
        if self.enclave is not None and self.nonce is not None:
            raise ValueError("nonce goes with attestation, not with enclave")
        return self


class RegistrationResponse(_Camel):
    """EnclaveRegistration signed by the verifier key: the arguments of registerEnclave."""

    enclave: str = Field(description="the enclave's address (keccak of its public key)")
    public_key: str = Field(description="0x hex, 64 bytes")
    image_id: str = Field(description="0x hex, keccak256(PCR0 || PCR1 || PCR2)")
    attestation_timestamp_ms: int
    user_data_hash: str = Field(description="0x hex, keccak256 of the document's user_data")
    encryption_key: str = Field(
        description="0x hex: the X25519 key user_data[32:64] binds (zero when user_data is 32 bytes)"
    )
    signature: str = Field(description="0x hex, 65 bytes r || s || v")


class ChallengeResponse(_Camel):
    nonce: str = Field(description="32 bytes, hex: fetch GET /attestation?nonce= with it")
    expires_in_s: float = Field(description="post the document within this many seconds")


class Identity(BaseModel):
    verifier: str
    root: str
    simulated_root: bool
    pcrs: dict[str, str]
    allowed_enclaves: list[str]
    challenge_ttl_s: float
    max_body: int


class ErrorBody(BaseModel):
    code: str
    message: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


# --- challenges and the allow-list -------------------------------------------------------------------------


class ChallengeStore:
    """Nonces issued by POST /challenges: in memory, each valid once and for `ttl_s`, at most `max_count`
    outstanding (when full, new challenges are refused until old ones expire or are used)."""

    def __init__(self, ttl_s: float, max_count: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl_s > 0 or max_count < 1:
            raise ValueError("the challenge TTL and the maximum count must be positive")
        self.ttl_s = ttl_s
        self.max_count = max_count
        self.clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()  # oldest first (one TTL for all)
        self._lock = threading.Lock()

    def _purge(self, now: float) -> None:
        while self._expiry:
            nonce, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                return
            del self._expiry[nonce]

    def issue(self) -> bytes:
        with self._lock:
            now = self.clock()
            self._purge(now)
            if len(self._expiry) >= self.max_count:
                retry = math.ceil(next(iter(self._expiry.values())) - now)
                raise RequestError(
                    503,
                    "too_many_challenges",
                    f"{self.max_count} challenges are outstanding; retry later",
                    headers={"Retry-After": str(max(1, retry))},
                )
            nonce = os.urandom(NONCE_BYTES)
            self._expiry[nonce] = now + self.ttl_s
            return nonce

    def consume(self, nonce: bytes) -> bool:
        """True once for a nonce issued here and not yet expired; it is forgotten either way."""
        with self._lock:
            now = self.clock()
            self._purge(now)
            expiry = self._expiry.pop(nonce, None)
            return expiry is not None and expiry > now

    def __len__(self) -> int:
        return len(self._expiry)


def normalize_enclave_url(text: str) -> str:
    """scheme://host[:port][/path] with the host lowercased, default ports and trailing slashes dropped:
    the form allow-list entries and requested URLs are compared in. ValueError for anything else."""
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"invalid URL {text!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"not an http(s) URL: {text!r}")
    if url.userinfo or url.query or url.fragment:
        raise ValueError(f"an enclave URL has no user, query or fragment: {text!r}")
    return f"{url.scheme}://{url.netloc.decode('ascii')}{url.path.rstrip('/')}"


# --- the app ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifierService:
    """What the routes need: the signing key, the policy, the allow-list and the challenges."""

    verifier: LocalAccount
    policy: Policy
    allowed: tuple[str, ...]
    challenges: ChallengeStore
    challenge_ttl_s: float
    fetch_deadline_s: float
    max_body: int

    async def posted(self, attestation: str | AttestationAnswer, nonce_hex: str) -> VerifiedAttestation:
        try:
            document = document_from(
                attestation if isinstance(attestation, str) else attestation.document,
                "the posted attestation",
            )
        except RegistrationError as exc:
            raise RequestError(400, "invalid_request", str(exc)) from exc
        nonce = bytes.fromhex(nonce_hex.removeprefix("0x"))
        if not self.challenges.consume(nonce):  # consumed before verifying: one try per nonce
            raise RequestError(
                422,
                "invalid_nonce",
                "the nonce is not an unexpired, unused challenge of this verifier (POST /challenges)",
            )
        return await run_in_threadpool(check_attestation, document, self.policy, nonce, "the posted document")

    async def fetched(self, enclave: str) -> VerifiedAttestation:
        try:
            url = normalize_enclave_url(enclave)
        except ValueError as exc:
            raise RequestError(400, "invalid_request", f"enclave: {exc}") from exc
        if url not in self.allowed:  # before any connection: no reaching hosts on our network (SSRF)
            raise RequestError(
                403,
                "enclave_not_allowed",
                f"this verifier fetches only from its --enclave-allow URLs, not {url}; "
                "post the attestation with a POST /challenges nonce instead",
            )
        nonce = os.urandom(NONCE_BYTES)
        document = await fetch_attestation_async(url, nonce, timeout=self.fetch_deadline_s)
        return await run_in_threadpool(check_attestation, document, self.policy, nonce, url)


def _service(request: Request) -> VerifierService:
    service: VerifierService = request.app.state.verifier_service
    return service


async def identity(request: Request) -> Identity:
    """Who signs, under which root and PCR policy, and which enclaves this service may fetch from."""
    service = _service(request)
    return Identity(
        verifier=service.verifier.address,
        root=service.policy.root.label,
        simulated_root=not service.policy.root.is_aws,
        pcrs={str(i): v.hex() for i, v in service.policy.expected_pcrs.items()},
        allowed_enclaves=list(service.allowed),
        challenge_ttl_s=service.challenge_ttl_s,
        max_body=service.max_body,
    )


async def challenge(request: Request) -> ChallengeResponse:
    """A single-use nonce: fetch the enclave's GET /attestation?nonce= with it, then post the document
    to /registrations within `expiresInS`."""
    service = _service(request)
    return ChallengeResponse(nonce=service.challenges.issue().hex(), expires_in_s=service.challenge_ttl_s)


async def registrations(request: Request, body: RegistrationRequest) -> RegistrationResponse:
    """Verify the attestation (posted with a challenge nonce, or fetched from an allow-listed enclave)
    and sign the enclave's registration for `chainId` and `contract`."""
    service = _service(request)
    try:
        if body.attestation is not None:
            attested = await service.posted(body.attestation, body.nonce or "")
        else:
            attested = await service.fetched(body.enclave or "")
    except RegistrationError as exc:
        raise RequestError(422, "attestation_rejected", str(exc)) from exc
    registration = sign_registration(
        service.verifier, attested, chain_id=body.chain_id, contract=body.contract
    )
    return RegistrationResponse.model_validate(registration.to_json())


def create_verifier_app(
    verifier: LocalAccount,
    policy: Policy,
    *,
    enclave_allow: Iterable[str] = (),
    max_body: int = DEFAULT_MAX_BODY,
    challenge_ttl_s: float = DEFAULT_CHALLENGE_TTL_S,
    max_challenges: int = DEFAULT_MAX_CHALLENGES,
    fetch_deadline_s: float = DEFAULT_FETCH_DEADLINE_S,
    access_log: AccessLog | None = None,
) -> HttpEdge:
    """The service behind its HttpEdge. ValueError for an allow-list entry that is not an http(s) URL."""
    app = FastAPI(
        title="verinfer attestation verifier",
        summary="verifies enclave attestations and signs EIP-712 enclave registrations",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.verifier_service = VerifierService(
        verifier=verifier,
        policy=policy,
        allowed=tuple(sorted({normalize_enclave_url(url) for url in enclave_allow})),
        challenges=ChallengeStore(challenge_ttl_s, max_challenges),
        challenge_ttl_s=challenge_ttl_s,
        fetch_deadline_s=fetch_deadline_s,
        max_body=max_body,
    )
    install_error_handlers(app)
    app.add_api_route("/", identity, methods=["GET"], response_model=Identity)
    app.add_api_route(
        "/challenges",
        challenge,
        methods=["POST"],
        status_code=201,
        response_model=ChallengeResponse,
        responses=_errors(413, 503),
    )
    app.add_api_route(
        "/registrations",
        registrations,
        methods=["POST"],
        response_model=RegistrationResponse,
        responses=_errors(400, 403, 413, 422),
    )
    return HttpEdge(app, max_body=max_body, access_log=access_log)
