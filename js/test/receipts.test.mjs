// The receipt half on the shared vectors (tests/vectors/*.json, the same files the Python and Solidity tests
// read) and on real evidence from a simulated enclave (test/fixtures/evidence, made by make_evidence.py).
import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { secp256k1 } from "@noble/curves/secp256k1.js";
import {
  DOMAIN_SEPARATOR,
  DTYPE_BY_NAME,
  RECEIPT_TYPEHASH,
  TrustedRoot,
  batchDigest,
  bundleHash,
  canonicalJson,
  checkpointHash,
  checksumAddress,
  commitInput,
  commitOutput,
  completionInputHash,
  completionOutputHash,
  decodeDocument,
  decodeTensors,
  encodeTensors,
  fulfilmentId,
  hex0x,
  hexToBytes,
  keccak256,
  makeTensor,
  manifestDigest,
  merkleProof,
  merkleRoot,
  outputLayout,
  parseInputs,
  parseJson,
  parseManifest,
  parseSignedReceipt,
  pyJsonDumps,
  readCompletion,
  readStream,
  receiptDigest,
  recoverAddress,
  recoverSigner,
  structHash,
  tensorsFromJson,
  verifiedText,
  verifyCompletion,
  verifyInference,
  verifyMerkleProof,
} from "../src/index.mjs";
import { halfBits } from "../src/tensors.mjs";

const VECTORS = new URL("../../tests/vectors/", import.meta.url);
const EVIDENCE = new URL("./fixtures/evidence/", import.meta.url);
const vector = (name) => parseJson(readFileSync(new URL(name, VECTORS)));
const evidence = (name) => new Uint8Array(readFileSync(new URL(name, EVIDENCE)));
const evidenceJson = (name) => parseJson(evidence(name));
const FACTS = JSON.parse(readFileSync(new URL("cases.json", EVIDENCE), "utf8")).facts;
const SECP256K1_N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;

function receiptOfVector(v) {
  return {
    requestId: hexToBytes(v.requestId),
    modelHash: hexToBytes(v.modelHash),
    inputHash: hexToBytes(v.inputHash),
    outputHash: hexToBytes(v.outputHash),
    timestampMs: v.timestampMs,
  };
}

// --- shared vectors ---

test("tensors.json: every encoding and its keccak256", () => {
  const vectors = vector("tensors.json");
  assert.ok(vectors.length >= 5);
  for (const v of vectors) {
    const tensors = v.tensors.map((t) => makeTensor(t.name, t.dtype, t.shape, t.data));
    const encoding = encodeTensors(tensors);
    assert.equal(hex0x(encoding), v.encoding, v.label);
    assert.equal(hex0x(keccak256(encoding)), v.keccak256, v.label);
    const decoded = decodeTensors(encoding);
    assert.deepEqual(
      decoded.map((t) => [t.name, t.dtype.name, t.shape]),
      v.tensors.map((t) => [t.name, t.dtype, t.shape.map(Number)]),
    );
    assert.equal(hex0x(encodeTensors(decoded)), v.encoding);
  }
});

test("tensors.json: the same tensors as JSON tensors of an answer (datatype, shape, data)", () => {
  const V2 = { float32: "FP32", int64: "INT64", int32: "INT32", uint8: "UINT8", float64: "FP64", bool: "BOOL" };
  for (const v of vector("tensors.json")) {
    const items = v.tensors.map((t) => ({ name: t.name, datatype: V2[t.dtype], shape: t.shape, data: t.data }));
    assert.equal(hex0x(encodeTensors(tensorsFromJson(items))), v.encoding, v.label);
  }
});

