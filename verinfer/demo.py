"""`make demo`: the end-to-end walk-through, printing each step and the command behind it."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from eth_account import Account
from web3.logs import DISCARD

from attestation import Policy, TrustedRoot
from attestation.measure import measure_tree
from enclave.image import measure_image
from protocol import merkle
from protocol.images import image_id
from protocol.receipts import SignedReceipt
from protocol.tensors import encode_tensors
from relay.chain import TxSender, connect, deploy
from relay.deployment import configure, deploy_verifier, served_approvals

from .cli import main as verinfer
from .client import Client
from .processes import (
    ANVIL_KEYS,
    VERINFER,
    batch_token_args,
    free_port,
    running_anvil,
    running_server,
    stop,
)

REPO = Path(__file__).resolve().parent.parent
# The relay's credential for POST /receipts/batch: fresh per demo run, only its sha256 reaches the enclave.
BATCH_TOKEN = secrets.token_hex(32)
WORK = REPO / ".demo"
LLM = "smollm2-135m-instruct"
HARDWARE_SAMPLE = REPO / "tests/fixtures/attestation/valid/marlin_oyster__risczero_testcase_aws.bin"
MEASURED = ["attestation", "enclave"]


def step(title: str) -> None:
    print(f"\n=== {title}")


def run(*argv: str, expect: int = 0) -> None:
    print("$ verinfer " + shlex.join(argv), flush=True)
    code = verinfer(list(argv))
    sys.stdout.flush()
    if code != expect:
        raise SystemExit(f"demo: expected exit {expect}, got {code}")


def show_json(label: str, data: object, limit: int = 400) -> None:
    text = json.dumps(data, separators=(",", ":"))
    print(f"{label}: {text[:limit]}{'...' if len(text) > limit else ''}")


def attestation_steps(pki: Path) -> None:
    document = WORK / "attestation.cbor"
    nonce = os.urandom(16).hex()

    step("1. Measure the enclave code the simulator will attest (PCR0/1/2, nitro-cli style)")
    measurement = measure_tree(REPO, app=MEASURED)
    for index, value in measurement.pcrs.items():
        print(f"PCR{index} {value.hex()}")

    step("2. A simulated NSM attests a public key with a verifier's fresh nonce")
    run(
        "attest",
        "simulate",
        "--pki-dir",
        str(pki),
        "--measure",
        str(REPO),
        *(arg for path in MEASURED for arg in ("--app", path)),
        "--public-key",
        "04" + "ab" * 64,
        "--nonce",
        nonce,
        "-o",
        str(document),
    )

    step("3. Inspect it (decoding only)")
    run("attest", "inspect", str(document))

    step("4. Verify against the simulator's root with a PCR and nonce policy")
    run(
        "attest",
        "verify",
        str(document),
        "--root",
        str(pki / "root.pem"),
        "--pcr",
        f"0={measurement.pcr0.hex()}",
        "--pcr",
        f"2={measurement.pcr2.hex()}",
        "--nonce",
        nonce,
        "--max-age",
        "60",
    )

    step("5. The same document against the AWS Nitro root is rejected: a simulation never passes as hardware")
    run("attest", "verify", str(document), "--root", "aws", expect=1)

    step("6. A real hardware document verifies against the pinned AWS root at its own timestamp")
    run("attest", "verify", str(HARDWARE_SAMPLE), "--root", "aws", "--at-document-time")


def demo_requests() -> dict[str, dict[str, object]]:
    mnist = np.load(REPO / "models" / "data" / "mnist-eval.npz")
    return {
        "iris-ols": {"model": "iris-ols", "inputs": [[5.1, 3.5, 1.4]]},
        "iris-mlp": {"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]},
        "mnist-lenet": {
            "model": "mnist-lenet",
            "inputs": (mnist["x"][:1, None] / 255.0).round(4).tolist(),
            "_label": int(mnist["y"][0]),
        },
    }


def verify_command(response: Path, request: Path, pki: Path, nonce: str) -> list[str]:
    """`verinfer verify` with the evidence the demo saved: response, request, attestation, manifest, root,
    pinned to the image the simulator attests (its image id, as the contract approves it) and to the
    auditor's nonce."""
    return [
        "verify",
        str(response),
        "--request",
        str(request),
        "--attestation",
        str(WORK / "enclave-attestation.json"),
        "--manifest",
        str(WORK / "manifest.json"),
        "--root",
        str(pki / "root.pem"),
        "--image-id",
        "0x" + image_id(measure_image(REPO / "models").pcrs).hex(),
        "--nonce",
        nonce,
        "--max-age",
        "600",
    ]


