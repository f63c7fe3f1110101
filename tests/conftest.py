"""Shared fixtures: the real hardware documents and a simulator PKI per test session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.document import decode
from attestation.nsm.simulator import SimulatedNsmDevice
from attestation.sim_pki import SimulatorPki

from .chain_fixtures import anvil, chain, snapshot  # noqa: F401  (pytest fixtures)
from .pg_server import postgres_server  # noqa: F401  (pytest fixture)
from .relay_db import relay_db, relay_dbs  # noqa: F401  (pytest fixtures)

FIXTURES = Path(__file__).parent / "fixtures" / "attestation"
VALID = sorted(p for p in (FIXTURES / "valid").iterdir())
INVALID = sorted(p for p in (FIXTURES / "invalid").iterdir())
# A non-debug hardware document with a 64-byte public key, used as the base for mutations.
BASE_SAMPLE = FIXTURES / "valid" / "marlin_oyster__risczero_testcase_aws.bin"


def document_time(data: bytes) -> datetime:
    return datetime.fromtimestamp(decode(data).document.timestamp_ms / 1000, UTC)


MAX_BODY = 256 * 1024
# The session server serves receipt batches to this token (the relay's, in production).
BATCH_TOKEN = "test-relay-token-0123456789abcdef"


@pytest.fixture(scope="session")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-pki")


@pytest.fixture(scope="session")
def server(server_pki: Path) -> Iterator[str]:
    """A real `verinfer serve` (simulator NSM) on a free loopback port, shared by the session's tests."""
    from verinfer.processes import batch_token_args, running_server

    args = ["--nsm", "sim", "--pki-dir", str(server_pki), "--max-body", str(MAX_BODY)]
    with running_server(*args, *batch_token_args(BATCH_TOKEN)) as url:
        yield url


@pytest.fixture(scope="session")
def sim_pki(tmp_path_factory: pytest.TempPathFactory) -> SimulatorPki:
    return SimulatorPki(tmp_path_factory.mktemp("sim-pki"))


@pytest.fixture
def sim_device(sim_pki: SimulatorPki) -> Iterator[SimulatedNsmDevice]:
    yield SimulatedNsmDevice(sim_pki, {0: b"\x01" * 48, 1: b"\x02" * 48, 2: b"\x03" * 48})