test("receipts.json: domain separator, type hash, struct hashes, digests, signatures", () => {
  const v = vector("receipts.json");
  assert.equal(hex0x(DOMAIN_SEPARATOR), v.domainSeparator);
  assert.equal(hex0x(RECEIPT_TYPEHASH), v.receiptTypehash);
  const key = hexToBytes(v.signerPrivateKey);
  for (const r of v.receipts) {
    const receipt = receiptOfVector(r);
    assert.equal(hex0x(structHash(receipt)), r.structHash, r.label);
    assert.equal(hex0x(receiptDigest(receipt)), r.digest, r.label);
    assert.equal(checksumAddress(recoverSigner(receipt, hexToBytes(r.signature))), v.signer, r.label);
    // the enclave's signature is deterministic (RFC 6979, low-s): signing again gives the same bytes
    const signature = secp256k1.sign(receiptDigest(receipt), key, { prehash: false, format: "recovered" });
    const rsv = new Uint8Array([...signature.subarray(1), signature[0] + 27]);
    assert.equal(hex0x(rsv), r.signature, r.label);
  }
});

test("signatures: high-s, v outside {27, 28}, zero r, wrong length are refused", () => {
  const v = vector("receipts.json");
  const r = v.receipts[0];
  const digest = hexToBytes(r.digest);
  const good = hexToBytes(r.signature);
  assert.equal(checksumAddress(recoverAddress(digest, good)), v.signer);
  const highS = good.slice();
  const s = SECP256K1_N - BigInt(hex0x(good.subarray(32, 64)));
  highS.set(hexToBytes(s.toString(16).padStart(64, "0")), 32);
  highS[64] = 55 - good[64];
  assert.throws(() => recoverAddress(digest, highS), /lower half of the curve order/);
  for (const vByte of [0, 1, 26, 29]) {
    const bad = good.slice();
    bad[64] = vByte;
    assert.throws(() => recoverAddress(digest, bad), /v in \{27, 28\}/);
  }
  const zeroR = good.slice();
  zeroR.fill(0, 0, 32);
  assert.throws(() => recoverAddress(digest, zeroR), /does not recover/);
  assert.throws(() => recoverAddress(digest, good.subarray(0, 64)), /65 bytes/);
  // the other recovery id recovers some other key: not the signer
  const flipped = good.slice();
  flipped[64] = 55 - good[64];
  let other = null;
  try {
    other = checksumAddress(recoverAddress(digest, flipped));
  } catch {
    other = null;
  }
  assert.notEqual(other, v.signer);
});

test("onchain.json: output layouts (and their example encodings) and fulfilment ids", () => {
  const v = vector("onchain.json");
  for (const layout of v.layouts) {
    assert.equal(hex0x(outputLayout(layout.outputs)), layout.layout, layout.label);
    const decoded = decodeTensors(hexToBytes(layout.encoding));
    assert.deepEqual(
      decoded.map((t) => ({ name: t.name, dtype: t.dtype.name })),
      layout.outputs.map((o) => ({ name: o.name, dtype: o.dtype })),
      layout.label,
    );
    assert.equal(hex0x(outputLayout(decoded)), layout.layout);
  }
  for (const f of v.fulfilmentIds) {
    assert.equal(hex0x(fulfilmentId(hexToBytes(f.requestId), f.fulfiller)), f.fulfilmentId, f.label);
  }
});

test("sealing.json: input and output commitments", () => {
  for (const c of vector("sealing.json").commitments) {
    const salt = hexToBytes(c.salt);
    assert.equal(hex0x(commitInput(salt, hexToBytes(c.hash))), c.inputCommitment, c.label);
    assert.equal(hex0x(commitOutput(salt, hexToBytes(c.hash))), c.outputCommitment, c.label);
  }
});

// --- canonical JSON, manifests, Merkle trees (values computed by the Python code) ---

test("manifest digests and bundle hashes: canonical JSON with ASCII escapes and code point order", () => {
  const canonical = JSON.parse(readFileSync(new URL("canonical.json", EVIDENCE), "utf8"));
  for (const m of canonical.manifests) assert.equal(hex0x(manifestDigest(m.models)), m.digest, JSON.stringify(m.models));
  for (const b of canonical.bundles) assert.equal(hex0x(bundleHash(b.files)), b.hash, JSON.stringify(b.files));
  assert.equal(canonicalJson(parseJson('{"b": [1, 2.5, "\\u00e9\\ud83d\\ude00"], "a": null}')), '{"a":null,"b":[1,2.5,"\\u00e9\\ud83d\\ude00"]}');
});

