"""`verinfer seal` and `verinfer unseal`: inputs sealed to an attested enclave for on-chain requests, and
outputs sealed back to a requester's key (protocol/sealing.py, docs/PROTOCOL.md "Sealed requests").

`seal` verifies the attestation first (root, pinned image, and the manifest it attests) and seals only to
the X25519 key that document binds (`user_data[32:64]`): never to a key taken on trust.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from attestation.cli import EXIT_OK, EXIT_REJECTED, UsageError, add_policy_options, verification_time

from .verify_cli import add_pin_options

DESCRIPTION = """\
Seal a model's inputs to an attested enclave, for InferenceVerifier.requestSealedInference: the output is
the sealedInput (0x hex) and the enclave address to name as its `enclave`. The attestation must verify
against the root and a pinned image (--pcr 0=, 1=, 2=, --image-id, --policy, or --allow-any-image), and the
manifest must be the attested one; the inputs are checked against the model's signature, encoded as the
canonical tensor encoding and sealed with HPKE to the encryption key the document binds.

Exit codes: 0 sealed, 1 the attestation or its key binding is refused, 2 usage or I/O error.
"""

UNSEAL_DESCRIPTION = """\
Open an output sealed to your key (requestSealedInference's outputKey) and print its tensors as JSON.
`--keygen FILE` makes such a key instead: the private key goes to FILE (mode 0600, hex) and the public key,
the outputKey to pass on chain, is printed.
"""

AEADS = {"chacha20poly1305": 0x0003, "aes128gcm": 0x0001}


def _hex_or_file(value: str, what: str) -> bytes:
    """0x-hex given inline, or a file holding 0x-hex (or raw bytes)."""
    text = value
    if not value.startswith("0x"):
        try:
            raw = Path(value).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {what} {value}: {exc}") from exc
        stripped = raw.strip()
        if not stripped.startswith(b"0x"):
            return raw
        text = stripped.decode("ascii", "replace")
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError as exc:
        raise UsageError(f"{what} is not 0x-hex: {exc}") from exc


def _inputs(path: str) -> Any:
    from .verify_cli import _read_json

    document = _read_json(path, "input")
    return document["inputs"] if isinstance(document, dict) and "inputs" in document else document


def cmd_seal(args: argparse.Namespace) -> int:
    from protocol.addresses import address_of, checksum_address
    from protocol.binding import BindingError, split_user_data
    from protocol.errors import RequestError
    from protocol.inputs import parse_inputs
    from protocol.sealing import seal_input
    from protocol.tensors import encode_tensors

    from .verify import VerificationReport, _check_attestation, is_pinned
    from .verify_cli import _evidence, _pinning

    attestation, manifest = _evidence(args)
    policy, image_ids = _pinning(args)
    report = VerificationReport(
        simulated=not policy.root.is_aws,
        pinned=is_pinned(policy, image_ids),
        allow_any_image=args.allow_any_image,
    )
    public_key, user_data = _check_attestation(
        report, attestation, policy, verification_time(args, attestation), image_ids
    )
    if not report.verified:
        for check in report.checks:
            print(f"[{check.status.upper():>7}] {check.name:<12} {check.detail}")
        print(f"NOT SEALED: {report.verdict_line}")
        return EXIT_REJECTED
    try:
        attested = split_user_data(user_data)
    except BindingError as exc:
        print(f"NOT SEALED: {exc}")
        return EXIT_REJECTED
    encryption_key = attested.encryption_key
    if encryption_key is None or public_key is None:
        print("NOT SEALED: the attestation binds no encryption key (an enclave from before sealing)")
        return EXIT_REJECTED
    if attested.manifest_digest != manifest.digest:
        print("NOT SEALED: the manifest is not the one the attestation binds (user_data[:32])")
        return EXIT_REJECTED
    entry = manifest.models.get(args.model)
    if entry is None:
        raise UsageError(f"model {args.model!r} is not in the manifest")
    try:
        tensors = parse_inputs(entry, _inputs(args.input))
    except RequestError as exc:
        raise UsageError(f"the inputs do not fit {args.model}: {exc.message}") from exc
    sealed = seal_input(encryption_key, entry.model_hash, encode_tensors(tensors), AEADS[args.aead])
    result = {
        "sealedInput": "0x" + sealed.hex(),
        "enclave": checksum_address(address_of(public_key)),
        "encryptionKey": "0x" + encryption_key.hex(),
        "modelHash": "0x" + entry.model_hash.hex(),
        "simulated": report.simulated,
    }
    print(json.dumps(result, indent=2))
    return EXIT_OK


def _keygen(path: str) -> int:
    """A requester's X25519 key, written once to a new file only its owner can read (the enclave's own
    SealingKey has no way out of its process; this one is meant to be kept)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot create {path} (it must not exist): {exc}") from exc
    with os.fdopen(descriptor, "w") as out:
        out.write("0x" + private.hex() + "\n")
    print(json.dumps({"outputKey": "0x" + public.hex(), "keyFile": path}, indent=2))
    return EXIT_OK