def inference_steps(url: str, pki: Path) -> None:
    with httpx.Client(base_url=url) as client:
        manifest = client.get("/models").json()
        (WORK / "manifest.json").write_text(json.dumps(manifest))
        names = ", ".join(m["name"] for m in manifest["models"])
        print(f"models: {names}; manifest digest {manifest['digest']}")

        step("8. One signed inference per model (POST /infer)")
        for name, request in demo_requests().items():
            expected = request.pop("_label", None)
            started = time.perf_counter()
            response = client.post("/infer", json=request)
            elapsed_ms = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            body = response.json()
            (WORK / f"request-{name}.json").write_text(json.dumps(request))
            (WORK / f"response-{name}.json").write_text(json.dumps(body))
            outputs = {o["name"]: o["data"] for o in body["outputs"]}
            print(f"\n{name}: {json.dumps(outputs)[:160]} ({elapsed_ms:.1f} ms round trip)")
            if expected is not None:
                print(f"  true digit: {expected}")
            show_json("  receipt", body["receipt"], 600)

        step("9. An auditor fetches a fresh attestation with their own nonce (GET /attestation?nonce=...)")
        nonce = os.urandom(16).hex()
        attestation = client.get("/attestation", params={"nonce": nonce}).json()
        (WORK / "enclave-attestation.json").write_text(json.dumps(attestation))
        print(f"nonce {nonce}; simulated={attestation['simulated']}; enclave {attestation['enclave']}")
        print(f"attested PCR0 {attestation['summary']['pcrs']['0']}")

    step("10. Verify every receipt offline (chain, pinned image, nonce, key, signature, hashes, model)")
    for name in demo_requests():
        run(*verify_command(WORK / f"response-{name}.json", WORK / f"request-{name}.json", pki, nonce))

    step("11. A tampered answer is caught: change the predicted class and verify again")
    forged = json.loads((WORK / "response-iris-mlp.json").read_text())
    forged["outputs"][1]["data"] = [0]
    (WORK / "forged-iris-mlp.json").write_text(json.dumps(forged))
    forged_command = verify_command(WORK / "forged-iris-mlp.json", WORK / "request-iris-mlp.json", pki, nonce)
    run(*forged_command, expect=1)
    sealed_step(url, pki)
    llm_steps(url, pki, nonce)


def sealed_step(url: str, pki: Path) -> None:
    """A request sealed to the attested X25519 key: the host and its proxy carry ciphertext only."""

    step(
        "12. A sealed request: Oblivious HTTP to the enclave's attested X25519 key (the host sees ciphertext)"
    )
    clear = json.loads((WORK / "response-iris-mlp.json").read_text())
    request = demo_requests()["iris-mlp"]
    pinned = "0x" + image_id(measure_image(REPO / "models").pcrs).hex()
    trust = Policy(root=TrustedRoot.from_file(pki / "root.pem"))
    with Client(url, trust, image_ids=[pinned], sealed=True) as client:
        print(f"key configuration of {url}/.well-known/ohttp-gateway checked against the attested user_data")
        result = client.infer("iris-mlp", request["inputs"])
    print(
        f"iris-mlp: {orjson.dumps(result['probabilities'], option=orjson.OPT_SERIALIZE_NUMPY).decode()} "
        f"(the same as in clear: {clear['outputs'][0]['data']})"
    )
    print(f"  verified, signed by {result.receipt['enclave']}; inputHash is a salted commitment:")
    print(f"  sealed {result.receipt['inputHash']}\n  clear  {clear['receipt']['inputHash']}")