test("Merkle roots, proofs and batch digests", () => {
  const canonical = JSON.parse(readFileSync(new URL("canonical.json", EVIDENCE), "utf8"));
  for (const tree of canonical.merkle) {
    const leaves = tree.leaves.map(hexToBytes);
    const root = merkleRoot(leaves);
    assert.equal(hex0x(root), tree.root);
    assert.equal(hex0x(batchDigest(root, leaves.length)), tree.batchDigest);
    leaves.forEach((leaf, i) => {
      const proof = merkleProof(leaves, i);
      assert.deepEqual(proof.map(hex0x), tree.proofs[i]);
      assert.ok(verifyMerkleProof(proof, root, leaf));
      assert.ok(!verifyMerkleProof(proof, root, keccak256(leaf)));
    });
  }
});

test("the served manifest: its digest is GET /models' and the attested user_data", () => {
  const served = evidenceJson("models.json");
  const manifest = parseManifest(served);
  assert.equal(hex0x(manifest.digest), served.digest);
  const attestation = evidenceJson("attestation.json");
  assert.equal(hex0x(manifest.digest), attestation.manifestDigest);
  const { document } = decodeDocument(Buffer.from(attestation.document, "base64"));
  assert.equal(hex0x(document.userData.subarray(0, 32)), served.digest);
  const llm = [...manifest.models.values()].find((m) => m.isLlm);
  assert.equal(hex0x(bundleHash(new Map(llm.files))), "0x" + llm.sha256);
});

// --- JSON numbers to dtypes, as Python converts them ---

test("JSON numbers to every dtype: the hashes (or refusals) Python computes", () => {
  const conversions = JSON.parse(readFileSync(new URL("conversions.json", EVIDENCE), "utf8"));
  assert.ok(conversions.length > 40);
  for (const c of conversions) {
    const data = parseJson(c.data);
    const label = `${c.kind} ${c.dtype} ${c.data}`;
    if (c.kind === "output") {
      const compute = () => hex0x(keccak256(encodeTensors(tensorsFromJson([{ name: "x", datatype: c.dtype, shape: [-1n], data }]))));
      if (c.error) assert.throws(compute, label);
      else assert.equal(compute(), c.hash, label);
    } else {
      const entry = { name: "m", inputs: [{ name: "x", dtype: DTYPE_BY_NAME.get(c.dtype), shape: [-1] }] };
      const compute = () => hex0x(keccak256(encodeTensors(parseInputs(entry, [{ name: "x", data }]))));
      if (c.error) assert.throws(compute, (error) => error.code === c.error, label);
      else assert.equal(compute(), c.hash, label);
    }
  }
});

test("float16 rounding: nearest-even, subnormals, overflow", () => {
  const cases = [
    [1, 0x3c00],
    [65504, 0x7bff],
    [65519.99, 0x7bff],
    [65520, 0x7c00],
    [2 ** -24, 0x0001],
    [2 ** -25, 0x0000],
    [3 * 2 ** -26, 0x0001],
    [2 ** -14, 0x0400],
    [2049, 0x6800],
    [2051, 0x6802],
    [-0, 0x8000],
    [NaN, 0x7e00],
    [-Infinity, 0xfc00],
  ];
  for (const [x, bits] of cases) assert.equal(halfBits(x), bits, String(x));
});

test("JSON: integers exact beyond 2^53, Python's json.dumps output", () => {
  const value = parseJson('{"a": 18446744073709551615, "b": 1.0, "c": [NaN, -Infinity], "d": "\\u00e9"}');
  assert.equal(value.a, 18446744073709551615n);
  assert.equal(value.b, 1);
  assert.equal(
    pyJsonDumps(value, { indent: 2 }),
    '{\n  "a": 18446744073709551615,\n  "b": 1.0,\n  "c": [\n    NaN,\n    -Infinity\n  ],\n  "d": "\\u00e9"\n}',
  );
  assert.throws(() => parseJson("NaN", { mode: "orjson" }));
  assert.throws(() => parseJson('"\\ud800"', { mode: "orjson" }));
  assert.equal(parseJson('"\\ud800"'), "\ud800");
});

