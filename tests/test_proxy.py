"""The parent-side proxy forwards HTTP byte for byte (TCP upstream here; vsock where the kernel has it)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from enclave.vsock import vsock_listener
from verinfer.processes import VERINFER, free_port, stop

from .test_outbound_http import RawServer, Respond, drip, endless


def test_proxy_forwards_to_the_server(server: str) -> None:
    port = free_port()
    upstream = server.removeprefix("http://")
    process = subprocess.Popen([VERINFER, "proxy", "--listen", f"127.0.0.1:{port}", "--upstream", upstream])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/infer",
                    json={"model": "iris-mlp", "inputs": [[5.1, 3.5, 1.4, 0.2]]},
                )
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response.status_code == 200 and "receipt" in response.json()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:  # keep-alive over the proxy
            assert all(client.get("/v2/health/ready").status_code == 200 for _ in range(20))
    finally:
        stop(process)


def test_proxy_usage_errors() -> None:
    result = subprocess.run(
        [VERINFER, "proxy", "--listen", "nope", "--upstream", "x:1"], capture_output=True, check=False
    )
    assert result.returncode == 2 and b"HOST:PORT" in result.stderr


def test_vsock_listener_is_vsock_or_fails_clearly() -> None:
    try:
        sock = vsock_listener(free_port())
    except OSError as exc:  # no vsock transport in this kernel: the error must say so, not hang
        assert exc.errno is not None or "AF_VSOCK" in str(exc)
        return
    with sock:
        assert sock.family == socket.AF_VSOCK


def test_nitro_mode_refuses_to_start_without_dev_nsm() -> None:
    import os

    if os.path.exists("/dev/nsm"):
        pytest.skip("this machine is a Nitro enclave")
    result = subprocess.run(
        [VERINFER, "serve", "--nsm", "nitro", "--port", str(free_port())],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert b"/dev/nsm does not exist" in result.stderr
    assert b"serving" not in result.stderr


# --- per-connection bounds, against real loopback upstreams ---------------------------------------------


@contextmanager
def running_proxy(upstream_port: int, *options: str) -> Iterator[tuple[int, list[str]]]:
    """`verinfer proxy` to 127.0.0.1:upstream_port; yields its port and the lines it logs (live)."""
    port = free_port()
    process = subprocess.Popen(
        [
            VERINFER,
            "proxy",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"127.0.0.1:{upstream_port}",
            *options,
        ],
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []

    def collect() -> None:
        assert process.stderr is not None
        lines.extend(line.decode() for line in iter(process.stderr.readline, b""))

    threading.Thread(target=collect, daemon=True).start()
    try:
        deadline = time.monotonic() + 20
        while not any(line.startswith("proxy:") for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        yield port, lines
    finally:
        stop(process)


def closed_after(port: int, limit_s: float = 20.0) -> tuple[bytes, float]:
    """Send a request through the proxy and read until the proxy closes: (bytes received, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(limit_s)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # abort() resets: also a close
        except TimeoutError:
            pytest.fail(f"the proxy kept the connection open for {limit_s} s")
    return received, time.monotonic() - started


def logged(lines: list[str], text: str) -> bool:
    deadline = time.monotonic() + 5
    while not any(text in line for line in lines):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def hold_until_closed(closes: list[float]) -> Respond:
    def respond(conn: socket.socket, _stopped: threading.Event) -> None:
        conn.settimeout(30)
        while conn.recv(65536):
            pass
        closes.append(time.monotonic())

    return respond


def test_an_idle_connection_is_closed_on_both_sides() -> None:
    closes: list[float] = []
    with (
        RawServer(hold_until_closed(closes)) as upstream,
        running_proxy(upstream.port, "--idle-timeout", "0.5") as (
            port,
            lines,
        ),
    ):
        received, elapsed = closed_after(port)
        assert received == b"" and 0.4 < elapsed < 3
        assert logged(lines, "idle for 0.5 s")
        deadline = time.monotonic() + 5
        while not closes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert closes, "the upstream side was left open"
        assert upstream.requests == [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]  # it did forward


def test_a_busy_connection_is_closed_at_the_maximum_duration() -> None:
    with (
        RawServer(drip(b"HTTP/1.1 200 OK\r\n\r\n", b"a", interval=0.1)) as upstream,
        running_proxy(upstream.port, "--idle-timeout", "5", "--max-duration", "1") as (port, lines),
    ):
        received, elapsed = closed_after(port)
        assert received.startswith(b"HTTP/1.1 200 OK\r\n\r\naaa") and 0.9 < elapsed < 3
        assert logged(lines, "open for the maximum 1 s")


def test_a_connection_is_closed_at_the_byte_cap() -> None:
    with (
        RawServer(endless(b"", b"x" * 65536)) as upstream,
        running_proxy(upstream.port, "--max-bytes", "100000") as (port, lines),
    ):
        received, _ = closed_after(port)
        assert 0 < len(received) <= 100_000
        assert logged(lines, "byte cap of 100000 reached")


def test_an_unreachable_upstream_is_given_up_at_the_connect_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(
            listener.getsockname()
        )  # fills the accept queue: SYNs go unanswered
        try:
            with running_proxy(listener.getsockname()[1], "--connect-timeout", "0.5") as (port, lines):
                received, elapsed = closed_after(port)
                assert received == b"" and elapsed < 3
                assert logged(lines, "upstream not reached within 0.5 s")
        finally:
            filler.close()


@pytest.mark.parametrize(
    "option",
    [["--idle-timeout", "0"], ["--max-duration", "-1"], ["--max-bytes", "0"], ["--connect-timeout", "x"]],
)
def test_proxy_limits_must_be_positive(option: list[str]) -> None:
    result = subprocess.run(
        [VERINFER, "proxy", "--listen", f"127.0.0.1:{free_port()}", "--upstream", "127.0.0.1:1", *option],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
