"""Several enclaves behind one address: the nginx configuration for it, and `verinfer fleet nginx-config`.

Each enclave keeps its own key and registration; nginx (Debian's package) spreads requests over them and
moves on when one fails. What makes a fleet safe to put behind one URL is in the enclaves and the clients,
not in the proxy: every receipt names its signer, and `GET /attestation?signer=0x...` is answered only by
the enclave that signs as that address (the others answer 404 `unknown_signer`, and nginx tries the next
one), so a client attests exactly the enclave that signed what it got. The proxy can drop or misroute
traffic, but it cannot make a forged answer verify: it is outside the trust boundary (docs/TRUST.md).
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attestation.cli import EXIT_OK, UsageError

ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
# An enclave that failed (connection refused, timeout, 502/503) is left out for this long before nginx
# tries it again: the passive health check of open-source nginx.
FAIL_TIMEOUT_S = 5
CONNECT_TIMEOUT_S = 2
READ_TIMEOUT_S = 300  # LLM streams: the longest answer a client may wait for


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")  # sbin: not on every PATH
    if found is None:
        raise FileNotFoundError("no nginx: install Debian's nginx package (`make setup` does, as root)")
    return found


def _check_address(value: str, option: str) -> str:
    if not ADDRESS.match(value):
        raise UsageError(f"{option} {value!r}: expected HOST:PORT")
    return value


def nginx_config(
    listen: str, enclaves: Sequence[str], *, prefix: Path | None = None, run_as: str | None = None
) -> str:
    """An nginx.conf serving `enclaves` (HOST:PORT each) on `listen`. `prefix`: where nginx keeps its pid,
    error log and temporary files (a private folder for tests; default: the package's own paths);
    `run_as`: the `user` directive (as root, the workers' user)."""
    if not enclaves:
        raise UsageError("a fleet needs at least one --enclave")
    _check_address(listen, "--listen")
    servers = "\n".join(
        f"        server {_check_address(e, '--enclave')} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;"
        for e in enclaves
    )
    files = ""
    if prefix is not None:
        files = f"""pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
"""
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind};" for kind in kinds)
    else:
        temp = ""
    user = f"user {run_as};\n" if run_as else ""
    return f"""# verinfer fleet: {len(enclaves)} enclaves behind {listen} (verinfer/fleet.py)
{user}{files}worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}
    client_max_body_size 16m;
    upstream enclaves {{
{servers}
        keepalive 32;
    }}
    server {{
        listen {listen};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_connect_timeout {CONNECT_TIMEOUT_S}s;
        proxy_read_timeout {READ_TIMEOUT_S}s;
        proxy_send_timeout {READ_TIMEOUT_S}s;
        proxy_buffering off;          # streamed completions reach the client as they are signed
        proxy_request_buffering on;   # a whole request in hand can be sent again to another enclave
        # An enclave that refuses, times out or is draining (502/503): the next one serves the request.
        # non_idempotent: an inference is a pure function of its request; running it again elsewhere
        # yields another receipt for the same answer, never a second effect (on-chain fulfilment is
        # once per request id, enforced by the contract).
        proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        proxy_next_upstream_tries {len(enclaves)};
        location = /attestation {{
            # ?signer=0x...: only the enclave that signs as it answers; the others say 404 unknown_signer
            proxy_next_upstream error timeout http_404 http_502 http_503;
            proxy_pass http://enclaves;
        }}
        location / {{
            proxy_pass http://enclaves;
        }}
    }}
}}
"""


def cmd_nginx_config(args: argparse.Namespace) -> int:
    print(nginx_config(args.listen, args.enclave), end="")
    return EXIT_OK


def register(subparsers: Any) -> None:
    fleet = subparsers.add_parser("fleet", help="several enclaves behind one address (nginx)")
    commands = fleet.add_subparsers(dest="fleet_command", required=True)
    config = commands.add_parser(
        "nginx-config",
        help="print an nginx.conf that serves the enclaves on one address (docs/DEPLOYMENT.md)",
    )
    config.add_argument("--listen", required=True, metavar="HOST:PORT")
    config.add_argument(
        "--enclave", action="append", required=True, metavar="HOST:PORT", help="an enclave (repeat)"
    )
    config.set_defaults(handler=cmd_nginx_config)
