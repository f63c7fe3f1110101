"""The relay's one exception hierarchy: the loop tells "try again later" from "never" by type alone.

Three members live beside the code that raises them: `http_client.OutboundError` (an enclave or verifier
call failed), `registration.RegistrationError` (an attestation was refused) and `keys.KeyConfigError`."""

from __future__ import annotations


class RelayError(Exception):
    """Anything the relay itself raises on purpose."""


class ChainError(RelayError):
    """A transaction reverted or could not be sent; `error` is the contract's custom error name if known."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class GasPriceTooHigh(ChainError):
    """The network's gas price is above the configured cap: wait rather than overpay."""


class ChainIdMismatch(RelayError):
    """The RPC node reports a different chain than the one the relay is configured to sign for."""


class EnclaveUnavailable(RelayError):
    """The enclave could not be reached or answered with an error: try again later, or another one."""


class PermanentFailure(RelayError):
    """The request can never be served (for example its input does not encode the model's inputs)."""


class ReceiptsEvicted(RelayError):
    """The enclave no longer keeps the receipts asked for; `first` is the first one it still has."""

    def __init__(self, message: str, first: int) -> None:
        super().__init__(message)
        self.first = first


class StateError(RelayError):
    """The relay's state database cannot be reached or used: no server, wrong credentials, no such database,
    a schema this relay cannot read (too old, or newer than it), or another chain's state. One line."""


class LostClaim(RelayError):
    """Another relay worker holds the request now (this worker's lease ran out): it sends nothing for it."""
