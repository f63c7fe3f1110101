"""The Oblivious HTTP gateway (RFC 9458, found as RFC 9540 says): requests sealed to the attested key.

`GET /.well-known/ohttp-gateway` serves the key configuration (application/ohttp-keys) of the X25519 key
whose public half the attestation binds (protocol/binding.py). `POST` of a `message/ohttp-req` is opened
here, inside the enclave; the Binary HTTP request in it goes to any route of this server (/infer, V2, /v1)
as an inner request, and its answer goes back sealed as `message/ohttp-res`. The host, the vsock proxy and
any relay see ciphertext, its size and timing only.

An inner request is signed over salted commitments (protocol/sealing.py) so its public receipt does not
reveal a guessable input or output: the salt is the inner header `Verinfer-Input-Salt`, or one chosen here
and returned in the sealed answer. Inner requests are not written to the access log.

Replays (RFC 9458 section 6.5): the encapsulated key `enc` of every request that decrypted is kept for
`window_s`; a repeat is refused. An inner `Date` is accepted only while a replay of its request would still
be recognised (ReplayGuard.accepts_date), so a request that carries a Date cannot be replayed at all.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson

from protocol import bhttp, ohttp
from protocol.edge import SEALED_SALT, ASGIApp, FastRoute, Headers, Message, error_body
from protocol.errors import ProtocolError, RequestError
from protocol.hpke import SealingKey
from protocol.sealing import SALT_HEADER, SALT_SIZE

log = logging.getLogger("verinfer.enclave")
GATEWAY_PATH = "/.well-known/ohttp-gateway"
_REQUEST_TYPE = ohttp.REQUEST_MEDIA_TYPE.encode()
_RESPONSE_TYPE = ohttp.RESPONSE_MEDIA_TYPE.encode()
DEFAULT_REPLAY_WINDOW_S = 600.0
DEFAULT_REPLAY_ENTRIES = 200_000
DEFAULT_DATE_SKEW_S = 60.0  # how far ahead of the gateway's clock a client's Date may be
_SALT_HEADER = SALT_HEADER.encode()
PROBLEM_MEDIA_TYPE = "application/problem+json"
_KEY_PROBLEM = "https://iana.org/assignments/http-problem-types#ohttp-key"
_DATE_PROBLEM = "https://iana.org/assignments/http-problem-types#date"
# Framing of the outer exchange: never forwarded into an inner request or out of an inner answer.
_HOP_BY_HOP = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"host"})


def key_id_of(public_key: bytes) -> int:
    """The configuration's 8-bit key id: the first byte of sha256(public key), so it names the key."""
    return hashlib.sha256(public_key).digest()[0]


class ReplayGuard:
    """The `enc` of every accepted request for `window_s`, at most `max_entries` of them, and which
    request dates are still acceptable.

    A `Date` is accepted from `window_s - skew_s` in the past to `skew_s` in the future, so a request is
    never accepted again after its `enc` is forgotten: it would have to arrive more than `window_s` after
    the first, when its date is too old. When the bound evicts an entry before its window ended, dates up to
    that entry's arrival plus `skew_s` are refused too, since their replays could no longer be recognised.
    """

    def __init__(
        self,
        window_s: float = DEFAULT_REPLAY_WINDOW_S,
        max_entries: int = DEFAULT_REPLAY_ENTRIES,
        clock: Callable[[], float] = time.time,
        skew_s: float = DEFAULT_DATE_SKEW_S,
    ) -> None:
        if not 0 <= skew_s < window_s:
            raise ValueError("the date skew must be shorter than the replay window")
        self.window_s = window_s
        self.skew_s = skew_s
        self.max_entries = max_entries
        self.clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._evicted_until = 0.0  # arrival time of the youngest entry evicted before its window ended

    def accepts_date(self, when: float, now: float) -> bool:
        """Whether a request dated `when` may be served now: a replay of it would still be recognised."""
        oldest = max(now - (self.window_s - self.skew_s), self._evicted_until + self.skew_s)
        return oldest <= when <= now + self.skew_s

    def admit(self, enc: bytes) -> bool:
        """Record `enc`; False if it was seen within the window (a replay)."""
        now = self.clock()
        self._expire(now)
        if enc in self._seen:
            return False
        self._seen[enc] = now
        if len(self._seen) > self.max_entries:
            _, arrived = self._seen.popitem(last=False)
            self._evicted_until = max(self._evicted_until, arrived)
        return True

    def _expire(self, now: float) -> None:
        limit = now - self.window_s
        while self._seen:
            enc, arrived = next(iter(self._seen.items()))
            if arrived >= limit:
                return
            del self._seen[enc]


