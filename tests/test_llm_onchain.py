"""A contract asks an LLM for a text completion through InferenceVerifier and the relay (issue 12).

Real anvil and compiled contracts throughout. Three layers:
- the consumer alone, with receipts signed by an enclave key of ours (registered through our own
  attestation verifier): request body bytes, answer decoding, fulfil gas, and the fulfilments the
  verifier must refuse (a checkpoint receipt, a tampered text);
- the relay's LLM branch against a scripted enclave of ours on loopback, which signs what it is told to:
  the body is posted verbatim, bad answers are never sent, unservable requests fail with a reason;
- the whole flow with the real enclave server, when the session server serves a text-generation model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3.contract import Contract
from web3.logs import DISCARD
from web3.types import TxParams

from protocol.addresses import checksum_address
from protocol.hashing import keccak256
from protocol.llm import (
    OUTPUT_LAYOUT,
    REQUEST_ID_HEADER,
    chain_next,
    chain_start,
    checkpoint_hash,
    decode_output,
    output_encoding,
)
from protocol.manifest import TEXT_GENERATION
from protocol.onchain import fulfilment_id, output_layout
from protocol.receipts import Receipt, SignedReceipt
from protocol.tensors import encode_tensors
from relay.chain import deploy
from verinfer.processes import free_port

from .chain_fixtures import Chain
from .relay_db import RelayDb, statuses
from .test_contract_attacks import OwnEnclave, fulfilled_event, refused, register_own_enclave
from .test_relay import (  # noqa: F401  (miner: a pytest fixture)
    after,
    local_relay,
    miner,
    relay_process,
    requested_id,
    wait_for,
)

LLM = "smollm2-135m-instruct"
LLM_LAYOUT = output_layout(OUTPUT_LAYOUT)
OWN_MODEL = keccak256(b"verinfer test llm: signed by a key of the test's own")
PROMPT = "Ethereum is the community-run technology"
MAX_TOKENS = 32
# About what 32 tokens of SmolLM2 are: ~125 bytes of English.
ANSWER = (
    " powering the cryptocurrency ether (ETH) and thousands of decentralized applications. It is"
    " open to everyone, everywhere."
)
PROMPT_TOKENS = 9
FEE = 10**16
CALLBACK_BASE, CALLBACK_PER_TOKEN, MAX_TOKENS_LIMIT = 100_000, 6_000, 256
TIMEOUT_S = 3600
CONSUMER = "TextCompletionConsumer"


def body_of(prompt: str, max_tokens: int, model: str = LLM) -> bytes:
    """What the consumer must send: Python's compact json.dumps, non-ASCII kept as UTF-8."""
    request = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def deploy_consumer(chain: Chain, model_hash: bytes, name: str = LLM) -> Contract:
    return deploy(
        chain.admin,
        CONSUMER,
        chain.contract.address,
        model_hash,
        name,
        MAX_TOKENS_LIMIT,
        CALLBACK_BASE,
        CALLBACK_PER_TOKEN,
        TIMEOUT_S,
    )


def ask(chain: Chain, consumer: Contract, prompt: str = PROMPT, max_tokens: int = MAX_TOKENS) -> bytes:
    tx = chain.user.transact(consumer.functions.ask(prompt, max_tokens), value=FEE)
    return bytes.fromhex(requested_id(chain, tx)[2:])


def now_ms(chain: Chain) -> int:
    return int(chain.w3.eth.get_block("latest")["timestamp"]) * 1000


def stored(consumer: Contract, request_id: bytes) -> tuple[bool, str, int, int]:
    answered, text, finish, tokens = consumer.functions.answer(request_id).call()
    return bool(answered), str(text), int(finish), int(tokens)


# --- the request body ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def body_consumer(chain: Chain) -> Contract:
    """A consumer for requestBody's eth_calls (a view: any model hash will do)."""
    return deploy_consumer(chain, OWN_MODEL)


TRICKY = [
    "",
    PROMPT,
    'say "hi"',
    "back\\slash \\u0041 \\n",
    "line\nbreak\ttab\rreturn\x08bs\x0cff",
    "".join(chr(c) for c in range(0x20)),
    "\x7f del and \u2028 \u2029 separators",
    "héllo wörld — ünïcödé “quotes” ½",
    "日本語のテキスト",
    "emoji 🦀🚀 and astral \U0001d518\U0001d52b",
    '{"model":"other","prompt":"x"}',
    "</script><!-- \u0000 nul -->",
]


