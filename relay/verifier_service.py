"""`verinfer relay verifier`: the attestation verifier as a service (what a verifier enclave would run).

POST /registrations {"enclave": URL, "chainId": int, "contract": address} fetches the enclave's attestation
with a fresh nonce, verifies it against the configured root and PCR policy, and answers the signed
EIP-712 registration that anyone may then submit with registerEnclave.
"""

from __future__ import annotations

from typing import Any

import orjson
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Request
from fastapi.responses import Response
from web3 import Web3

from attestation import Policy

from .registration import RegistrationError, attest_enclave, sign_registration


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_verifier_app(verifier: LocalAccount, policy: Policy) -> FastAPI:
    app = FastAPI(title="verinfer attestation verifier", docs_url=None, redoc_url=None)

    @app.get("/")
    async def identity() -> Response:
        return _json(
            {
                "verifier": verifier.address,
                "root": policy.root.label,
                "simulated_root": not policy.root.is_aws,
                "pcrs": {str(i): v.hex() for i, v in policy.expected_pcrs.items()},
            }
        )

    @app.post("/registrations")
    async def registrations(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            enclave, chain_id, contract = body["enclave"], int(body["chainId"]), body["contract"]
            if not isinstance(enclave, str) or not Web3.is_address(contract):
                raise TypeError("bad field types")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _json(
                {"code": "invalid_request", "message": "body must be {enclave, chainId, contract}"}, 400
            )
        try:
            attested = attest_enclave(enclave, policy)
        except RegistrationError as exc:
            return _json({"code": "attestation_rejected", "message": str(exc)}, 422)
        registration = sign_registration(verifier, attested, chain_id=chain_id, contract=contract)
        return _json(registration.to_json())

    return app
