"""The protocol's error types. Every rejection a parser or validator makes is one of these, never a bare
ValueError/TypeError from deep inside a library, so callers (and fuzzers) can tell refusal from a bug."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Data that is not a valid protocol object: a receipt, tensor encoding, manifest or request."""


class RequestError(ProtocolError):
    """A request the service refuses, with a stable code and the HTTP status it maps to (always 4xx:
    the server stays up and keeps serving)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}  # e.g. Allow, Retry-After, WWW-Authenticate
        self.param = param  # the request field at fault, where the family's shape names it (OpenAI)


def bad_request(code: str, message: str) -> RequestError:
    return RequestError(400, code, message)


def not_found(code: str, message: str) -> RequestError:
    return RequestError(404, code, message)


def unprocessable(code: str, message: str) -> RequestError:
    return RequestError(422, code, message)
