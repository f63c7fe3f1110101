"""Operating `verinfer serve`: settings from flags, VERINFER_* variables and a config file; CORS; JSON access
logs; process metrics; "serving on" only once it is true; SIGTERM with a deadline. Real server processes,
except for the settings model and the formatters, which are checked in-process too."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from enclave.metrics import Metrics
from enclave.settings import DEFAULT_MODELS, ServeSettings, SettingsError, load_settings
from protocol.edge import AccessLog
from verinfer.cli import build_parser, main
from verinfer.processes import VERINFER

SERVING = re.compile(r"serving on (http://127\.0\.0\.1:(\d+)) as enclave 0x[0-9a-fA-F]{40} \((.*?)\)")
INFER = {"model": "iris-mlp", "inputs": [[5.1, 3.5, 1.4, 0.2]]}


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any VERINFER_* of the caller's, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("VERINFER_")}
    return {**env, **extra}


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    nsm: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """`verinfer serve --port 0 ARGS`, yielded the moment it logs "serving on" (no polling of the port:
    the line itself must be true), stopped on exit."""
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [VERINFER, "serve", "--port", "0", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env if env is not None else clean_env(),
        )
    try:
        deadline = time.monotonic() + 60
        while (match := SERVING.search(log.read_text(errors="replace"))) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no 'serving on' line (exit {process.poll()}):\n{log.read_text()}")
            time.sleep(0.02)
        yield Served(process, match.group(1), match.group(3), log)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


# --- settings: one model, four sources ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_verinfer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process settings see only the variables a test sets."""
    for key in list(os.environ):
        if key.startswith("VERINFER_"):
            monkeypatch.delenv(key)


def serve_actions() -> dict[str, object]:
    parser = build_parser()
    groups = next(a for a in parser._actions if a.dest == "group")
    serve = groups.choices["serve"]  # type: ignore[index]
    return {a.dest: a for a in serve._actions if a.dest != "help"}


def test_every_serve_option_is_a_settings_field_and_argparse_has_no_defaults() -> None:
    assert set(serve_actions()) == set(ServeSettings.model_fields)
    args = build_parser().parse_args(["serve"])
    assert set(vars(args)) <= {"group", "handler"}, "argparse defaults would hide the environment"


def test_precedence_command_line_environment_file_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('nsm = "sim"\nhost = "0.0.0.0"\nport = 9000\nmax_body = 100\n')
    monkeypatch.setenv("VERINFER_CONFIG", str(config))
    monkeypatch.setenv("VERINFER_PORT", "9001")
    monkeypatch.setenv("VERINFER_MAX_BODY", "200")
    settings = load_settings({"max_body": 300})
    assert (settings.nsm, settings.host, settings.port, settings.max_body) == ("sim", "0.0.0.0", 9001, 300)
    assert settings.models == DEFAULT_MODELS and settings.shutdown_timeout == 10  # the model's defaults
    # --config beats VERINFER_CONFIG; JSON files work the same way.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"nsm": "nitro", "access_log_format": "json"}))
    settings = load_settings({"config": other})
    assert (settings.nsm, settings.access_log_format, settings.host) == ("nitro", "json", "127.0.0.1")


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("https://a.example", ["https://a.example"]),
        ("https://a.example, https://b.example", ["https://a.example", "https://b.example"]),
        ('["https://a.example", "*"]', ["https://a.example", "*"]),
    ],
)
def test_cors_origins_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, origins: list[str]
) -> None:
    monkeypatch.setenv("VERINFER_CORS_ORIGINS", value)
    assert load_settings({}).cors_origins == origins


def test_unrelated_verinfer_variables_are_not_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERINFER_KEY", "0x01")  # the relay's
    monkeypatch.setenv("VERINFER_SIM_PKI", "/tmp/x")  # the simulator's
    assert load_settings({}).port == 8000