ARTICLE_PROMPT = "Ethereum is the community-run technology"
ARTICLE_GPT2_XL = (22.09, 1.63)  # the article's GPT2-XL in a 12-vCPU enclave: seconds, tokens/s


def llm_steps(url: str, pki: Path, nonce: str) -> None:
    """The article's prompt to the LLM, streamed over the OpenAI API with checkpoints and a final receipt."""
    step("13. The article's LLM prompt over the OpenAI API (POST /v1/completions, streamed, chained chunks)")
    request = json.dumps(
        {"model": LLM, "prompt": ARTICLE_PROMPT, "max_tokens": 64, "temperature": 0, "stream": True}
    ).encode()
    events: list[bytes] = []
    first_token = None
    started = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{url}/v1/completions",
        content=request,
        headers={"content-type": "application/json"},
        timeout=120,
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                first_token = first_token or time.perf_counter()
            if line:
                events.append(line.encode() + b"\n\n")
    elapsed = time.perf_counter() - started
    transcript = b"".join(events)
    chunks = [json.loads(e[6:]) for e in events if e.startswith(b"data: {")]
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    tokens = chunks[-1]["verinfer"]["tokens"]
    checkpoints = sum("checkpoint" in c["verinfer"] for c in chunks)
    (WORK / "request-llm.json").write_bytes(request)
    (WORK / "response-llm.sse").write_bytes(transcript)
    print(f"{ARTICLE_PROMPT}{text}")
    decode_s = elapsed - (first_token - started if first_token else 0.0)
    rate = (tokens - 1) / decode_s if decode_s > 0 and tokens > 1 else float("nan")
    seconds, article_rate = ARTICLE_GPT2_XL
    print(
        f"\n{tokens} tokens in {elapsed:.2f} s ({rate:.1f} tokens/s decode, first token after "
        f"{(first_token or started) - started:.3f} s), {checkpoints} signed checkpoint(s) and a final receipt"
    )
    print(f"article: GPT2-XL (a far larger model) in a 12-vCPU enclave, {seconds} s, {article_rate} tokens/s")
    step("14. Verify the completion offline: request bytes, chain, checkpoints, final receipt, attestation")
    run(*verify_command(WORK / "response-llm.sse", WORK / "request-llm.json", pki, nonce))


