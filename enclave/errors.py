"""Client-facing errors: a stable code, a message, and the HTTP status they map to."""

from __future__ import annotations


class ApiError(Exception):
    """A request the service refuses. Always a 4xx: the server stays up and keeps serving."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)