@pytest.mark.parametrize("prompt", TRICKY)
def test_request_body_is_json_dumps_of_the_request(body_consumer: Contract, prompt: str) -> None:
    for max_tokens in (1, MAX_TOKENS, 4_294_967_295):
        assert body_consumer.functions.requestBody(prompt, max_tokens).call() == body_of(prompt, max_tokens)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80),
    max_tokens=st.integers(0, 2**32 - 1),
)
def test_request_body_matches_json_dumps_for_any_text(
    body_consumer: Contract, prompt: str, max_tokens: int
) -> None:
    assert body_consumer.functions.requestBody(prompt, max_tokens).call() == body_of(prompt, max_tokens)


def test_ask_sends_the_body_and_asks_gas_by_tokens(snapshot: Chain) -> None:
    snapshot.admin.transact(snapshot.contract.functions.approveModel(OWN_MODEL, LLM_LAYOUT))
    consumer = deploy_consumer(snapshot, OWN_MODEL)
    tx = snapshot.user.transact(consumer.functions.ask(PROMPT, MAX_TOKENS), value=FEE)
    event = snapshot.contract.events.InferenceRequested().process_receipt(tx, errors=DISCARD)[0]["args"]
    assert bytes(event["input"]) == body_of(PROMPT, MAX_TOKENS)
    assert event["callbackGasLimit"] == CALLBACK_BASE + CALLBACK_PER_TOKEN * MAX_TOKENS
    assert event["fee"] == FEE and event["requester"] == consumer.address
    user = TxParams({"from": snapshot.user.account.address})
    for bad in (0, MAX_TOKENS_LIMIT + 1):
        call = consumer.functions.ask(PROMPT, bad)
        refused("InvalidMaxTokens", partial(call.call, user), CONSUMER)


# --- fulfilment with receipts of our own ---------------------------------------------------------------


@dataclass
class Asked:
    own: OwnEnclave
    consumer: Contract
    request_id: bytes
    body: bytes

    def receipt(self, chain: Chain, output_hash: bytes) -> tuple[int, bytes]:
        """(timestampMs, signature) of our enclave's receipt letting the relay account fulfil with it."""
        timestamp = now_ms(chain)
        receipt = Receipt(
            fulfilment_id(self.request_id, chain.relay.account.address),
            OWN_MODEL,
            keccak256(self.body),
            output_hash,
            timestamp,
        )
        return timestamp, self.own.sign(receipt)

    def fulfil(self, chain: Chain, output: bytes, output_hash: bytes | None = None) -> Any:
        timestamp, signature = self.receipt(chain, keccak256(output) if output_hash is None else output_hash)
        call = chain.contract.functions.fulfill(
            self.request_id, output, timestamp, self.own.address, signature
        )
        return chain.relay.transact(call)


def asked_of_own_enclave(chain: Chain) -> Asked:
    own = register_own_enclave(chain)
    chain.admin.transact(chain.contract.functions.approveModel(OWN_MODEL, LLM_LAYOUT))
    consumer = deploy_consumer(chain, OWN_MODEL)
    return Asked(own, consumer, ask(chain, consumer), body_of(PROMPT, MAX_TOKENS))