def chain_steps(url: str, pki: Path) -> None:
    step("15. Start a local EVM (anvil, pinned in package.json) and deploy the InferenceVerifier")
    with ExitStack() as stack:
        rpc = stack.enter_context(running_anvil())
        w3 = connect(rpc)
        admin, user = (TxSender(w3, Account.from_key(ANVIL_KEYS[i])) for i in (0, 3))
        verifier_key, relay_key = Account.from_key(ANVIL_KEYS[1]), Account.from_key(ANVIL_KEYS[2])
        contract = deploy_verifier(admin)
        print(f"anvil at {rpc}; InferenceVerifier at {contract.address} (admin {admin.account.address})")

        step("16. The admin approves the image (keccak256(PCR0||PCR1||PCR2)), the models and a verifier key")
        pcrs = measure_image(REPO / "models").pcrs
        image = image_id(pcrs)
        models = json.loads((WORK / "manifest.json").read_text())["models"]
        configure(
            admin,
            contract,
            images=[image],
            models=served_approvals(models),
            attestation_verifiers=[verifier_key.address],
        )
        print(f"image 0x{image.hex()} (PCR0 {pcrs[0].hex()[:24]}...)")
        print(f"models: {', '.join(m['name'] for m in models)}; verifier {verifier_key.address}")

        step("17. Register the enclave through the attestation verifier service (fresh nonce, PCR policy)")
        verifier_port = free_port()
        stack.enter_context(
            background(
                [
                    VERINFER,
                    "relay",
                    "verifier",
                    "--port",
                    str(verifier_port),
                    "--root",
                    str(pki / "root.pem"),
                    "--pcr",
                    f"0={pcrs[0].hex()}",
                    "--pcr",
                    f"1={pcrs[1].hex()}",
                    "--pcr",
                    f"2={pcrs[2].hex()}",
                ],
                env={"VERINFER_KEY": ANVIL_KEYS[1]},
                log=WORK / "verifier.log",
                ready_url=f"http://127.0.0.1:{verifier_port}/",
            )
        )
        os.environ["VERINFER_KEY"] = ANVIL_KEYS[0]
        run(
            "relay",
            "register",
            "--enclave",
            url,
            "--rpc",
            rpc,
            "--contract",
            contract.address,
            "--verifier-url",
            f"http://127.0.0.1:{verifier_port}",
        )

        step("18. A consumer contract asks mnist-lenet for a digit; the relay serves it through the enclave")
        consumer = deploy(
            admin,
            "ClassifierConsumer",
            contract.address,
            next(bytes.fromhex(m["sha256"]) for m in models if m["name"] == "mnist-lenet"),
            "digit",
        )
        mnist = np.load(REPO / "models" / "data" / "mnist-eval.npz")
        image_input = encode_tensors([("image", (mnist["x"][7:8, None] / 255.0).astype(np.float32))])
        # The relay's default policy serves a request paying >= 1 gwei per gas of (callback + 100k overhead).
        tx = user.transact(consumer.functions.classify(image_input, 300_000, 3600), value=10**15)
        request_id = bytes(
            contract.events.InferenceRequested().process_receipt(tx, errors=DISCARD)[0]["args"]["requestId"]
        )
        print(
            f"consumer {consumer.address} requested 0x{request_id.hex()} (true digit {int(mnist['y'][7])}), "
            f"fee 0.001 ETH"
        )
        print(
            f"$ RELAY_BATCH_TOKEN=... verinfer relay run --enclave {url} --rpc {rpc} "
            f"--contract {contract.address} --chain-id {w3.eth.chain_id} --anchor-min 1 "
            "--batch-token-env RELAY_BATCH_TOKEN"
        )
        stack.enter_context(
            background(
                [
                    VERINFER,
                    "relay",
                    "run",
                    "--enclave",
                    url,
                    "--rpc",
                    rpc,
                    "--contract",
                    contract.address,
                    "--db",
                    str(WORK / "relay.sqlite3"),
                    "--chain-id",
                    str(w3.eth.chain_id),
                    "--confirmations",
                    "1",
                    "--poll",
                    "0.2",
                    "--anchor-min",
                    "1",
                    "--anchor-max",
                    "4096",
                    "--batch-token-env",
                    "RELAY_BATCH_TOKEN",
                ],
                env={"VERINFER_KEY": relay_key.key.hex(), "RELAY_BATCH_TOKEN": BATCH_TOKEN},
                log=WORK / "relay.log",
            )
        )
        stack.enter_context(mining(w3))
        wait(lambda: consumer.functions.answered(request_id).call(), "the callback")
        fulfilled = contract.events.InferenceFulfilled().get_logs(
            from_block=0, argument_filters={"requestId": request_id}
        )[0]["args"]
        print(
            f"fulfilled by relay {fulfilled['fulfiller']} with a receipt from enclave {fulfilled['enclave']}"
        )
        print(f"callback landed: consumer.labels(request) = {consumer.functions.labels(request_id).call()}")
        onchain_completion(admin, user, contract, models)

        step("20. The relay anchors the enclave's HTTP receipts as one Merkle batch; one is proven on-chain")
        wait(lambda: bool(contract.events.BatchAnchored().get_logs(from_block=0)), "a batch")
        batch = contract.events.BatchAnchored().get_logs(from_block=0)[0]["args"]
        root = bytes(batch["root"])
        print(f"anchored {batch['count']} receipts from {batch['enclave']} under root 0x{root.hex()}")
        served = json.loads((WORK / "response-iris-mlp.json").read_text())["receipt"]
        proven = prove_inclusion(contract, root, served)
        print(f"proveReceipt(iris-mlp receipt {served['requestId'][:18]}...) -> enclave {proven}")


