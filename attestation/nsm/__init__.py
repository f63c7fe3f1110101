"""NSM (Nitro Security Module) access: one client, a real `/dev/nsm` transport and a simulated one."""

from .client import NsmClient, NsmDescription, NsmError, NsmErrorCode, PcrState
from .factory import NsmUnavailableError, open_nsm

__all__ = [
    "NsmClient",
    "NsmDescription",
    "NsmError",
    "NsmErrorCode",
    "NsmUnavailableError",
    "PcrState",
    "open_nsm",
]
