"""Gas used by the contracts on anvil, with a real enclave (simulated NSM) signing real receipts.

Run: `make bench` (or `.venv/bin/python -m bench.bench_gas`). Reports registerEnclave, verifyReceipt (as an
eth_estimateGas of the view), fulfil without a callback, and anchoring N receipts as one Merkle batch versus N
single anchors.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import httpx
import numpy as np
from eth_account import Account
from web3.logs import DISCARD

from attestation import Policy, TrustedRoot
from protocol import merkle
from protocol.images import image_id
from protocol.onchain import fulfilment_id
from protocol.receipts import SignedReceipt
from protocol.tensors import encode_tensors
from relay.chain import TxSender, connect
from relay.deployment import configure, deploy_verifier, served_approvals
from relay.registration import attest_enclave, sign_registration
from verinfer.processes import ANVIL_KEYS, batch_token_args, bearer, running_anvil, running_server

BATCH_SIZES = (1, 10, 100, 500)
TOKEN = secrets.token_hex(32)  # the relay's credential for receipt batches


def receipt_args(signed: SignedReceipt) -> tuple[bytes, bytes, bytes, bytes, int]:
    r = signed.receipt
    return (r.request_id, r.model_hash, r.input_hash, r.output_hash, r.timestamp_ms)


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_anvil() as rpc,
        running_server(
            "--nsm", "sim", "--pki-dir", str(Path(tmp) / "pki"), *batch_token_args(TOKEN)
        ) as enclave,
    ):
        w3 = connect(rpc)
        admin = TxSender(w3, Account.from_key(ANVIL_KEYS[0]))
        relay = TxSender(w3, Account.from_key(ANVIL_KEYS[2]))
        verifier_key = Account.from_key(ANVIL_KEYS[1])
        contract = deploy_verifier(admin)
        attested = attest_enclave(enclave, Policy(root=TrustedRoot.from_file(Path(tmp) / "pki" / "root.pem")))
        served = httpx.get(f"{enclave}/models").json()["models"]
        models = {m["name"]: bytes.fromhex(m["sha256"]) for m in served}
        configure(
            admin,
            contract,
            images=[image_id(dict(attested.pcrs))],
            models=served_approvals(served),
            attestation_verifiers=[verifier_key.address],
        )
        registration = sign_registration(
            verifier_key, attested, chain_id=w3.eth.chain_id, contract=contract.address
        )
        register = admin.transact(
            contract.functions.registerEnclave(
                registration.public_key,
                registration.image_id,
                registration.attestation_timestamp_ms,
                registration.user_data_hash,
                registration.encryption_key,
                registration.signature,
            )
        )
        rows = [("registerEnclave (first registration)", register["gasUsed"])]

        body = httpx.post(
            f"{enclave}/infer", json={"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}
        ).json()
        signed = SignedReceipt.from_json(body["receipt"])
        verify_gas = contract.functions.verifyReceipt(receipt_args(signed), signed.signature).estimate_gas()
        rows.append(("verifyReceipt (view, as a call from a transaction)", verify_gas))

        data = encode_tensors([("features", np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))])
        requested = relay.transact(contract.functions.requestInference(models["iris-mlp"], data, 0, 3600))
        rows.append(("requestInference (iris-mlp input, 34 bytes)", requested["gasUsed"]))
        request_id = contract.events.InferenceRequested().process_receipt(requested, errors=DISCARD)[0][
            "args"
        ]["requestId"]
        tensors = [{"name": "features", "shape": [1, 4], "data": [6.7, 3.0, 5.2, 2.3]}]
        answer = httpx.post(
            f"{enclave}/infer",
            json={
                "model": "iris-mlp",
                "inputs": tensors,
                # The receipt names the fulfiller (protocol/onchain.py), so a copied fulfil pays no one else.
                "request_id": "0x" + fulfilment_id(bytes(request_id), relay.account.address).hex(),
            },
        ).json()
        answer_receipt = SignedReceipt.from_json(answer["receipt"])
        output = encode_tensors(
            [
                ("probabilities", np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(1, 3)),
                ("label", np.array(answer["outputs"][1]["data"], dtype=np.int64)),
            ]
        )
        fulfil = relay.transact(
            contract.functions.fulfill(
                request_id,
                output,
                answer_receipt.receipt.timestamp_ms,
                w3.to_checksum_address(answer_receipt.enclave),
                answer_receipt.signature,
            )
        )
        rows.append(("fulfill, no callback (EOA requester)", fulfil["gasUsed"]))

        single = relay.transact(contract.functions.anchorReceipt(receipt_args(signed), signed.signature))[
            "gasUsed"
        ]
        rows.append(("anchorReceipt (one receipt)", single))
        print(f"{'operation':<56} {'gas':>10}")
        for label, gas in rows:
            print(f"{label:<56} {gas:>10,}")

        print(f"\n{'receipts':>8} {'one batch (anchorBatch)':>24} {'N x anchorReceipt':>20} {'ratio':>8}")
        cursor = 2  # the two receipts above are already in the enclave's log
        for size in BATCH_SIZES:
            for _ in range(size):
                httpx.post(f"{enclave}/infer", json={"model": "iris-ols", "inputs": [[5.1, 3.5, 1.4]]})
            batch = httpx.post(
                f"{enclave}/receipts/batch", headers=bearer(TOKEN), json={"from": cursor, "max": size}
            ).json()
            cursor = batch["next"]
            tx = relay.transact(
                contract.functions.anchorBatch(
                    bytes.fromhex(batch["root"][2:]), batch["count"], bytes.fromhex(batch["signature"][2:])
                )
            )
            receipts = [SignedReceipt.from_json(r) for r in batch["receipts"]]
            assert merkle.root([r.receipt.digest() for r in receipts]) == bytes.fromhex(batch["root"][2:])
            singles = size * single
            print(f"{size:>8} {tx['gasUsed']:>24,} {singles:>20,} {singles / tx['gasUsed']:>7.1f}x")
        proof = merkle.proof([r.receipt.digest() for r in receipts], size // 2)
        prove_gas = contract.functions.proveReceipt(
            receipt_args(receipts[size // 2]), bytes.fromhex(batch["root"][2:]), proof
        ).estimate_gas()
        print(f"\nproveReceipt for one receipt in a batch of {size} (view): {prove_gas:,} gas")


if __name__ == "__main__":
    main()
