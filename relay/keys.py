"""Signing keys for the relay and the attestation verifier: from an environment variable or a keystore.

Keys are never printed, logged or returned; only addresses are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from .errors import RelayError


class KeyConfigError(RelayError, ValueError):
    """No usable key was configured."""


def load_account(
    *, key_env: str | None = None, keystore: str | Path | None = None, password_env: str | None = None
) -> LocalAccount:
    """From `$key_env` (0x-hex private key), or an encrypted JSON keystore unlocked with `$password_env`."""
    if keystore is not None:
        password = os.environ.get(password_env or "", "")
        if not password_env or password_env not in os.environ:
            raise KeyConfigError(
                f"keystore {keystore} needs its password in an environment variable (--password-env)"
            )
        try:
            secret = Account.decrypt(json.loads(Path(keystore).read_text()), password)
        except (OSError, ValueError) as exc:
            raise KeyConfigError(f"cannot unlock keystore {keystore}: {type(exc).__name__}") from None
        account: LocalAccount = Account.from_key(secret)
        return account
    if key_env is None or not os.environ.get(key_env):
        raise KeyConfigError(f"set the private key in ${key_env}" if key_env else "no key configured")
    try:
        loaded: LocalAccount = Account.from_key(os.environ[key_env])
    except (ValueError, TypeError):
        raise KeyConfigError(f"${key_env} does not hold a valid private key") from None
    return loaded
