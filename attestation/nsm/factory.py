"""Choosing an NSM backend explicitly: production never falls back to the simulator."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from ..sim_pki import SimulatorPki
from .client import NsmClient
from .nitro import NSM_DEVICE, NitroTransport
from .simulator import SimulatedNsmDevice

BackendKind = Literal["nitro", "sim"]


class NsmUnavailableError(RuntimeError):
    """The requested backend cannot be used here (for example no /dev/nsm outside an enclave)."""


def open_nsm(
    kind: BackendKind,
    *,
    device: str = NSM_DEVICE,
    pki_dir: str | Path | None = None,
    pcrs: Mapping[int, bytes] | None = None,
) -> NsmClient:
    """Open the named backend. `nitro` without the device is an error, never a silent simulation."""
    if kind == "nitro":
        if not os.path.exists(device):
            raise NsmUnavailableError(
                f"{device} does not exist: this is not a Nitro enclave "
                "(choose the simulator explicitly for development)"
            )
        return NsmClient(NitroTransport(device), simulated=False)
    if kind == "sim":
        return NsmClient(SimulatedNsmDevice(SimulatorPki(pki_dir), pcrs), simulated=True)
    raise NsmUnavailableError(f"unknown NSM backend {kind!r}; choose 'nitro' or 'sim'")
