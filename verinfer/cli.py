"""`verinfer <group> <command>`: the front door. Each package registers its own subcommands; the host-side
ones (verify, proxy, image stage) live in verinfer/, outside the measured enclave tree.

`verinfer` alone prints the help and exits 2 (no command was run). A command whose output is cut short
(`verinfer ... | head`) ends quietly with exit 141, as a tool killed by SIGPIPE would."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from attestation import cli as attest_cli
from enclave import cli as enclave_cli
from relay import cli as relay_cli

from . import explorer_cli, fleet, image, proxy, seal_cli, verify_cli

EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verinfer", description="verifiable AI inference in attested enclaves"
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    attest_cli.register(groups)
    enclave_cli.register(groups)
    image.register(groups)
    verify_cli.register(groups)
    seal_cli.register(groups)
    explorer_cli.register(groups)
    proxy.register(groups)
    fleet.register(groups)
    relay_cli.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        code = _run(parser, argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit-time flush
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except SystemExit:  # argparse: --help, or a usage error
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
        raise
    return code


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    if args.group is None:
        parser.print_help()
        return attest_cli.EXIT_USAGE
    try:
        return int(args.handler(args))
    except attest_cli.UsageError as exc:
        print(f"verinfer: error: {exc}", file=sys.stderr)
        return attest_cli.EXIT_USAGE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not report the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
