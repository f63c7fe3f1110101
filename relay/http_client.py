"""Outbound HTTP for the relay, its CLI and the verifier service: the one place every outbound call goes.

httpx's timeouts apply to each operation (connect, each read, each write), so a peer that drips a byte
every few hundred milliseconds never trips them and holds the caller forever, and `response.content`
buffers whatever the peer sends. Every call made here has instead:

- a total deadline: wall clock for connect + send + receiving the whole response (headers included, so
  slowly dripped headers end the call too), enforced as one timeout around the whole exchange;
- a response size cap: the body is streamed and the call stops as soon as it passes the cap (a declared
  Content-Length over the cap is refused before the body is read). Responses are asked for without
  content coding (Accept-Encoding: identity) and coded ones are refused, so the cap counts the bytes that
  are kept in memory: no decompression bomb can get past it;
- no redirects followed (an allow-listed URL cannot send the caller elsewhere);
- one error type, OutboundError, whose message says what happened ("... exceeded the 10.0 s deadline",
  "... response larger than 1048576 bytes", "... cannot connect: ...").

`request_async` is the implementation (the verifier service calls it from its event loop). `request`, for
the synchronous relay runner and CLI, runs the same coroutine on a private event loop: a synchronous httpx
client has no way to bound the total time while headers arrive, so both variants share one code path and
therefore the same checks.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
import orjson

from .errors import RelayError

DEFAULT_DEADLINE_S = 10.0
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_CONNECT_TIMEOUT_S = 5.0

Kind = Literal["deadline", "too_large", "connect", "network", "status", "protocol", "invalid_url"]


T = TypeVar("T")


class OutboundError(RelayError):
    """An outbound call that did not produce a usable response. `kind` says which way it failed; the
    message names the method and URL (never headers, so a bearer token cannot end up in a log)."""

    def __init__(self, kind: Kind, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True, slots=True)
class Limits:
    """What one outbound call may take: total wall-clock time and response body size."""

    deadline_s: float = DEFAULT_DEADLINE_S
    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.deadline_s > 0 or not self.connect_timeout_s > 0:
            raise ValueError("deadline_s and connect_timeout_s must be positive")
        if self.max_bytes < 0:
            raise ValueError("max_bytes must not be negative")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete response, read within the limits."""

    method: str
    url: str
    status: int
    headers: httpx.Headers
    content: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError as exc:
            raise OutboundError(
                "protocol", f"{self.method} {self.url}: the response is not JSON ({exc})", status=self.status
            ) from exc

    def raise_for_status(self) -> HttpResponse:
        """This response if it is a 2xx, else OutboundError(kind="status") quoting the start of the body."""
        if not self.ok:
            raise OutboundError(
                "status",
                f"{self.method} {self.url} answered {self.status}: {self.text[:200]}",
                status=self.status,
            )
        return self


_ssl_context: ssl.SSLContext | None = None


def _ssl() -> ssl.SSLContext:
    """One CA bundle load per process (httpx would otherwise load it again for every client)."""
    global _ssl_context  # noqa: PLW0603
    if _ssl_context is None:
        _ssl_context = httpx.create_ssl_context()
    return _ssl_context


def _display(url: httpx.URL) -> str:
    """The URL as error messages show it: without the query (nonces, cursors) or any userinfo."""
    return str(url.copy_with(query=None, fragment=None, username=None, password=None))


async def request_async(
    method: str,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    json: Any = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> HttpResponse:
    """One HTTP exchange within `limits`; OutboundError for anything but a complete response. `content` is
    a body sent byte for byte (where the bytes are hashed, as an LLM request's are), instead of `json`."""
    limits = limits or Limits()
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise OutboundError("invalid_url", f"invalid URL {url!r}: {exc}") from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise OutboundError("invalid_url", f"not an http(s) URL: {url!r}")
    what = f"{method} {_display(target)}"
    try:
        async with asyncio.timeout(limits.deadline_s):
            return await _exchange(
                method,
                target,
                what,
                params=params,
                json=json,
                content=content,
                headers=headers,
                limits=limits,
            )
    except TimeoutError:
        # Also the per-operation timeouts below, which are never longer than the deadline.
        raise OutboundError(
            "deadline", f"{what} exceeded the {float(limits.deadline_s)} s deadline"
        ) from None


async def _exchange(
    method: str,
    target: httpx.URL,
    what: str,
    *,
    params: Mapping[str, str] | None,
    json: Any,
    content: bytes | None,
    headers: Mapping[str, str] | None,
    limits: Limits,
) -> HttpResponse:
    timeout = httpx.Timeout(limits.deadline_s, connect=min(limits.connect_timeout_s, limits.deadline_s))
    sent_headers = {**(headers or {}), "Accept-Encoding": "identity"}
    try:
        async with (
            httpx.AsyncClient(verify=_ssl(), timeout=timeout, follow_redirects=False) as client,
            client.stream(
                method, target, params=params, json=json, content=content, headers=sent_headers
            ) as response,
        ):
            coding = response.headers.get("content-encoding", "identity").strip().lower()
            if coding not in ("", "identity"):
                raise OutboundError(
                    "protocol", f"{what}: the response has content coding {coding!r} (asked for identity)"
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_bytes:
                raise OutboundError(
                    "too_large",
                    f"{what}: response larger than {limits.max_bytes} bytes (declares {int(declared)})",
                    status=response.status_code,
                )
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > limits.max_bytes:
                    raise OutboundError(
                        "too_large",
                        f"{what}: response larger than {limits.max_bytes} bytes",
                        status=response.status_code,
                    )
            return HttpResponse(method, _display(target), response.status_code, response.headers, bytes(body))
    except httpx.ConnectTimeout as exc:
        raise OutboundError(
            "connect", f"{what}: cannot connect within {float(timeout.connect or 0)} s"
        ) from exc
    except httpx.TimeoutException as exc:
        raise TimeoutError from exc  # reported as the deadline by request_async
    except httpx.ConnectError as exc:
        raise OutboundError("connect", f"{what}: cannot connect: {exc or type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise OutboundError("network", f"{what}: {type(exc).__name__}: {exc}") from exc


def request(
    method: str,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    json: Any = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> HttpResponse:
    """`request_async` for synchronous callers (not from inside a running event loop)."""
    return run_blocking(
        request_async(method, url, params=params, json=json, content=content, headers=headers, limits=limits)
    )


def run_blocking(call: Coroutine[Any, Any, T]) -> T:
    """Run an outbound coroutine to completion from synchronous code; refuses inside an event loop, where
    blocking would stall every other request."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        call.close()
        raise RuntimeError("relay.http_client.request blocks: inside an event loop, await request_async")
    return asyncio.run(call)