def onchain_completion(admin: TxSender, user: TxSender, contract: Any, models: list[dict[str, Any]]) -> None:
    """The article's prompt asked by a contract; the relay posts the on-chain body verbatim to /v1."""
    step("19. A TextCompletionConsumer asks the LLM the article's prompt on chain; the relay serves it")
    llm = next(m for m in models if m["name"] == LLM)
    # callback gas = 100,000 + 6,000 per token asked for; at most 256 tokens; one hour to answer
    consumer = deploy(
        admin,
        "TextCompletionConsumer",
        contract.address,
        bytes.fromhex(llm["sha256"]),
        LLM,
        256,
        100_000,
        6_000,
        3600,
    )
    started = time.perf_counter()
    tx = user.transact(consumer.functions.ask(ARTICLE_PROMPT, 32), value=10**16)
    request_id = bytes(
        contract.events.InferenceRequested().process_receipt(tx, errors=DISCARD)[0]["args"]["requestId"]
    )
    print(f"consumer {consumer.address} asked {ARTICLE_PROMPT!r} (32 tokens): request 0x{request_id.hex()}")
    print(f"on-chain request body: {consumer.functions.requestBody(ARTICLE_PROMPT, 32).call().decode()}")
    wait(lambda: consumer.functions.answer(request_id).call()[0], "the completion callback", timeout=180)
    _, text, finish, tokens = consumer.functions.answer(request_id).call()
    elapsed = time.perf_counter() - started
    print(f"callback landed after {elapsed:.1f} s (blocks every 0.3 s): {ARTICLE_PROMPT}{text}")
    print(
        f"{tokens} tokens, finish_reason code {finish}; the receipt was checked on chain before the callback"
    )


def prove_inclusion(contract: Any, root: bytes, receipt_json: dict[str, Any]) -> str:
    """Rebuild the batch from the relay's SQLite record and prove one receipt's inclusion on-chain."""
    with sqlite3.connect(WORK / "relay.sqlite3") as db:
        stored = db.execute("SELECT receipts FROM batches WHERE root = ?", ("0x" + root.hex(),)).fetchone()[0]
    receipts = [SignedReceipt.from_json(r) for r in json.loads(stored)]
    digests = [r.receipt.digest() for r in receipts]
    target = SignedReceipt.from_json(receipt_json).receipt
    index = digests.index(target.digest())
    args = (target.request_id, target.model_hash, target.input_hash, target.output_hash, target.timestamp_ms)
    enclave: str = contract.functions.proveReceipt(args, root, merkle.proof(digests, index)).call()
    return enclave


@contextmanager
def background(
    command: list[str], *, env: dict[str, str], log: Path, ready_url: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            if ready_url:
                wait(lambda: _answers(ready_url), f"{command[1]} {command[2]} to start")
            yield process
        finally:
            stop(process)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def mining(w3: Any, interval: float = 0.3) -> Iterator[threading.Event]:
    """Mine a block every `interval` seconds, as a live chain would (anvil otherwise mines only on demand)."""
    stop = threading.Event()

    def mine() -> None:
        while not stop.wait(interval):
            w3.provider.make_request("evm_mine", [])

    thread = threading.Thread(target=mine, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join()


def wait(condition: Any, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.2)


def main() -> None:
    WORK.mkdir(exist_ok=True)
    for stale in ("relay.sqlite3", "relay.sqlite3-wal", "relay.sqlite3-shm"):
        (WORK / stale).unlink(missing_ok=True)
    pki = WORK / "sim-pki"
    attestation_steps(pki)
    step("7. Start the enclave server (simulated NSM): key generated in memory, attestation, models warmed")
    print(
        f"$ verinfer serve --nsm sim --pki-dir {pki} --batch-token-sha256 <sha256 of the relay's token>"
        f"   (log: {WORK / 'server.log'})"
    )
    batch = batch_token_args(BATCH_TOKEN)
    with running_server("--nsm", "sim", "--pki-dir", str(pki), *batch, log=WORK / "server.log") as url:
        print(f"ready at {url}")
        inference_steps(url, pki)
        chain_steps(url, pki)
    print(f"\nDemo complete. Evidence files are in {WORK}.")


if __name__ == "__main__":
    main()
