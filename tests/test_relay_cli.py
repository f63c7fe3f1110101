"""The relay's command line and verifier service, and how keys are loaded."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from attestation import Policy, TrustedRoot
from relay.errors import StateError
from relay.keys import KeyConfigError, load_account
from relay.state import RelayState
from relay.verifier_service import create_verifier_app
from verinfer.cli import main
from verinfer.processes import ANVIL_KEYS, VERINFER, free_port, stop

from .chain_fixtures import Chain
from .relay_db import RelayDb

REPO = Path(__file__).resolve().parent.parent


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", ANVIL_KEYS[1])
    assert load_account(key_env="TEST_KEY").address == Account.from_key(ANVIL_KEYS[1]).address


def test_key_from_keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keystore = tmp_path / "key.json"
    keystore.write_text(
        json.dumps(Account.encrypt(bytes.fromhex(ANVIL_KEYS[2][2:]), "correct horse", iterations=2))
    )
    monkeypatch.setenv("KS_PASSWORD", "correct horse")
    account = load_account(keystore=keystore, password_env="KS_PASSWORD")
    assert account.address == Account.from_key(ANVIL_KEYS[2]).address
    monkeypatch.setenv("KS_PASSWORD", "wrong")
    with pytest.raises(KeyConfigError) as info:
        load_account(keystore=keystore, password_env="KS_PASSWORD")
    assert "wrong" not in str(info.value) and ANVIL_KEYS[2][2:] not in str(info.value)


def test_bad_key_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", "0xnot-a-key-but-secret-looking")
    with pytest.raises(KeyConfigError) as info:
        load_account(key_env="TEST_KEY")
    assert "secret-looking" not in str(info.value) and info.value.__cause__ is None
    with pytest.raises(KeyConfigError, match="MISSING_KEY"):
        load_account(key_env="MISSING_KEY")


def test_relay_never_logs_its_key(chain: Chain, server: str, relay_db: RelayDb) -> None:
    env = {**os.environ, "VERINFER_KEY": ANVIL_KEYS[4]}
    process = subprocess.Popen(
        [
            VERINFER,
            "relay",
            "run",
            "--rpc",
            chain.url,
            "--contract",
            chain.contract.address,
            "--enclave",
            server,
            "--db",
            relay_db.url,
            "--poll",
            "0.1",
            "--chain-id",
            str(chain.w3.eth.chain_id),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = process.communicate(timeout=3)
    except subprocess.TimeoutExpired:
        process.terminate()
        output, _ = process.communicate()
    assert Account.from_key(ANVIL_KEYS[4]).address.encode() in output
    assert ANVIL_KEYS[4][2:].encode() not in output


def test_verifier_service_signs_only_verified_enclaves(chain: Chain, server: str, server_pki: Path) -> None:
    policy = Policy(root=TrustedRoot.from_file(server_pki / "root.pem"))
    allow = [server]  # this service fetches attestations only from allow-listed enclaves
    client = TestClient(create_verifier_app(chain.verifier_key, policy, enclave_allow=allow))
    assert client.get("/").json()["verifier"] == chain.verifier_key.address
    body = {"enclave": server, "chainId": chain.w3.eth.chain_id, "contract": chain.contract.address}
    signed = client.post("/registrations", json=body).json()
    assert signed["enclave"] == chain.enclave
    aws = TestClient(create_verifier_app(chain.verifier_key, Policy(), enclave_allow=allow))
    refused = aws.post("/registrations", json=body)
    assert refused.status_code == 422 and "root_not_trusted" in refused.json()["message"]
    pcr_policy = Policy(root=policy.root, expected_pcrs={0: bytes(48)})
    assert (
        TestClient(create_verifier_app(chain.verifier_key, pcr_policy, enclave_allow=allow))
        .post("/registrations", json=body)
        .status_code
        == 422
    )
    assert client.post("/registrations", json={"enclave": server}).status_code == 400
    assert client.post("/registrations", content=b"{").status_code == 400


def test_register_command_with_a_local_verifier_key(
    snapshot: Chain, server: str, server_pki: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("ADMIN_KEY", ANVIL_KEYS[0])
    monkeypatch.setenv("VERIFIER_KEY", ANVIL_KEYS[1])
    argv = [
        "relay",
        "register",
        "--enclave",
        server,
        "--rpc",
        snapshot.url,
        "--contract",
        snapshot.contract.address,
        "--verifier-key-env",
        "VERIFIER_KEY",
        "--key-env",
        "ADMIN_KEY",
        "--root",
        str(server_pki / "root.pem"),
    ]
    assert main(argv) == 0
    assert "registered enclave" in capsys.readouterr().out
    assert main([*argv[:-2], "--root", "aws"]) == 1  # the simulator's document is not AWS hardware
    assert "root_not_trusted" in capsys.readouterr().out
    monkeypatch.setenv("VERIFIER_KEY", ANVIL_KEYS[5])  # not a trusted verifier on chain
    assert main(argv) == 1
    assert "UntrustedVerifier" in capsys.readouterr().out


def test_register_command_through_the_verifier_service(
    snapshot: Chain, server: str, server_pki: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    port = free_port()
    verifier = subprocess.Popen(
        [VERINFER, "relay", "verifier", "--port", str(port), "--root", str(server_pki / "root.pem")],
        env={**os.environ, "VERINFER_KEY": ANVIL_KEYS[1]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        monkeypatch.setenv("ADMIN_KEY", ANVIL_KEYS[0])
        code = main(
            [
                "relay",
                "register",
                "--enclave",
                server,
                "--rpc",
                snapshot.url,
                "--contract",
                snapshot.contract.address,
                "--verifier-url",
                url,
                "--key-env",
                "ADMIN_KEY",
            ]
        )
        assert code == 0, capsys.readouterr().out
        assert (
            main(
                [
                    "relay",
                    "register",
                    "--enclave",
                    "http://127.0.0.1:1",
                    "--rpc",
                    snapshot.url,
                    "--contract",
                    snapshot.contract.address,
                    "--verifier-url",
                    url,
                    "--key-env",
                    "ADMIN_KEY",
                ]
            )
            == 1
        )
        assert "attestation_rejected" in capsys.readouterr().out
    finally:
        stop(verifier)


def test_usage_errors(capsys) -> None:
    assert (
        main(
            [
                "relay",
                "run",
                "--rpc",
                "http://127.0.0.1:1",
                "--contract",
                "0x0",
                "--enclave",
                "x",
                "--chain-id",
                "1",
                "--key-env",
                "UNSET_VARIABLE_FOR_TEST",
            ]
        )
        == 2
    )
    assert "UNSET_VARIABLE_FOR_TEST" in capsys.readouterr().err
    assert (
        main(
            [
                "relay",
                "register",
                "--enclave",
                "x",
                "--rpc",
                "http://127.0.0.1:1",
                "--contract",
                "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            ]
        )
        == 2
    )


def test_deploy_command(chain: Chain, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("VERINFER_KEY", ANVIL_KEYS[5])
    assert main(["relay", "deploy", "--rpc", chain.url]) == 0
    address = capsys.readouterr().out.strip()
    deployed = chain.w3.eth.contract(address=address, abi=chain.contract.abi)
    assert deployed.functions.owner().call() == Account.from_key(ANVIL_KEYS[5]).address


def test_approve_command(snapshot: Chain, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from protocol.images import image_id

    def approve(*options: str) -> int:
        return main(
            [
                "relay",
                "approve",
                "--rpc",
                snapshot.url,
                "--contract",
                snapshot.contract.address,
                "--manifest",
                str(REPO / "models"),
                *options,
            ]
        )

    monkeypatch.setenv("VERINFER_KEY", ANVIL_KEYS[0])
    pcrs = [os.urandom(48) for _ in range(3)]
    model = snapshot.models["iris-mlp"]
    snapshot.admin.transact(snapshot.contract.functions.revokeModel(model))
    stranger = Account.create().address
    code = approve(
        "--image-pcrs", *(p.hex() for p in pcrs), "--model", "0x" + model.hex(), "--verifier", stranger
    )
    assert code == 0, capsys.readouterr()
    assert snapshot.contract.functions.approvedImages(image_id(dict(enumerate(pcrs)))).call()
    # The layout approved with the model is the manifest's (the same as the server's GET /models).
    assert snapshot.contract.functions.modelLayouts(model).call() == snapshot.layouts[model]
    assert snapshot.contract.functions.attestationVerifiers(stranger).call()
    assert approve("--image-pcrs", "00", "11", "22") == 2
    capsys.readouterr()
    assert approve("--model", "0x" + os.urandom(32).hex()) == 2  # not in the manifest: no layout to approve
    assert "not in" in capsys.readouterr().err
    monkeypatch.setenv("VERINFER_KEY", ANVIL_KEYS[5])  # not the admin
    assert approve("--model", "0x" + model.hex()) == 1
    assert "OwnableUnauthorizedAccount" in capsys.readouterr().out


def test_a_state_file_serves_one_chain_and_contract(relay_db: RelayDb) -> None:
    """A reset devnet keeps its chain id and its deterministic contract address; its history is new."""
    contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"

    def bind(chain_id: int, genesis: bytes, address: str) -> None:
        with RelayState(relay_db.url) as state:
            state.bind_chain(chain_id, genesis, address)

    bind(31337, b"\x01" * 32, contract)
    bind(31337, b"\x01" * 32, contract.lower())  # the same chain again: accepted
    for chain_id, genesis, other in ((31337, b"\x02" * 32, contract), (1, b"\x01" * 32, contract)):
        with pytest.raises(StateError, match="new state file"):
            bind(chain_id, genesis, other)
    with pytest.raises(StateError):
        bind(31337, b"\x01" * 32, "0x" + "11" * 20)


def test_relay_run_refuses_the_state_of_another_chain(chain: Chain, server: str, relay_db: RelayDb) -> None:
    with RelayState(relay_db.url) as state:  # a reset devnet's
        state.bind_chain(chain.w3.eth.chain_id, b"\x09" * 32, chain.contract.address)
    command = [
        VERINFER, "relay", "run", "--rpc", chain.url, "--contract", chain.contract.address,
        "--enclave", server, "--db", relay_db.url, "--chain-id", str(chain.w3.eth.chain_id),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        check=False,
        env={**os.environ, "VERINFER_KEY": ANVIL_KEYS[4]},
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert result.returncode == 2 and "new state file" in result.stderr
