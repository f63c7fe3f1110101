"""The parent-side proxy forwards HTTP byte for byte (TCP upstream here; vsock where the kernel has it)."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import pytest

from enclave.vsock import vsock_listener
from verinfer.processes import VERINFER, free_port, stop


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