// --- LLM completions ---

test("a completion's outputHash recomputes from its text, finish_reason and usage", () => {
  const body = readCompletion(evidence("completion.response.json"));
  const hash = completionOutputHash(body.text, body.finishReason, body.usage.prompt_tokens, body.usage.completion_tokens);
  assert.equal(hex0x(hash), body.receipt.outputHash);
  assert.equal(hex0x(completionInputHash(evidence("completion.request.bin"))), body.receipt.inputHash);
});

test("a stream: the chain recomputes, every checkpoint's outputHash, the final receipt's", () => {
  const request = evidence("completion-stream.request.bin");
  const transcript = readStream(evidence("completion-stream.response.sse"), completionInputHash(request));
  assert.equal(transcript.chainBreak, null);
  assert.ok(transcript.checkpoints.length >= 2);
  for (const checkpoint of transcript.checkpoints) {
    assert.equal(hex0x(checkpointHash(checkpoint.tokens, checkpoint.chain)), checkpoint.receipt.outputHash);
  }
  const usage = transcript.usage;
  const final = completionOutputHash(transcript.text, transcript.finishReason, usage.prompt_tokens, usage.completion_tokens);
  assert.equal(hex0x(final), transcript.receipt.outputHash);
  // a streamed and a non-streamed completion of the same text, reason and usage hash alike
  assert.equal(verifiedText(evidence("completion-stream.response.sse"), request), transcript.text);
  const cut = verifiedText(evidence("completion-stream-cut.response.sse"), request);
  assert.ok(transcript.text.startsWith(cut) && cut.length < transcript.text.length);
});

// --- the whole verification, as a library ---

const ROOT = TrustedRoot.fromPem(evidence("root.pem"), "root.pem");
const AT = () => new Date(decodeDocument(Buffer.from(evidenceJson("attestation.json").document, "base64")).document.timestampMs);
const PINS = { imageIds: [FACTS.image_id] };

test("verifyInference on JSON.parse'd objects: VERIFIED, SIMULATED, with the key check", async () => {
  const read = (name) => JSON.parse(readFileSync(new URL(name, EVIDENCE), "utf8"));
  const report = await verifyInference(read("infer-iris-mlp.response.json"), read("attestation.json"), {
    policy: { root: ROOT },
    at: AT(),
    request: read("infer-iris-mlp.request.json"),
    manifest: read("models.json"),
    ...PINS,
  });
  assert.equal(report.verdict, "VERIFIED", JSON.stringify(report));
  assert.ok(report.simulated && report.pinned);
  assert.deepEqual(
    report.checks.map((c) => c.name),
    ["receipt", "attestation", "enclave_key", "signature", "encryption_key", "output_hash", "input_hash", "model", "request_id"],
  );
  assert.equal(report.verdictLine, "VERIFIED [SIMULATED attestation: not hardware]");
  assert.equal(JSON.parse(JSON.stringify(report)).receipt.timestampMs, Number(report.receipt.timestampMs));
});

