"""`verinfer relay deploy | register | run | verifier`."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from attestation.cli import EXIT_OK, EXIT_REJECTED, UsageError, pcr_args
from attestation.roots import resolve_root
from attestation.verify import Policy


def _account(args: argparse.Namespace, env: str | None = None) -> Any:
    from .keys import KeyError_, load_account

    try:
        return load_account(
            key_env=env or args.key_env,
            keystore=getattr(args, "keystore", None),
            password_env=getattr(args, "password_env", None),
        )
    except KeyError_ as exc:
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
    models = [_hex32(value, "--model") for value in args.model]
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
    for model in models:
        print(f"approved model 0x{model.hex()}")
    for verifier in args.verifier:
        print(f"trusted attestation verifier {verifier}")
    return EXIT_OK


def cmd_register(args: argparse.Namespace) -> int:
    import httpx

    from .chain import ChainError, TxSender, bind, connect
    from .registration import (
        Registration,
        RegistrationError,
        attest_enclave,
        sign_registration,
        submit_registration,
    )

    w3 = connect(args.rpc)
    contract = bind(w3, "InferenceVerifier", args.contract)
    if args.verifier_url:
        response = httpx.post(
            f"{args.verifier_url}/registrations",
            timeout=30,
            json={"enclave": args.enclave, "chainId": w3.eth.chain_id, "contract": contract.address},
        )
        if response.status_code != 200:
            print(f"REJECTED by the verifier: {response.text}")
            return EXIT_REJECTED
        registration = Registration.from_json(response.json())
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
    print(f"registered enclave {enclave} for image 0x{registration.image_id.hex()}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .chain import TxSender, bind, connect
    from .runner import Relay
    from .state import RelayState

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    w3 = connect(args.rpc)
    account = _account(args)
    cap = int(args.gas_price_cap_gwei * 10**9) if args.gas_price_cap_gwei is not None else None
    relay = Relay(
        w3,
        bind(w3, "InferenceVerifier", args.contract),
        TxSender(w3, account, gas_price_cap=cap),
        [url for url in args.enclave.split(",") if url],
        RelayState(args.db),
        confirmations=args.confirmations,
        start_block=args.start_block,
        anchor_min=args.anchor_min,
        anchor_max=args.anchor_max,
    )
    logging.getLogger("verinfer.relay").info(
        "relay %s watching %s on %s", account.address, args.contract, args.rpc
    )
    relay.run(poll_interval=args.poll)
    return EXIT_OK


def cmd_verifier(args: argparse.Namespace) -> int:
    import uvicorn

    from .verifier_service import create_verifier_app

    account = _account(args)
    app = create_verifier_app(account, _policy(args))
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("verinfer.verifier").info(
        "attestation verifier %s on %s:%d", account.address, args.host, args.port
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
        "relay", help="chain side: deploy, register enclaves, run the relay or a verifier"
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
        "--model", action="append", default=[], help="approve a model (sha256 of its ONNX file)"
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
    reg.add_argument("--verifier-key-env", help="or: verify here and sign with the key in this env variable")
    _policy_options(reg)
    _key_options(reg, "transaction sender")
    reg.set_defaults(handler=cmd_register)

    run = commands.add_parser("run", help="watch requests, fulfil them with enclaves, anchor receipt batches")
    run.add_argument("--enclave", required=True, help="enclave URL(s), comma separated")
    run.add_argument("--rpc", required=True)
    run.add_argument("--contract", required=True)
    run.add_argument("--db", default="relay.sqlite3", help="SQLite state file")
    run.add_argument("--confirmations", type=int, default=2)
    run.add_argument("--start-block", type=int, default=0)
    run.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    run.add_argument("--gas-price-cap-gwei", type=float, help="wait while the gas price is above this")
    run.add_argument(
        "--anchor-min", type=int, default=0, help="anchor receipt batches of at least N (0: off)"
    )
    run.add_argument("--anchor-max", type=int, default=512)
    _key_options(run, "relay")
    run.set_defaults(handler=cmd_run)

    verifier = commands.add_parser("verifier", help="run the attestation verifier service")
    verifier.add_argument("--host", default="127.0.0.1")
    verifier.add_argument("--port", type=int, default=8100)
    _policy_options(verifier)
    _key_options(verifier, "verifier")
    verifier.set_defaults(handler=cmd_verifier)
