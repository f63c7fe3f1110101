"""Running `verinfer serve` as a real process on a free loopback port (the demo and the tests)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .fleet import nginx_binary, nginx_config

VERINFER = str(Path(sys.executable).parent / "verinfer")


def batch_token_args(token: str, rate_per_s: float = 1000.0) -> list[str]:
    """`verinfer serve` options that serve POST /receipts/batch to the holder of `token` (the relay)."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    return ["--batch-token-sha256", digest, "--batch-rate", str(rate_per_s)]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate, and kill if it does not exit within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float = 60.0, path: str = "/v2/health/ready"
) -> None:
    """Until GET url+path answers 200; RuntimeError if the process exits first, TimeoutError after
    `timeout` seconds. `path`: the server's readiness route (the enclave's, by default)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready after {timeout} s")


@contextmanager
def running_server(*args: str, log: Path | None = None) -> Iterator[str]:
    """Start the server, wait until /v2/health/ready answers, stop it on exit. Yields its base URL."""
    port = free_port()
    command = [VERINFER, "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with running_http_process(command, f"http://127.0.0.1:{port}", log=log) as url:
        yield url


@contextmanager
def running_http_process(
    command: list[str],
    url: str,
    *,
    log: Path | None = None,
    cwd: Path | None = None,
    ready_path: str = "/v2/health/ready",
) -> Iterator[str]:
    """Start an HTTP server process, wait until URL/v2/health/ready answers, stop it on exit.

    Output goes to a file, never an undrained pipe: a server logs a line per request and would block
    once a pipe's buffer filled. A server that does not come up fails with its output.
    """
    output = log.open("w+b") if log else tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        try:
            wait_ready(url, process, path=ready_path)
        except (RuntimeError, TimeoutError) as exc:
            output.seek(0)
            raise RuntimeError(f"{exc}\n{output.read().decode(errors='replace')}") from exc
        yield url
    finally:
        stop(process)
        output.close()


ANVIL = Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "anvil"
# anvil 1.7.1 keeps the newest block states in memory and moves older ones to a disk cache; a reorg or
# rollback to a block whose state sits in that cache rebuilds the chain without the accounts' code (seen
# after ~900 blocks: every contract is gone). Pruned history keeps states in memory only, up to this many
# blocks, which no test or demo comes near.
ANVIL_STATES_IN_MEMORY = 100_000

# anvil's default development accounts (public test keys from its fixed mnemonic): never use on a real chain.
ANVIL_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
)


@contextmanager
def running_anvil(*args: str) -> Iterator[str]:
    """A real anvil (pinned in package.json, installed by `make setup`) on a free loopback port."""
    if not ANVIL.exists():
        raise FileNotFoundError(f"{ANVIL} is missing: run `make setup` (npm install) first")
    port = free_port()
    process = subprocess.Popen(
        [
            str(ANVIL),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--silent",
            "--prune-history",
            str(ANVIL_STATES_IN_MEMORY),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"anvil exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            try:
                body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
                if httpx.post(url, json=body, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("anvil did not start")
            time.sleep(0.05)
        yield url
    finally:
        stop(process)


@contextmanager
def running_explorer(*args: str) -> Iterator[str]:
    """`verinfer explorer` on a free loopback port, until its page answers. Yields its base URL."""
    port = free_port()
    command = [VERINFER, "explorer", "--host", "127.0.0.1", "--port", str(port), *args]
    with running_http_process(command, f"http://127.0.0.1:{port}", ready_path="/config.json") as url:
        yield url


# Debian's chromium (installed by `make setup`): Playwright's own browser download is not used.
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
# Headless and quiet: no sandbox (tests run as root in CI), no GPU, no background traffic of its own.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
)


def chromium_executable() -> str:
    """The system Chromium, or FileNotFoundError saying how to install it."""
    found = next((path for name in CHROMIUM_CANDIDATES if (path := shutil.which(name))), None)
    if found is None:
        raise FileNotFoundError("no chromium on PATH: run `make setup` (installs Debian's chromium)")
    return found


@contextmanager
def running_nginx(enclaves: list[str]) -> Iterator[str]:
    """Debian's nginx on a free loopback port in front of `enclaves` (base URLs), with verinfer/fleet.py's
    configuration in a private folder; stopped on exit. Yields the fleet's URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="verinfer-nginx-") as folder:
        prefix = Path(folder)
        upstreams = [url.removeprefix("http://").rstrip("/") for url in enclaves]
        run_as = "root" if os.geteuid() == 0 else None  # as root, workers would drop to nobody
        config = nginx_config(f"127.0.0.1:{port}", upstreams, prefix=prefix, run_as=run_as)
        (prefix / "nginx.conf").write_text(config)
        command = [nginx_binary(), "-p", folder, "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 15
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    stop(process)
                    errors = process.stderr.read().decode() if process.stderr else ""
                    log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                    raise RuntimeError(f"nginx did not come up: {errors}{log}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    time.sleep(0.05)
            yield url
        finally:
            stop(process)
