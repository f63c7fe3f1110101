"""Transport to the real NSM: the /dev/nsm character device and its single raw ioctl.

The driver takes `struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; }` with
`struct nsm_iovec { __u64 addr; __u64 len; }` through NSM_IOCTL_RAW = _IOWR(0x0A, 0, 32) = 0xC0200A00,
and writes the response length back into `response.len`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Callable

from .client import MAX_REQUEST, MAX_RESPONSE, NsmError, NsmErrorCode

NSM_DEVICE = "/dev/nsm"
NSM_IOCTL_RAW = 0xC0200A00
_RAW = struct.Struct("=QQQQ")  # request.addr, request.len, response.addr, response.len

IoctlFn = Callable[[int, int, bytearray], object]


def pack_raw(request_addr: int, request_len: int, response_addr: int, response_len: int) -> bytearray:
    return bytearray(_RAW.pack(request_addr, request_len, response_addr, response_len))


def response_length(raw: bytearray) -> int:
    length: int = _RAW.unpack(raw)[3]
    return length


def _default_ioctl(fd: int, request: int, arg: bytearray) -> object:
    return fcntl.ioctl(fd, request, arg, True)


class NitroTransport:
    """Sends raw CBOR requests to /dev/nsm; one request at a time, as the driver expects per fd."""

    def __init__(self, device: str = NSM_DEVICE, *, ioctl: IoctlFn = _default_ioctl) -> None:
        self._fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        self._ioctl = ioctl
        self._lock = threading.Lock()

    def __call__(self, request: bytes) -> bytes:
        if len(request) > MAX_REQUEST:
            raise NsmError(
                NsmErrorCode.INPUT_TOO_LARGE,
                f"request of {len(request)} bytes exceeds {MAX_REQUEST}",
            )
        request_buf = ctypes.create_string_buffer(request, len(request))
        response_buf = ctypes.create_string_buffer(MAX_RESPONSE)
        raw = pack_raw(
            ctypes.addressof(request_buf), len(request), ctypes.addressof(response_buf), MAX_RESPONSE
        )
        with self._lock:
            try:
                self._ioctl(self._fd, NSM_IOCTL_RAW, raw)
            except OSError as exc:
                raise NsmError(_errno_code(exc.errno), f"ioctl failed: {exc}") from exc
        length = response_length(raw)
        if length > MAX_RESPONSE:
            raise NsmError(
                NsmErrorCode.BUFFER_TOO_SMALL,
                f"response of {length} bytes exceeds {MAX_RESPONSE}",
            )
        return response_buf.raw[:length]

    def close(self) -> None:
        os.close(self._fd)


def _errno_code(number: int | None) -> NsmErrorCode:
    if number == errno.EINVAL:
        return NsmErrorCode.INVALID_ARGUMENT
    if number in (errno.EMSGSIZE, errno.E2BIG):
        return NsmErrorCode.INPUT_TOO_LARGE
    if number == errno.ENOMEM:
        return NsmErrorCode.BUFFER_TOO_SMALL
    return NsmErrorCode.INTERNAL_ERROR