def test_unknown_config_keys_and_bad_values_are_named(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("max_bodyy = 5\n")
    with pytest.raises(SettingsError, match="max_bodyy"):
        load_settings({"config": config})
    config.write_text("port = 70000\n")
    with pytest.raises(SettingsError, match="port"):
        load_settings({"config": config})
    config.write_text("port = \n")
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings({"config": config})


def test_help_names_each_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-body BYTES request body limit (413) (env VERINFER_MAX_BODY; default 4194304)" in out
    assert "(env VERINFER_SHUTDOWN_TIMEOUT; default 10)" in out
    assert "(env VERINFER_NSM; default none)" in out


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "serve needs --nsm nitro"),
        ([], {"VERINFER_NSM": "hardware"}, "nsm: Input should be 'sim' or 'nitro'"),
        (["--nsm", "sim"], {"VERINFER_PORT": "http"}, "port: Input should be a valid integer"),
        (["--nsm", "sim", "--config", "/nonexistent/serve.toml"], {}, "does not exist"),
        (["--nsm", "sim", "--port", "-1"], {}, "port: Input should be greater than or equal to 0"),
    ],
)
def test_usage_errors_exit_2_before_loading_anything(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [VERINFER, "serve", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "serving" not in result.stderr and "NSM: SIMULATOR" not in result.stderr


# --- in-process formatters -------------------------------------------------------------------------------


def test_json_access_lines_escape_what_the_client_chose() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, json_lines=True)
    log.write(b"abc", "GET", '/x "y"\n\\z', 404, time.perf_counter())
    log.write(b"def", "GET", "/\ud800", 404, time.perf_counter())  # a lone surrogate orjson refuses
    log.flush()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["path"] == '/x "y"\n\\z' and first["request_id"] == "abc" and first["status"] == 404
    assert set(first) == {"ts", "request_id", "method", "path", "status", "ms"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert isinstance(first["ms"], float) and "ud800" in second["path"]


def test_request_histogram_and_process_metrics_on_the_apps_registry() -> None:
    metrics = Metrics()
    metrics.observe_request("infer", 0.003)
    metrics.observe_request("infer", 0.2)
    text = generate_latest(metrics.registry).decode()
    assert 'verinfer_http_request_duration_seconds_bucket{endpoint="infer",le="0.005"} 1.0' in text
    assert 'verinfer_http_request_duration_seconds_count{endpoint="infer"} 2.0' in text
    assert "process_resident_memory_bytes" in text and "python_info{" in text
    Metrics()  # a second app's registry: no "Duplicated timeseries" between instances


# --- real servers ---------------------------------------------------------------------------------------


def test_a_configured_server(tmp_path: Path) -> None:
    """Config file, environment and flags together; CORS; JSON access log; process metrics; bind."""
    config = tmp_path / "serve.toml"
    config.write_text(
        f'nsm = "sim"\npki_dir = "{tmp_path / "pki"}"\nno_llm = true\naccess_log_format = "json"\n'
        'max_body = 100\ncors_origins = ["https://file.example"]\n'
    )
    env = clean_env(VERINFER_MAX_BODY="5000", VERINFER_CORS_ORIGINS="https://env.example")
    with serving(
        tmp_path, "--config", str(config), "--cors-origin", "https://cli.example", env=env
    ) as served:
        # At the moment "serving on" is logged, the port answers (no retry, no sleep).
        assert httpx.get(f"{served.url}/v2/health/ready", timeout=5).status_code == 200
        assert served.nsm == "SIMULATED NSM"
        with httpx.Client(base_url=served.url, timeout=10) as client:
            preflight = {
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            }
            allowed = client.options("/infer", headers={"Origin": "https://cli.example", **preflight})
            assert allowed.status_code == 200
            assert allowed.headers["access-control-allow-origin"] == "https://cli.example"
            assert "POST" in allowed.headers["access-control-allow-methods"]
            for replaced in ("https://env.example", "https://file.example"):  # the flag wins, not merges
                refused = client.options("/infer", headers={"Origin": replaced, **preflight})
                assert "access-control-allow-origin" not in refused.headers
            answer = client.post("/infer", json=INFER, headers={"Origin": "https://cli.example"})
            assert answer.status_code == 200 and answer.json()["receipt"]["signature"]
            assert answer.headers["access-control-allow-origin"] == "https://cli.example"
            assert "X-Request-ID" in answer.headers["access-control-expose-headers"]
            # max_body: the environment's 5000 over the file's 100.
            assert client.post("/infer", content=b" " * 4000).status_code != 413
            assert client.post("/infer", content=b" " * 6000).status_code == 413
            metrics = client.get("/metrics").text
        for series in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"):
            assert re.search(rf"^{series} \d", metrics, re.MULTILINE), series
        assert re.search(
            r'^verinfer_http_request_duration_seconds_count\{endpoint="infer"\} [1-9]', metrics, re.M
        )
        deadline = time.monotonic() + 5
        while True:  # lines are flushed within 0.25 s
            records = [json.loads(line) for line in served.output().splitlines() if line.startswith("{")]
            mine = [r for r in records if r["request_id"] == answer.headers["x-request-id"]]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (
            mine and mine[0]["method"] == "POST" and mine[0]["path"] == "/infer" and mine[0]["status"] == 200
        )
        assert {r["status"] for r in records} >= {200, 413}


def send_half(url: str, length: int = 1000) -> socket.socket:
    """A POST /infer whose headers promise `length` bytes, of which only half are sent."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = f"POST /infer HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n"
    sock.sendall(head.encode() + b" " * (length // 2))
    return sock


def test_sigterm_waits_for_open_requests_up_to_the_deadline(tmp_path: Path) -> None:
    deadline_s = 3
    args = (
        "--nsm",
        "sim",
        "--pki-dir",
        str(tmp_path / "pki"),
        "--no-llm",
        "--shutdown-timeout",
        str(deadline_s),
    )
    with serving(tmp_path, *args) as served:
        # No --cors-origin: no CORS headers at all.
        preflight = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
        assert (
            "access-control-allow-origin"
            not in httpx.options(f"{served.url}/infer", headers=preflight).headers
        )
        with send_half(served.url) as _stalled, send_half(served.url, length=100) as finishing:
            time.sleep(0.3)  # both requests are in the server's hands
            served.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.5)
            # Within the grace period a request can still complete, and gets its answer.
            finishing.sendall(b" " * 50)  # the rest of its body: a 400 (not JSON), but an answer
            answer = finishing.recv(65536)
            assert answer.startswith(b"HTTP/1.1 "), answer
            try:
                served.process.wait(timeout=deadline_s + 10)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {deadline_s + 10} s after SIGTERM with a {deadline_s} s deadline")
        took = time.monotonic() - signalled
        assert took >= deadline_s - 0.5, "it did not wait for the open request"
        # uvicorn re-raises the signal once shut down, so the exit status says SIGTERM ended it.
        assert served.process.returncode in (0, -signal.SIGTERM)
        assert "timeout graceful shutdown exceeded" in served.output()
