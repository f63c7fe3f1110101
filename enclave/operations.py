"""What `serve` needs around the app to be operated: CORS for browser callers, a listening socket bound
before anything claims to serve on it, and a uvicorn server that reports only once it really serves."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

import uvicorn
from starlette.middleware.cors import CORSMiddleware

from protocol.edge import ASGIApp

# Read by browser code: the request id (to quote in a report) and the simulation marker.
EXPOSED_HEADERS = ("X-Request-ID", "X-Verinfer-Simulated", "Inference-Header-Content-Length")
PREFLIGHT_MAX_AGE_S = 600


def with_cors(app: ASGIApp, origins: Sequence[str]) -> ASGIApp:
    """`app` answering CORS preflights and marking answers for `origins` ("*" for any); `app` itself
    without origins. Outermost, around HttpEdge: the edge answers POST /infer before any inner
    middleware would see it. No credentials: every route is public or takes a bearer token."""
    if not origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=list(EXPOSED_HEADERS),
        max_age=PREFLIGHT_MAX_AGE_S,
    )


def tcp_listener(host: str, port: int) -> socket.socket:
    """A bound, listening socket (port 0: the kernel picks one; getsockname() says which)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def http_url(sock: socket.socket) -> str:
    """The URL a listening TCP socket serves, with the port it really got."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


class ReportingServer(uvicorn.Server):
    """uvicorn's server, calling `on_serving` once startup is complete: the app's lifespan has run and the
    sockets accept connections, so a line logged there is true when a reader acts on it."""

    def __init__(self, config: uvicorn.Config, on_serving: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_serving = on_serving

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.on_serving()
