"""`verinfer <group> <command>`: the front door. Each package registers its own subcommands; the host-side
ones (verify, proxy, image stage) live in verinfer/, outside the measured enclave tree."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from attestation import cli as attest_cli
from enclave import cli as enclave_cli
from relay import cli as relay_cli

from . import image, proxy, verify_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verinfer", description="verifiable AI inference in attested enclaves"
    )
    groups = parser.add_subparsers(dest="group", required=True)
    attest_cli.register(groups)
    enclave_cli.register(groups)
    image.register(groups)
    verify_cli.register(groups)
    proxy.register(groups)
    relay_cli.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except attest_cli.UsageError as exc:
        print(f"verinfer: error: {exc}", file=sys.stderr)
        return attest_cli.EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
