"""`verinfer relay deploy | approve | register | run | db status | db migrate | verifier`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from attestation.cli import EXIT_OK, EXIT_REJECTED, UsageError, pcr_args
from attestation.roots import resolve_root
from attestation.verify import Policy

if TYPE_CHECKING:
    from .policy import FeePolicy
    from .registration import Registration
    from .state import RelayState
    from .storage import SchemaStatus


def _account(args: argparse.Namespace, env: str | None = None) -> Any:
    from .keys import KeyConfigError, load_account

    try:
        return load_account(
            key_env=env or args.key_env,
            keystore=getattr(args, "keystore", None),
            password_env=getattr(args, "password_env", None),
        )
    except KeyConfigError as exc:
        raise UsageError(str(exc)) from exc


def _policy(args: argparse.Namespace) -> Policy:
    try:
        root = resolve_root(args.root)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load root {args.root!r}: {exc}") from exc
    return Policy(
        root=root, expected_pcrs=pcr_args(args.pcr), max_age_s=args.max_age, allow_debug=args.allow_debug
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    from .chain import TxSender, connect
    from .deployment import deploy_verifier

    sender = TxSender(connect(args.rpc), _account(args))
    contract = deploy_verifier(
        sender, max_attestation_age_ms=args.max_attestation_age_ms, enclave_ttl_s=args.enclave_ttl
    )
    print(contract.address)
    return EXIT_OK


def _hex32(text: str, what: str) -> bytes:
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        value = b""
    if len(value) != 32:
        raise UsageError(f"{what} must be 32 bytes of hex, got {text!r}")
    return value


def _model_approvals(hashes: list[str], manifest_dir: str) -> dict[bytes, bytes]:
    """modelHash -> output layout for each --model, the layout read from the manifest that lists it."""
    from protocol.manifest import ManifestError, load_manifest

    from .deployment import manifest_approvals

    models = [_hex32(value, "--model") for value in hashes]
    if not models:
        return {}
    try:
        # Only the layouts are needed: the ONNX files themselves need not be on the admin's machine.
        known = manifest_approvals(load_manifest(manifest_dir, check_files=False))
    except ManifestError as exc:
        raise UsageError(f"--model needs the model manifest for its output layout: {exc}") from exc
    missing = [f"0x{model.hex()}" for model in models if model not in known]
    if missing:
        raise UsageError(
            f"--model {', '.join(missing)} is not in {manifest_dir}/manifest.json: the contract approves a "
            "model with its output layout, which is read from the manifest (give --manifest DIR)"
        )
    return {model: known[model] for model in models}


def cmd_approve(args: argparse.Namespace) -> int:
    from protocol.images import image_id

    from .chain import ChainError, TxSender, bind, connect
    from .deployment import configure

    images = [_hex32(value, "--image-id") for value in args.image_id]
    for triple in args.image_pcrs:
        try:
            pcrs = {index: bytes.fromhex(value.removeprefix("0x")) for index, value in enumerate(triple)}
        except ValueError as exc:
            raise UsageError(f"--image-pcrs takes three hex PCRs: {exc}") from exc
        if any(len(value) != 48 for value in pcrs.values()):
            raise UsageError("--image-pcrs takes PCR0 PCR1 PCR2, 48 bytes each (nitro-cli's SHA384 values)")
        images.append(image_id(pcrs))
    models = _model_approvals(args.model, args.manifest)
    if not (images or models or args.verifier):
        raise UsageError("nothing to approve: give --image-pcrs, --image-id, --model or --verifier")
    w3 = connect(args.rpc)
    try:
        configure(
            TxSender(w3, _account(args)),
            bind(w3, "InferenceVerifier", args.contract),
            images=images,
            models=models,
            attestation_verifiers=args.verifier,
        )
    except ChainError as exc:
        print(f"REJECTED on chain: {exc.error or exc}")
        return EXIT_REJECTED
    for image in images:
        print(f"approved image 0x{image.hex()}")
    for model, layout in models.items():
        print(f"approved model 0x{model.hex()} (output layout 0x{layout.hex()})")
    for verifier in args.verifier:
        print(f"trusted attestation verifier {verifier}")
    return EXIT_OK


VERIFIER_DEADLINE_S = 30.0
VERIFIER_MAX_BYTES = 1 << 20


def _from_verifier_service(args: argparse.Namespace, chain_id: int, contract: str) -> Registration | str:
    """The registration a verifier service signs, or the rejection to print (a str).

    By default this command fetches the attestation itself, for a nonce the service issued
    (POST /challenges), and posts the document; with --verifier-fetches the service fetches it (only
    from the enclave URLs it allows)."""
    import base64

    from .http_client import Limits, OutboundError, request
    from .registration import Registration, RegistrationError, fetch_attestation

    base = args.verifier_url.rstrip("/")
    limits = Limits(deadline_s=VERIFIER_DEADLINE_S, max_bytes=VERIFIER_MAX_BYTES)
    body: dict[str, Any] = {"chainId": chain_id, "contract": contract}
    try:
        if args.verifier_fetches:
            body["enclave"] = args.enclave
        else:
            challenge = request("POST", f"{base}/challenges", limits=limits)
            if not challenge.ok:
                return f"REJECTED by the verifier: {challenge.text}"
            nonce = bytes.fromhex(challenge.json()["nonce"])
            try:
                document = fetch_attestation(args.enclave, nonce)
            except RegistrationError as exc:
                return f"REJECTED: attestation_rejected: {exc}"
            body |= {"attestation": base64.b64encode(document).decode(), "nonce": nonce.hex()}
        response = request("POST", f"{base}/registrations", json=body, limits=limits)
        if response.status != 200:
            return f"REJECTED by the verifier: {response.text}"
        return Registration.from_json(response.json())
    except (OutboundError, KeyError, TypeError, ValueError) as exc:
        return f"REJECTED: no registration from the verifier at {base}: {exc}"


def cmd_register(args: argparse.Namespace) -> int:
    from .chain import ChainError, TxSender, bind, connect
    from .registration import RegistrationError, attest_enclave, sign_registration, submit_registration

    w3 = connect(args.rpc)
    contract = bind(w3, "InferenceVerifier", args.contract)
    if args.verifier_url:
        registration = _from_verifier_service(args, w3.eth.chain_id, contract.address)
        if isinstance(registration, str):
            print(registration)
            return EXIT_REJECTED
    else:
        if not args.verifier_key_env:
            raise UsageError("give --verifier-url or --verifier-key-env")
        try:
            attested = attest_enclave(args.enclave, _policy(args))
        except RegistrationError as exc:
            print(f"REJECTED: {exc}")
            return EXIT_REJECTED
        registration = sign_registration(
            _account(args, args.verifier_key_env),
            attested,
            chain_id=w3.eth.chain_id,
            contract=contract.address,
        )
    try:
        enclave = submit_registration(TxSender(w3, _account(args)), contract, registration)
    except ChainError as exc:
        print(f"REJECTED on chain: {exc.error or exc}")
        return EXIT_REJECTED
    sealing = (
        f"encryption key 0x{registration.encryption_key.hex()}"
        if any(registration.encryption_key)
        else "no encryption key (sealed requests cannot name it)"
    )
    print(f"registered enclave {enclave} for image 0x{registration.image_id.hex()}, {sealing}")
    return EXIT_OK


def _batch_token(args: argparse.Namespace) -> str | None:
    """The relay's /receipts/batch bearer token, from the environment variable --batch-token-env names
    (never from the command line, never logged)."""
    import os

    if args.batch_token_env is None:
        return None
    token = os.environ.get(args.batch_token_env, "").strip()
    if not token:
        raise UsageError(
            f"--batch-token-env: the environment variable {args.batch_token_env} is unset or empty"
        )
    return token


def _fee_policy(args: argparse.Namespace) -> FeePolicy:
    from .policy import GWEI, FeePolicy

    try:
        return FeePolicy(
            min_fee_per_gas=int(args.min_fee_per_gas_gwei * GWEI),
            max_callback_gas=args.max_callback_gas,
            max_gas_price=int(args.max_gas_price_gwei * GWEI),
            bump_percent=args.bump_percent,
            stuck_after_s=args.stuck_after,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _wait_for_chain(w3: Any, chain_id: int) -> None:
    """Refuse another chain than the configured one; wait (with backoff) while the RPC does not answer, so
    a relay restarted during an RPC outage starts when it is back."""
    import time

    from web3.exceptions import Web3Exception

    from .errors import ChainIdMismatch
    from .txmanager import check_chain_id

    delay = 0.5
    while True:
        try:
            check_chain_id(w3, chain_id)
            return
        except ChainIdMismatch as exc:
            raise UsageError(f"refusing to start: {exc}") from exc
        except (Web3Exception, OSError, ValueError) as exc:
            log = logging.getLogger("verinfer.relay")
            log.warning("RPC not answering (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(30.0, delay * 2)


def _open_state(args: argparse.Namespace) -> RelayState:
    """The relay's state in the database --db (or $VERINFER_RELAY_DB) names, migrated; a UsageError of one
    line when it cannot be reached or used."""
    from .errors import StateError
    from .state import open_state

    try:
        return open_state(args.db)
    except StateError as exc:
        raise UsageError(str(exc)) from exc


def cmd_run(args: argparse.Namespace) -> int:
    from .chain import bind, connect
    from .errors import StateError
    from .runner import Relay

    batch_token = _batch_token(args)
    if args.http_deadline <= 0 or args.http_max_bytes <= 0 or args.llm_deadline <= 0:
        raise UsageError("--http-deadline, --llm-deadline and --http-max-bytes must be positive")
    if args.confirmations < 0 or args.poll <= 0:
        raise UsageError("--confirmations must not be negative and --poll must be positive")
    if args.lease <= 0 or not 0 <= args.metrics_port < 65536:
        raise UsageError("--lease must be positive and --metrics-port a port number (0: no metrics)")
    policy = _fee_policy(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise; failures are logged
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)  # each new pooled connection otherwise
    account = _account(args)
    state = _open_state(args)  # before waiting for the RPC: a wrong --db fails at once
    w3 = connect(args.rpc)
    _wait_for_chain(w3, args.chain_id)
    try:
        state.bind_chain(args.chain_id, bytes(w3.eth.get_block(0)["hash"]), args.contract)
    except StateError as exc:
        raise UsageError(str(exc)) from exc
    from .metrics import RelayMetrics

    metrics = RelayMetrics(account.address)
    try:
        relay = Relay(
            w3,
            bind(w3, "InferenceVerifier", args.contract),
            account,
            [url for url in args.enclave.split(",") if url],
            state,
            chain_id=args.chain_id,
            policy=policy,
            confirmations=args.confirmations,
            start_block=args.start_block,
            http_timeout=args.http_deadline,
            llm_timeout=args.llm_deadline,
            http_max_bytes=args.http_max_bytes,
            anchor_min=args.anchor_min,
            anchor_max=args.anchor_max,
            batch_token=batch_token,
            lease_s=args.lease,
            metrics=metrics,
        )
    except StateError as exc:
        raise UsageError(str(exc)) from exc
    if args.metrics_port:
        try:
            metrics.serve(args.metrics_port)
        except OSError as exc:
            raise UsageError(f"--metrics-port {args.metrics_port}: {exc}") from exc
    logging.getLogger("verinfer.relay").info(
        "relay %s watching %s on %s (chain %d)%s, state in %s (lease %.1f s)%s; %s",
        account.address,
        args.contract,
        args.rpc,
        args.chain_id,
        f" (batch token from ${args.batch_token_env})" if batch_token else "",
        state.location,
        args.lease,
        f", metrics on 127.0.0.1:{args.metrics_port}" if args.metrics_port else "",
        policy,
    )
    relay.run(poll_interval=args.poll)
    return EXIT_OK


def _db_header(status: SchemaStatus) -> None:
    from .storage import SCHEMA_VERSION

    print(f"backend: {status.dialect}")
    print(f"location: {status.location}")
    where = "" if status.exists else " (the file does not exist yet)"
    note = f" ({status.note})" if status.note else ""
    print(f"schema version: {status.version} in the database{where}{note}, {SCHEMA_VERSION} in this relay")


def cmd_db_status(args: argparse.Namespace) -> int:
    """Backend, location (never a password), schema versions and pending migrations; nothing is written."""
    from .errors import StateError
    from .storage import inspect, resolve_db

    try:
        status = inspect(resolve_db(args.db))
    except StateError as exc:
        raise UsageError(str(exc)) from exc
    _db_header(status)
    if not status.pending:
        print("pending migrations: none")
    else:
        print(
            f"pending migrations: {len(status.pending)} (applied by `verinfer relay db migrate` or at start)"
        )
        for migration in status.pending:
            print(f"  {migration.version}: {migration.description}")
    return EXIT_OK


def cmd_db_migrate(args: argparse.Namespace) -> int:
    """Apply the pending migrations (`relay run` does too, when it starts)."""
    from .errors import StateError
    from .storage import open_backend, resolve_db

    try:
        backend = open_backend(resolve_db(args.db))
        try:
            applied = backend.migrate()
            status = backend.status()
        finally:
            backend.close()
    except StateError as exc:
        raise UsageError(str(exc)) from exc
    for migration in applied:
        print(f"applied migration {migration.version}: {migration.description}")
    if not applied:
        print("nothing to migrate")
    _db_header(status)
    print("pending migrations: none")
    return EXIT_OK


DB_HELP = (
    "the relay's state database: a file path or sqlite:///PATH (SQLite), or "
    "postgresql://USER@HOST:PORT/DBNAME (PostgreSQL; the password in $PGPASSWORD or ~/.pgpass rather "
    "than in the URL); default: $VERINFER_RELAY_DB, else relay.sqlite3"
)


def cmd_verifier(args: argparse.Namespace) -> int:
    import uvicorn

    from protocol.edge import AccessLog

    from .verifier_service import create_verifier_app

    if args.max_body < 1 or args.challenge_ttl <= 0 or args.max_challenges < 1 or args.fetch_deadline <= 0:
        raise UsageError(
            "--max-body, --challenge-ttl, --max-challenges and --fetch-deadline must be positive"
        )
    account = _account(args)
    try:
        app = create_verifier_app(
            account,
            _policy(args),
            enclave_allow=args.enclave_allow,
            max_body=args.max_body,
            challenge_ttl_s=args.challenge_ttl,
            max_challenges=args.max_challenges,
            fetch_deadline_s=args.fetch_deadline,
            access_log=AccessLog(sys.stderr),
        )
    except ValueError as exc:
        raise UsageError(f"--enclave-allow: {exc}") from exc
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("verinfer.verifier").info(
        "attestation verifier %s on %s:%d (fetches from: %s)",
        account.address,
        args.host,
        args.port,
        ", ".join(args.enclave_allow) or "no enclave; callers post documents",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def _key_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--key-env", default="VERINFER_KEY", help=f"env variable holding the {what} key")
    parser.add_argument("--keystore", help="encrypted JSON keystore instead of --key-env")
    parser.add_argument("--password-env", help="env variable holding the keystore password")


def _policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="aws", help="'aws' or the PEM of a (simulator) root")
    parser.add_argument("--pcr", action="append", default=[], metavar="N=HEX", help="expected PCR value")
    parser.add_argument("--max-age", type=float, default=60.0, help="maximum attestation age, seconds")
    parser.add_argument("--allow-debug", action="store_true")


def register(subparsers: Any) -> None:
    relay = subparsers.add_parser(
        "relay", help="chain side: deploy, register enclaves, run the relay (and its database) or a verifier"
    )
    commands = relay.add_subparsers(dest="relay_command", required=True)

    deploy = commands.add_parser("deploy", help="deploy an InferenceVerifier (the sender becomes admin)")
    deploy.add_argument("--rpc", required=True)
    deploy.add_argument("--max-attestation-age-ms", type=int, default=10 * 60 * 1000)
    deploy.add_argument("--enclave-ttl", type=int, default=24 * 3600, help="registration lifetime, seconds")
    _key_options(deploy, "admin")
    deploy.set_defaults(handler=cmd_deploy)

    approve = commands.add_parser("approve", help="admin: approve images and models, trust verifier keys")
    approve.add_argument("--rpc", required=True)
    approve.add_argument("--contract", required=True)
    approve.add_argument(
        "--image-pcrs",
        nargs=3,
        action="append",
        default=[],
        metavar=("PCR0", "PCR1", "PCR2"),
        help="approve keccak256(PCR0 || PCR1 || PCR2), e.g. from nitro-cli describe-eif",
    )
    approve.add_argument("--image-id", action="append", default=[], help="approve an image id directly")
    approve.add_argument(
        "--model",
        action="append",
        default=[],
        help="approve a model (sha256 of its ONNX file), with its output layout from the manifest",
    )
    approve.add_argument(
        "--manifest",
        default="models",
        metavar="DIR",
        help="directory of the manifest.json that lists each --model's outputs (default: models)",
    )
    approve.add_argument(
        "--verifier", action="append", default=[], help="trust an attestation-verifier address"
    )
    _key_options(approve, "admin")
    approve.set_defaults(handler=cmd_approve)

    reg = commands.add_parser("register", help="attest an enclave and register its key on chain")
    reg.add_argument("--enclave", required=True, help="enclave base URL")
    reg.add_argument("--rpc", required=True)
    reg.add_argument("--contract", required=True)
    reg.add_argument("--verifier-url", help="an attestation verifier service (verinfer relay verifier)")
    reg.add_argument(
        "--verifier-fetches",
        action="store_true",
        help="let the verifier service fetch the attestation (it must list the enclave in --enclave-allow); "
        "by default this command fetches it for a nonce from the service and posts the document",
    )
    reg.add_argument("--verifier-key-env", help="or: verify here and sign with the key in this env variable")
    _policy_options(reg)
    _key_options(reg, "transaction sender")
    reg.set_defaults(handler=cmd_register)

    # `verinfer relay run` options (stable: bench/chaos.py drives the relay through them; /tmp/relay-cli.txt):
    #   required  --enclave URLS --rpc URL --contract ADDRESS --chain-id N
    #   state     --db relay.sqlite3 (or postgresql://..., or $VERINFER_RELAY_DB) --confirmations 2
    #             --start-block 0 --poll 1.0
    #   economics --min-fee-per-gas-gwei 1 --max-callback-gas 1000000 --max-gas-price-gwei 100
    #             (alias --gas-price-cap-gwei) --bump-percent 12.5 --stuck-after 30
    #   anchoring --anchor-min 0 (off) --anchor-max 512 --batch-token-env NAME
    #   HTTP      --http-deadline 10 --http-max-bytes 16777216
    #   workers   --lease 10 --metrics-port 0 (off)
    #   key       --key-env VERINFER_KEY | --keystore FILE --password-env NAME
    run = commands.add_parser("run", help="watch requests, fulfil them with enclaves, anchor receipt batches")
    run.add_argument("--enclave", required=True, help="enclave URL(s), comma separated")
    run.add_argument("--rpc", required=True)
    run.add_argument("--contract", required=True)
    run.add_argument(
        "--chain-id",
        type=int,
        required=True,
        help="the chain to sign for; the relay refuses to start if the RPC reports another",
    )
    run.add_argument("--db", metavar="URL", help=DB_HELP)
    run.add_argument(
        "--confirmations",
        type=int,
        default=2,
        help="blocks on top before an event is read or a transaction of ours counts as confirmed",
    )
    run.add_argument("--start-block", type=int, default=0)
    run.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    run.add_argument(
        "--min-fee-per-gas-gwei",
        type=float,
        default=1.0,
        help="serve a request only if fee >= this x (callbackGasLimit + the fulfil overhead); gwei",
    )
    run.add_argument(
        "--max-callback-gas", type=int, default=1_000_000, help="skip requests asking for more callback gas"
    )
    run.add_argument(
        "--max-gas-price-gwei",
        "--gas-price-cap-gwei",
        dest="max_gas_price_gwei",
        type=float,
        default=100.0,
        help="never sign or bump a transaction above this gas price (wait instead); gwei",
    )
    run.add_argument(
        "--bump-percent",
        type=float,
        default=12.5,
        help="price rise of a stuck transaction's replacement, percent (nodes require >= 10)",
    )
    run.add_argument(
        "--stuck-after", type=float, default=30.0, help="seconds before an unmined transaction is re-priced"
    )
    run.add_argument(
        "--anchor-min", type=int, default=0, help="anchor receipt batches of at least N (0: off)"
    )
    run.add_argument("--anchor-max", type=int, default=512)
    run.add_argument(
        "--batch-token-env",
        metavar="NAME",
        help="env variable holding the bearer token for the enclaves' /receipts/batch "
        "(the one whose sha256 they were started with, --batch-token-sha256)",
    )
    run.add_argument(
        "--http-deadline",
        type=float,
        default=10.0,
        help="total seconds for each call to an enclave (connect, send, whole answer)",
    )
    run.add_argument(
        "--llm-deadline",
        type=float,
        default=120.0,
        help="total seconds for a text completion from an enclave's LLM (POST /v1/completions)",
    )
    run.add_argument(
        "--http-max-bytes", type=int, default=16 * 1024 * 1024, help="largest enclave answer read, bytes"
    )
    run.add_argument(
        "--lease",
        type=float,
        default=10.0,
        help="seconds a claim on a request lasts without renewal: when several workers share a PostgreSQL "
        "--db, a killed worker's requests are taken over this long after its last renewal",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics (claims, lease take-overs, leadership, lag) on 127.0.0.1:PORT/metrics",
    )
    _key_options(run, "relay")
    run.set_defaults(handler=cmd_run)

    database = commands.add_parser("db", help="the relay's state database: schema status and migrations")
    db_commands = database.add_subparsers(dest="db_command", required=True)
    status = db_commands.add_parser(
        "status", help="backend, location, schema version (database and relay) and pending migrations"
    )
    status.add_argument("--db", metavar="URL", help=DB_HELP)
    status.set_defaults(handler=cmd_db_status)
    migrate = db_commands.add_parser("migrate", help="apply the pending schema migrations")
    migrate.add_argument("--db", metavar="URL", help=DB_HELP)
    migrate.set_defaults(handler=cmd_db_migrate)

    verifier = commands.add_parser("verifier", help="run the attestation verifier service")
    verifier.add_argument("--host", default="127.0.0.1")
    verifier.add_argument("--port", type=int, default=8100)
    verifier.add_argument(
        "--enclave-allow",
        action="append",
        default=[],
        metavar="URL",
        help="an enclave base URL the service may fetch attestations from (repeatable); "
        "without any, callers post documents for a POST /challenges nonce",
    )
    verifier.add_argument(
        "--max-body", type=int, default=64 * 1024, help="largest request body, bytes (413 beyond)"
    )
    verifier.add_argument(
        "--challenge-ttl", type=float, default=60.0, help="seconds a POST /challenges nonce stays valid"
    )
    verifier.add_argument(
        "--max-challenges", type=int, default=10_000, help="most challenge nonces outstanding at once"
    )
    verifier.add_argument(
        "--fetch-deadline",
        type=float,
        default=10.0,
        help="total seconds to fetch an attestation from an allowed enclave",
    )
    _policy_options(verifier)
    _key_options(verifier, "verifier")
    verifier.set_defaults(handler=cmd_verifier)
