"""`python -m enclave serve|measure`: the image's entry point, without the `verinfer` front door."""

from __future__ import annotations

import argparse
import sys

from attestation.cli import EXIT_USAGE, UsageError

from . import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enclave")
    commands = parser.add_subparsers(dest="command", required=True)
    cli.register_serve(commands)
    cli.register_measure(commands, "measure")
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except UsageError as exc:
        print(f"enclave: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code


sys.exit(main())