def test_verified_answer_is_stored_and_fulfil_gas(
    snapshot: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = asked_of_own_enclave(snapshot)
    output = output_encoding(ANSWER, "length", PROMPT_TOKENS, MAX_TOKENS)
    tx = asked.fulfil(snapshot, output)
    event = fulfilled_event(snapshot, tx)
    assert event["callbackSucceeded"]
    assert stored(asked.consumer, asked.request_id) == (True, ANSWER, 2, MAX_TOKENS)
    answered = asked.consumer.events.CompletionAnswered().process_receipt(tx, errors=DISCARD)[0]["args"]
    assert answered["text"] == ANSWER and answered["completionTokens"] == MAX_TOKENS
    # Gas: measured 32 tokens (126 bytes of text) at ~185k per fulfil; the callback stays far inside
    # what the consumer asks for (CALLBACK_BASE + 32 * CALLBACK_PER_TOKEN = 292,000).
    with capsys.disabled():
        print(f"\nfulfil gas, {MAX_TOKENS}-token answer of {len(ANSWER.encode())} bytes: {tx['gasUsed']}")
    assert tx["gasUsed"] < 250_000
    assert snapshot.w3.eth.get_balance(asked.consumer.address) == 0


def test_unicode_answer_round_trips(snapshot: Chain) -> None:
    asked = asked_of_own_enclave(snapshot)
    text = 'Ünïcödé ✓ — 日本語 🦀\n"quoted" \\ end'
    asked.fulfil(snapshot, output_encoding(text, "stop", PROMPT_TOKENS, 11))
    assert stored(asked.consumer, asked.request_id) == (True, text, 1, 11)


def test_checkpoint_receipt_cannot_fulfil(snapshot: Chain) -> None:
    """A checkpoint signs a prefix: neither its preimage nor any complete output fulfils with it."""
    asked = asked_of_own_enclave(snapshot)
    chain_hash = chain_next(chain_start(keccak256(asked.body)), ANSWER)
    checkpoint = checkpoint_hash(MAX_TOKENS, chain_hash)
    preimage = b"verinfer.llm.checkpoint.v1\x00" + MAX_TOKENS.to_bytes(4, "big") + chain_hash
    assert keccak256(preimage) == checkpoint  # the "output" whose hash the checkpoint receipt signs
    timestamp, signature = asked.receipt(snapshot, checkpoint)
    relay = TxParams({"from": snapshot.relay.account.address})
    fulfil = snapshot.contract.functions.fulfill
    refused(
        "InvalidTensorEncoding",
        lambda: fulfil(asked.request_id, preimage, timestamp, asked.own.address, signature).call(relay),
        CONSUMER,
    )
    complete = output_encoding(ANSWER, "length", PROMPT_TOKENS, MAX_TOKENS)
    refused(
        "ReceiptSignerMismatch",
        lambda: fulfil(asked.request_id, complete, timestamp, asked.own.address, signature).call(relay),
    )
    assert not stored(asked.consumer, asked.request_id)[0]


def test_tampered_text_is_refused(snapshot: Chain) -> None:
    asked = asked_of_own_enclave(snapshot)
    signed_over = output_encoding(ANSWER, "length", PROMPT_TOKENS, MAX_TOKENS)
    tampered = output_encoding(ANSWER.replace("everyone", "no one"), "length", PROMPT_TOKENS, MAX_TOKENS)
    timestamp, signature = asked.receipt(snapshot, keccak256(signed_over))
    call = snapshot.contract.functions.fulfill(
        asked.request_id, tampered, timestamp, asked.own.address, signature
    )
    refused("ReceiptSignerMismatch", lambda: call.call({"from": snapshot.relay.account.address}))
    assert not stored(asked.consumer, asked.request_id)[0]


def test_only_the_verifier_calls_back_and_bad_shapes_store_nothing(snapshot: Chain) -> None:
    asked = asked_of_own_enclave(snapshot)
    output = output_encoding(ANSWER, "stop", PROMPT_TOKENS, 20)
    refused(
        "OnlyVerifier",
        lambda: asked.consumer.functions.onInferenceResult(asked.request_id, output).call(
            TxParams({"from": snapshot.user.account.address})
        ),
        CONSUMER,
    )
    # The layout (names, dtypes, order) is the approved one, but usage holds 3 counts: the callback fails.
    odd = encode_tensors(
        [
            ("text", np.frombuffer(b"x", dtype=np.uint8)),
            ("finish_reason", np.array([1], dtype=np.uint8)),
            ("usage", np.array([1, 2, 3], dtype="<u4")),
        ]
    )
    tx = asked.fulfil(snapshot, odd)
    assert not fulfilled_event(snapshot, tx)["callbackSucceeded"]
    assert not stored(asked.consumer, asked.request_id)[0]


# --- the relay against a scripted LLM enclave ----------------------------------------------------------


@dataclass
class ScriptedLlm:
    """An LLM enclave that signs with our registered key what `mode` says: "ok" (an honest answer),
    "tamper" (text other than the one signed) or "checkpoint" (a checkpoint receipt)."""

    own: OwnEnclave
    mode: str = "ok"
    posts: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    def models(self) -> dict[str, Any]:
        layout = [{"name": n, "dtype": d, "shape": [-1]} for n, d in OUTPUT_LAYOUT]
        return {
            "models": [
                {
                    "name": LLM,
                    "sha256": OWN_MODEL.hex(),
                    "modelHash": "0x" + OWN_MODEL.hex(),
                    "task": TEXT_GENERATION,
                    "inputs": [{"name": "request", "dtype": "uint8", "shape": [-1]}],
                    "outputs": layout,
                }
            ]
        }

    def complete(self, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        self.posts.append((body, headers))
        request_id = bytes.fromhex(headers[REQUEST_ID_HEADER.lower()].removeprefix("0x"))
        output_hash = keccak256(output_encoding(ANSWER, "length", PROMPT_TOKENS, MAX_TOKENS))
        if self.mode == "checkpoint":
            output_hash = checkpoint_hash(MAX_TOKENS, chain_next(chain_start(keccak256(body)), ANSWER))
        receipt = Receipt(request_id, OWN_MODEL, keccak256(body), output_hash, int(time.time() * 1000))
        signed = SignedReceipt(receipt, self.own.key.address, self.own.sign(receipt))
        text = ANSWER.upper() if self.mode == "tamper" else ANSWER
        return {
            "id": "cmpl-test",
            "object": "text_completion",
            "model": LLM,
            "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": MAX_TOKENS},
            "receipt": signed.to_json(),
        }


@contextmanager
def serving(llm: ScriptedLlm) -> Iterator[str]:
    """`llm` on a free loopback port (GET /models, POST /v1/completions), in a thread."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path == "/models":
                self._send(200, llm.models())
            else:
                self._send(404, {"message": "not found"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/completions":
                self._send(404, {"message": "not found"})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            self._send(200, llm.complete(body, headers))

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@dataclass
class Scripted:
    llm: ScriptedLlm
    url: str
    consumer: Contract


@pytest.fixture
def scripted(snapshot: Chain) -> Iterator[Scripted]:
    own = register_own_enclave(snapshot)
    snapshot.admin.transact(snapshot.contract.functions.approveModel(OWN_MODEL, LLM_LAYOUT))
    consumer = deploy_consumer(snapshot, OWN_MODEL)
    llm = ScriptedLlm(own)
    with serving(llm) as url:
        yield Scripted(llm, url, consumer)


@pytest.mark.usefixtures("miner")
def test_relay_posts_the_body_verbatim_and_fulfils(
    snapshot: Chain, scripted: Scripted, relay_db: RelayDb
) -> None:
    relay = local_relay(snapshot, scripted.url, relay_db, start_block=snapshot.w3.eth.block_number)
    request_id = ask(snapshot, scripted.consumer)
    wait_for(
        after(relay.step, lambda: stored(scripted.consumer, request_id)[0]), timeout=120, what="the answer"
    )
    assert stored(scripted.consumer, request_id) == (True, ANSWER, 2, MAX_TOKENS)
    [(body, headers)] = scripted.llm.posts
    assert body == body_of(PROMPT, MAX_TOKENS)
    assert headers["content-type"] == "application/json"
    bound = fulfilment_id(request_id, snapshot.relay.account.address)
    assert headers[REQUEST_ID_HEADER.lower()] == "0x" + bound.hex()
    relay.state.close()


@pytest.mark.usefixtures("miner")
@pytest.mark.parametrize("mode", ["tamper", "checkpoint"])
def test_relay_never_sends_an_answer_its_receipt_does_not_cover(
    snapshot: Chain, scripted: Scripted, relay_db: RelayDb, mode: str
) -> None:
    scripted.llm.mode = mode
    relay = local_relay(snapshot, scripted.url, relay_db, start_block=snapshot.w3.eth.block_number)
    request_id = ask(snapshot, scripted.consumer)
    wait_for(after(relay.step, lambda: len(scripted.llm.posts) >= 2), timeout=120, what="a retry")
    row = relay.state.request("0x" + request_id.hex())
    assert row is not None and row.status == "pending" and "does not match its receipt" in (row.detail or "")
    assert int(snapshot.contract.functions.getRequest(request_id).call().status) == 1  # still pending
    assert relay.state.txs.latest_for("fulfil", "0x" + request_id.hex()) is None  # no gas spent
    relay.state.close()


UNSERVABLE = {
    "not JSON": b"Ethereum is",
    "not an object": b'["smollm2-135m-instruct"]',
    "a stream": b'{"model":"smollm2-135m-instruct","prompt":"x","max_tokens":4,"stream":true}',
    "two choices": b'{"model":"smollm2-135m-instruct","prompt":"x","max_tokens":4,"n":2}',
    "another model": b'{"model":"gpt-4","prompt":"x","max_tokens":4}',
    "a repeated key": b'{"model":"smollm2-135m-instruct","prompt":"x","stream":false,"stream":true}',
}
UNSERVABLE_REASON = {
    "not JSON": "not UTF-8 JSON",
    "not an object": "not a JSON object",
    "a stream": "asks for a stream",
    "two choices": "n=2",
    "another model": "names model 'gpt-4'",
    "a repeated key": "repeats a key",
}


@pytest.mark.usefixtures("miner")
def test_relay_fails_unservable_completion_requests_without_asking(
    snapshot: Chain, scripted: Scripted, relay_db: RelayDb
) -> None:
    relay = local_relay(snapshot, scripted.url, relay_db, start_block=snapshot.w3.eth.block_number)
    ids = {}
    for what, body in UNSERVABLE.items():
        call = snapshot.contract.functions.requestInference(OWN_MODEL, body, 0, TIMEOUT_S)
        ids[what] = requested_id(snapshot, snapshot.user.transact(call, value=FEE))
    db = relay_db
    wait_for(
        after(relay.step, lambda: all(statuses(db).get(i) == "failed" for i in ids.values())),
        timeout=120,
        what="every request failed",
    )
    for what, request_id in ids.items():
        row = relay.state.request(request_id)
        assert row is not None and UNSERVABLE_REASON[what] in (row.detail or ""), (what, row)
    assert scripted.llm.posts == []
    relay.state.close()


# --- the real enclave server ---------------------------------------------------------------------------


def served_llm(server: str) -> dict[str, Any] | None:
    models = httpx.get(f"{server}/models").json()["models"]
    return next((m for m in models if m.get("task") == TEXT_GENERATION), None)


@pytest.mark.usefixtures("miner")
def test_consumer_gets_the_real_enclaves_completion(
    snapshot: Chain, server: str, relay_db: RelayDb, capsys: pytest.CaptureFixture[str]
) -> None:
    """The answer stored on chain is the text the same request body gets over HTTP; a tampered text
    with the real enclave's receipt is refused."""
    entry = served_llm(server)
    if entry is None:
        pytest.skip("the session server serves no text-generation model (models/llm not built)")
    model_hash = bytes.fromhex(entry["modelHash"].removeprefix("0x"))
    assert snapshot.layouts[model_hash] == LLM_LAYOUT
    consumer = deploy_consumer(snapshot, model_hash, entry["name"])
    body = body_of(PROMPT, MAX_TOKENS, entry["name"])
    over_http = httpx.post(
        f"{server}/v1/completions", content=body, headers={"Content-Type": "application/json"}, timeout=300
    ).json()
    expected = over_http["choices"][0]["text"]
    assert SignedReceipt.from_json(over_http["receipt"]).receipt.input_hash == keccak256(body)

    db = relay_db
    with relay_process(snapshot, [server], db):
        request_id = ask(snapshot, consumer)
        wait_for(lambda: stored(consumer, request_id)[0], timeout=300, what="the on-snapshot answer")
    [event] = snapshot.contract.events.InferenceFulfilled().get_logs(
        from_block=0, argument_filters={"requestId": request_id}
    )
    assert event["args"]["callbackSucceeded"]
    gas = snapshot.w3.eth.get_transaction_receipt(event["transactionHash"])["gasUsed"]
    with capsys.disabled():
        print(f"\nreal fulfil gas, {len(expected.encode())}-byte answer: {gas}")
    _, text, finish, tokens = stored(consumer, request_id)
    assert text == expected
    assert (finish, tokens) == (
        {"stop": 1, "length": 2}[over_http["choices"][0]["finish_reason"]],
        over_http["usage"]["completion_tokens"],
    )

    # A genuine receipt for the relay account, then a text it does not cover.
    second = ask(snapshot, consumer)
    relay_address = snapshot.relay.account.address
    bound = fulfilment_id(second, relay_address)
    answer = httpx.post(
        f"{server}/v1/completions",
        content=body,
        headers={"Content-Type": "application/json", REQUEST_ID_HEADER: "0x" + bound.hex()},
        timeout=300,
    ).json()
    signed = SignedReceipt.from_json(answer["receipt"])
    assert signed.receipt.request_id == bound
    usage = answer["usage"]
    finish_reason = answer["choices"][0]["finish_reason"]
    honest = output_encoding(expected, finish_reason, usage["prompt_tokens"], usage["completion_tokens"])
    assert keccak256(honest) == signed.receipt.output_hash
    assert decode_output(honest).text == expected
    tampered = output_encoding(
        expected + " (edited)", finish_reason, usage["prompt_tokens"], usage["completion_tokens"]
    )
    enclave = checksum_address(signed.enclave)

    def fulfil(output: bytes) -> Any:
        return snapshot.contract.functions.fulfill(
            second, output, signed.receipt.timestamp_ms, enclave, signed.signature
        )

    refused("ReceiptSignerMismatch", lambda: fulfil(tampered).call({"from": relay_address}))
    snapshot.relay.transact(fulfil(honest))
    assert stored(consumer, second)[1] == expected


def sse_events(raw: str) -> list[dict[str, Any]]:
    lines = (line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: "))
    return [json.loads(line) for line in lines if line != "[DONE]"]


def test_real_checkpoint_receipt_cannot_fulfil(snapshot: Chain, server: str) -> None:
    """A streamed request put on chain as is (the relay would refuse it; a fulfiller of its own need
    not): the enclave's genuine checkpoint receipt at 32 tokens fulfils neither with its preimage nor
    with the text streamed so far."""
    entry = served_llm(server)
    if entry is None:
        pytest.skip("the session server serves no text-generation model (models/llm not built)")
    model_hash = bytes.fromhex(entry["modelHash"].removeprefix("0x"))
    request = {"model": entry["name"], "prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stream": True}
    body = json.dumps(request, separators=(",", ":")).encode()
    call = snapshot.contract.functions.requestInference(model_hash, body, 0, TIMEOUT_S)
    request_id = bytes.fromhex(requested_id(snapshot, snapshot.user.transact(call, value=FEE))[2:])
    relay = snapshot.relay.account.address
    bound = fulfilment_id(request_id, relay)
    streamed = httpx.post(
        f"{server}/v1/completions",
        content=body,
        headers={"Content-Type": "application/json", REQUEST_ID_HEADER: "0x" + bound.hex()},
        timeout=300,
    )
    events = sse_events(streamed.text)
    marked = [e for e in events if "checkpoint" in e.get("verinfer", {})]
    assert marked, "no checkpoint in the stream"
    extension = marked[0]["verinfer"]
    signed = SignedReceipt.from_json(extension["checkpoint"])
    chain_hash = bytes.fromhex(extension["chain"].removeprefix("0x"))
    assert signed.receipt.request_id == bound and signed.receipt.input_hash == keccak256(body)
    assert signed.receipt.output_hash == checkpoint_hash(extension["tokens"], chain_hash)
    index = events.index(marked[0])
    prefix = "".join(e["choices"][0]["text"] for e in events[: index + 1])
    preimage = b"verinfer.llm.checkpoint.v1\x00" + int(extension["tokens"]).to_bytes(4, "big") + chain_hash
    enclave = checksum_address(signed.enclave)
    fulfil = snapshot.contract.functions.fulfill
    timestamp = signed.receipt.timestamp_ms
    sender = TxParams({"from": relay})
    refused(
        "InvalidTensorEncoding",
        lambda: fulfil(request_id, preimage, timestamp, enclave, signed.signature).call(sender),
        CONSUMER,
    )
    prefix_output = output_encoding(prefix, "length", PROMPT_TOKENS, int(extension["tokens"]))
    refused(
        "ReceiptSignerMismatch",
        lambda: fulfil(request_id, prefix_output, timestamp, enclave, signed.signature).call(sender),
    )