test("verifyInference: a forged output, another model, no pin, a wrong PCR pin", async () => {
  const response = evidenceJson("infer-iris-mlp.response.json");
  const options = { policy: { root: ROOT }, at: AT(), request: evidence("infer-iris-mlp.request.json"), manifest: evidence("models.json") };
  const attestation = evidence("attestation.json");
  const forged = structuredClone(JSON.parse(new TextDecoder().decode(evidence("infer-iris-mlp.response.json"))));
  forged.outputs[1].data[0] = 1 - forged.outputs[1].data[0];
  let report = await verifyInference(forged, new TextDecoder().decode(attestation), { ...options, ...PINS });
  assert.equal(report.verdict, "REJECTED");
  assert.deepEqual(report.checks.filter((c) => c.status === "fail").map((c) => c.name), ["output_hash"]);

  report = await verifyInference(response, new TextDecoder().decode(attestation), { ...options, model: "iris-ols", ...PINS });
  assert.deepEqual(report.checks.filter((c) => c.status === "fail").map((c) => c.name), ["input_hash", "model"]);

  report = await verifyInference(response, new TextDecoder().decode(attestation), options);
  assert.equal(report.verdict, "UNPINNED");

  const pcrs = new Map(Object.entries(FACTS.pcrs).map(([i, v]) => [Number(i), hexToBytes(v)]));
  pcrs.set(2, new Uint8Array(48));
  report = await verifyInference(response, new TextDecoder().decode(attestation), { ...options, policy: { root: ROOT, expectedPcrs: pcrs } });
  const failed = report.checks.find((c) => c.status === "fail");
  assert.equal(failed.name, "attestation");
  assert.match(failed.detail, /^pcr_mismatch: PCR2/);
});

test("verifyInference: a sealed request verifies with its salt only", async () => {
  const options = { policy: { root: ROOT }, at: AT(), request: evidence("sealed-infer.request.json"), manifest: evidence("models.json"), ...PINS };
  const attestation = new TextDecoder().decode(evidence("attestation.json"));
  const salted = await verifyInference(evidence("sealed-infer.response.json"), attestation, { ...options, salt: FACTS.salts["sealed-infer"] });
  assert.equal(salted.verdict, "VERIFIED");
  const clear = await verifyInference(evidence("sealed-infer.response.json"), attestation, options);
  assert.deepEqual(clear.checks.filter((c) => c.status === "fail").map((c) => c.name), ["output_hash", "input_hash"]);
});

test("verifyCompletion: a whole stream, a stream cut short (PREFIX ONLY), a forged chunk", async () => {
  const attestation = new TextDecoder().decode(evidence("attestation.json"));
  const options = { policy: { root: ROOT }, at: AT(), manifest: evidence("models.json"), ...PINS };
  const request = evidence("completion-stream.request.bin");
  const whole = await verifyCompletion(request, evidence("completion-stream.response.sse"), attestation, options);
  assert.equal(whole.verdict, "VERIFIED");
  assert.equal(whole.partial, null);
  const cut = await verifyCompletion(request, evidence("completion-stream-cut.response.sse"), attestation, options);
  assert.equal(cut.verdict, "VERIFIED");
  assert.match(cut.verdictLine, /^VERIFIED PREFIX ONLY: the first 8 tokens \(\d+ characters\) are vouched for/);
  const stream = new TextDecoder().decode(evidence("completion-stream.response.sse"));
  const forged = stream.replace(/"text":"([^"]+)"/, '"text":"$1!"');
  const report = await verifyCompletion(request, forged, attestation, options);
  assert.deepEqual(report.checks.filter((c) => c.status === "fail").map((c) => c.name), ["chain", "output_hash"]);
});

test("parseSignedReceipt: the JSON form's rules", () => {
  const text = new TextDecoder().decode(evidence("receipt-only.json"));
  const receipt = JSON.parse(text);
  const signed = parseSignedReceipt(receipt);
  assert.equal(checksumAddress(signed.enclave), receipt.enclave);
  assert.throws(() => parseSignedReceipt({ ...receipt, timestampMs: 1.5 }), /timestampMs must be an integer/);
  assert.throws(() => parseSignedReceipt(parseJson(text.replace(/"timestampMs": \d+/, '"timestampMs": 1.0'))), /integer/);
  assert.throws(() => parseSignedReceipt({ ...receipt, requestId: "0x12" }), /requestId must be 0x-hex of 32 bytes/);
  const { signature, ...rest } = receipt;
  assert.throws(() => parseSignedReceipt(rest), /receipt field 'signature' is missing/);
  assert.ok(signature);
});