class GatewayRefusal(Exception):
    """A refusal of the outer request (answered in clear as application/problem+json, RFC 9457): it can
    say nothing about the sealed content, which was not or could not be read."""

    def __init__(self, code: str, title: str, kind: str = "about:blank") -> None:
        super().__init__(title)
        self.status = 400
        self.code = code
        self.title = title
        self.kind = kind

    def body(self) -> bytes:
        return orjson.dumps({"type": self.kind, "title": self.title, "code": self.code})


class SealedGateway:
    """Opens sealed requests with the enclave's X25519 key and answers them through this server's routes.

    `fast_route` (the edge's inference routes) answers an inner /infer or V2 request directly, as the
    edge would; any other inner request goes through `inner`, an ASGI app (the edge without access log).
    """

    def __init__(
        self,
        key: SealingKey,
        inner: ASGIApp,
        *,
        fast_route: FastRoute | None = None,
        fast_headers: Sequence[tuple[bytes, bytes]] = (),
        replay: ReplayGuard | None = None,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.gateway = ohttp.Gateway(key, key_id_of(key.public_key))
        self.inner = inner
        self.fast_route = fast_route
        self.fast_headers = list(fast_headers)
        self.replay = replay or ReplayGuard()
        self.on_refusal = on_refusal

    @property
    def keys_body(self) -> bytes:
        return self.gateway.keys_body

    async def handle(
        self, body: bytes, headers: Headers, _salt: bytes | None = None
    ) -> tuple[int, bytes, Headers]:
        """POST /.well-known/ohttp-gateway as the edge's fast handler: (body, headers) -> reply."""
        media_type = next((value for name, value in headers if name == b"content-type"), b"")
        if media_type.split(b";")[0].strip().lower() != _REQUEST_TYPE:
            error = RequestError(415, "unsupported_media_type", f"send {ohttp.REQUEST_MEDIA_TYPE}")
            return error.status, error_body(error, v2=False), []
        try:
            sealed = await self.answer(body)
        except GatewayRefusal as refusal:
            if self.on_refusal is not None:
                self.on_refusal(refusal.code)
            return refusal.status, refusal.body(), [(b"content-type", PROBLEM_MEDIA_TYPE.encode())]
        return 200, sealed, [(b"content-type", _RESPONSE_TYPE), (b"cache-control", b"no-store")]

    async def answer(self, enc_request: bytes) -> bytes:
        """The encapsulated answer to an encapsulated request; GatewayRefusal when it cannot be opened."""
        try:
            inner_bytes, sealer = self.gateway.decapsulate(enc_request)
        except ohttp.OhttpError as error:
            kind = _KEY_PROBLEM if error.code in ("unknown_key", "unsupported_suite") else "about:blank"
            raise GatewayRefusal(
                "sealed_request_rejected", f"cannot open the request: {error}", kind
            ) from error
        if not self.replay.admit(sealer.enc):
            raise GatewayRefusal("replayed_request", "this encapsulated request was already answered")
        response = await self._inner_answer(inner_bytes)
        try:
            encoded = bhttp.encode_response(response)
        except ProtocolError:  # a header no Binary HTTP message may carry: a bug, answered as one
            log.exception("an inner answer cannot be encoded as Binary HTTP")
            encoded = bhttp.encode_response(
                _json_response(500, {"code": "internal", "message": "internal error"})
            )
        return sealer.seal(encoded)

    async def _inner_answer(self, inner_bytes: bytes) -> bhttp.BhttpResponse:
        try:
            request = bhttp.decode_request(inner_bytes)
            salt, headers = _salt(request.headers)
            _check_date(headers, self.replay)
            _check_expect(headers)
        except _InnerRefusal as refusal:
            return refusal.response
        except ProtocolError as error:
            return _json_response(400, {"code": "invalid_inner_request", "message": str(error)})
        status, out_headers, body = await self._dispatch(request, salt, headers)
        out_headers.append((_SALT_HEADER, ("0x" + salt.hex()).encode()))
        return bhttp.BhttpResponse(status=status, headers=tuple(out_headers), content=body)

    async def _dispatch(
        self, request: bhttp.BhttpRequest, salt: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        path, _, query = request.path.partition("?")
        handler = None if self.fast_route is None else self.fast_route(request.method, path)
        if handler is not None:
            status, reply, extra = await handler(request.content, headers, salt)
            # an Oblivious HTTP answer is one message: a deferred body is collected whole
            payload = reply if isinstance(reply, bytes) else b"".join([c async for c in reply.chunks])
            out = [*extra, *self.fast_headers]
            if not any(name == b"content-type" for name, _ in extra):
                out.append((b"content-type", b"application/json"))
            return status, out, payload
        return await self._asgi(request, path or "/", query, salt, headers)

    async def _asgi(
        self,
        request: bhttp.BhttpRequest,
        path: str,
        query: str,
        salt: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """An inner request to any other route, through the inner ASGI app; the whole answer (a stream
        too) is collected, since an Oblivious HTTP response is one message."""
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.scheme or "https",
            "path": path,
            "raw_path": path.encode("latin-1", "replace"),
            "query_string": query.encode("latin-1", "replace"),
            "root_path": "",
            "headers": [*headers, (b"content-length", b"%d" % len(request.content))],
            "server": ("enclave", 443),
            "client": None,
            SEALED_SALT: salt,
        }
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.content, "more_body": False}
            await asyncio.Event().wait()  # the inner client never leaves: the answer is sealed as a whole
            return {"type": "http.disconnect"}

        status = 500
        out_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers = [
                    (name.lower(), value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in _HOP_BY_HOP
                ]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.inner(scope, receive, send)
        return status, out_headers, b"".join(chunks)


class _InnerRefusal(Exception):
    """An inner request refused before it reaches a route; answered sealed, like any inner answer."""

    def __init__(self, response: bhttp.BhttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _json_response(
    status: int,
    body: dict[str, Any],
    media_type: bytes = b"application/json",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bhttp.BhttpResponse:
    return bhttp.BhttpResponse(
        status=status, headers=((b"content-type", media_type), *extra), content=orjson.dumps(body)
    )


def _salt(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The inner request's commitment salt (or a fresh one) and its other headers."""
    given = [value for name, value in headers if name == _SALT_HEADER]
    rest = [(name, value) for name, value in headers if name != _SALT_HEADER and name not in _HOP_BY_HOP]
    if not given:
        return os.urandom(SALT_SIZE), rest
    try:
        salt = bytes.fromhex(given[0].decode("ascii").removeprefix("0x"))
    except (UnicodeDecodeError, ValueError):
        salt = b""
    if len(given) != 1 or len(salt) != SALT_SIZE:
        raise _InnerRefusal(
            _json_response(
                400,
                {
                    "code": "invalid_salt",
                    "message": f"{SALT_HEADER} must be one 0x-hex value of {SALT_SIZE} bytes",
                },
            )
        )
    return salt, rest


@functools.lru_cache(maxsize=64)
def _date_seconds(value: bytes) -> float | None:
    """An HTTP date as Unix seconds, None if it is not one. Cached: concurrent clients send the same few
    values (one-second resolution), and parsing one costs more than the rest of the check."""
    try:
        return parsedate_to_datetime(value.decode("ascii")).timestamp()
    except (UnicodeDecodeError, ValueError, TypeError):
        return None


def _check_date(headers: list[tuple[bytes, bytes]], replay: ReplayGuard) -> None:
    """Refuse an inner Date outside the replay window (RFC 9458 section 6.5), with the gateway's Date."""
    dates = [value for name, value in headers if name == b"date"]
    if not dates:
        return
    now = replay.clock()
    when = _date_seconds(dates[0])
    if when is not None and replay.accepts_date(when, now):
        return
    gateway_date = format_datetime(datetime.fromtimestamp(now, UTC), usegmt=True).encode()
    raise _InnerRefusal(
        _json_response(
            400,
            {
                "type": _DATE_PROBLEM,
                "title": "date is outside the gateway's replay window",
                "code": "stale_date",
            },
            PROBLEM_MEDIA_TYPE.encode(),
            ((b"date", gateway_date),),
        )
    )


def _check_expect(headers: list[tuple[bytes, bytes]]) -> None:
    """An inner request cannot wait for a 100 (Continue): the whole request is already here (RFC 9458
    section 5)."""
    if any(name == b"expect" for name, _ in headers):
        raise _InnerRefusal(
            _json_response(417, {"code": "expectation_failed", "message": "Expect is not supported here"})
        )