def cmd_unseal(args: argparse.Namespace) -> int:
    import orjson

    from protocol.errors import ProtocolError
    from protocol.hpke import SealingKey
    from protocol.sealing import open_output
    from protocol.tensors import decode_tensors, dtype_of

    if args.keygen:
        return _keygen(args.keygen)
    if not (args.key and args.sealed_input and args.output):
        raise UsageError("give --key, --sealed-input and OUTPUT (or --keygen FILE)")
    try:
        key = SealingKey.from_private_bytes(_hex_or_file(args.key, "key"))
        plaintext = open_output(
            key, _hex_or_file(args.sealed_input, "sealed input"), _hex_or_file(args.output, "output")
        )
        tensors = decode_tensors(plaintext)
    except ProtocolError as exc:
        print(f"NOT OPENED: {exc}")
        return EXIT_REJECTED
    # numpy's own serialisation: float32 values print as the shortest decimal that reads back exactly
    body = [
        {"name": name, "datatype": dtype_of(array).v2, "shape": list(array.shape), "data": array.ravel()}
        for name, array in tensors
    ]
    print(orjson.dumps({"outputs": body}, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def register(subparsers: Any) -> None:
    seal = subparsers.add_parser(
        "seal",
        help="seal a model's inputs to an attested enclave (for an on-chain sealed request)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seal.add_argument("--attestation", required=True, metavar="FILE", help="the enclave's attestation")
    seal.add_argument(
        "--manifest",
        required=True,
        metavar="FILE",
        help="model manifest JSON (GET /models): the model's hash and input signature come from it",
    )
    seal.add_argument("--model", required=True, metavar="NAME", help="the model the request is for")
    seal.add_argument(
        "--input", required=True, metavar="FILE", help="JSON: an /infer request or its `inputs` value"
    )
    seal.add_argument("--aead", choices=sorted(AEADS), default="chacha20poly1305")
    add_pin_options(seal, "image pin (one is required)")
    add_policy_options(seal, json_output=False)
    seal.set_defaults(handler=cmd_seal)

    unseal = subparsers.add_parser(
        "unseal",
        help="open an output sealed to your key; --keygen makes the key",
        description=UNSEAL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    unseal.add_argument("output", nargs="?", help="the sealed output: 0x-hex or a file")
    unseal.add_argument("--key", metavar="FILE|0xHEX", help="your private key (from --keygen)")
    unseal.add_argument(
        "--sealed-input", metavar="FILE|0xHEX", help="the request's sealedInput (the output is bound to it)"
    )
    unseal.add_argument(
        "--keygen", metavar="FILE", help="write a new private key to FILE and print its outputKey"
    )
    unseal.set_defaults(handler=cmd_unseal)
