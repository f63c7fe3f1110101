"""`verinfer explorer` without a browser: what it serves, with which headers, which settings it refuses."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from attestation.cli import UsageError
from verinfer.cli import build_parser
from verinfer.explorer_cli import make_server, page_config

PAGE = Path(__file__).resolve().parent.parent / "verinfer" / "explorer"


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["explorer", *argv])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    config = page_config(args("--enclave", "http://127.0.0.1:9/", "--pcr", "0=" + "ab" * 48, "--check"))
    server = make_server("127.0.0.1", 0, config)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_serves_the_page_its_bundle_and_the_settings(served: str) -> None:
    page = httpx.get(f"{served}/")
    assert page.status_code == 200
    assert page.content == (PAGE / "index.html").read_bytes()
    assert page.headers["content-type"].startswith("text/html")
    bundle = httpx.get(f"{served}/explorer.js")
    assert bundle.content == (PAGE / "explorer.js").read_bytes()
    assert httpx.get(f"{served}/config.json").json() == {
        "enclave": "http://127.0.0.1:9",
        "pcr0": "ab" * 48,
        "check": True,
    }


def test_answers_are_locked_down_and_nothing_else_is_served(served: str) -> None:
    page = httpx.get(f"{served}/index.html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    for path in ("/../pyproject.toml", "/explorer_cli.py", "/%2e%2e/cli.py", "/config.json/x"):
        assert httpx.get(f"{served}{path}").status_code == 404, path


def test_root_choices(tmp_path: Path) -> None:
    assert "rootPem" not in page_config(args())
    (tmp_path / "root.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert page_config(args("--root", "sim", "--pki-dir", str(tmp_path)))["rootPem"].startswith("-----BEGIN")
    assert page_config(args("--root", str(tmp_path / "root.pem")))["rootPem"].startswith("-----BEGIN")
    with pytest.raises(UsageError, match="no simulator root"):
        page_config(args("--root", "sim", "--pki-dir", str(tmp_path / "none")))
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(UsageError, match="not a PEM certificate"):
        page_config(args("--root", str(tmp_path / "not.pem")))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pcr", "3=" + "ab" * 48], "expected N=HEX"),
        (["--pcr", "0=abc"], "expected N=HEX"),
        (["--image-id", "0x12"], "--image-id"),
        (["--rpc", "http://127.0.0.1:8545"], "go together"),
        (["--rpc", "http://127.0.0.1:8545", "--contract", "nope"], "--contract"),
    ],
)
def test_malformed_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        page_config(args(*argv))
