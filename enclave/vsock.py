"""The in-enclave vsock listener: inside a Nitro enclave the only way in or out is AF_VSOCK.

The parent-side TCP -> vsock proxy is a host tool (verinfer/proxy.py); it is not part of the image.
"""

from __future__ import annotations

import socket

VMADDR_CID_ANY = 0xFFFFFFFF


def vsock_listener(port: int, cid: int = VMADDR_CID_ANY, backlog: int = 128) -> socket.socket:
    """A listening AF_VSOCK socket; raises OSError with a clear message where vsock is unavailable."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise OSError("this platform has no AF_VSOCK sockets")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((cid, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
