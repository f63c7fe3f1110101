// The explorer's checks (explorer/check.mjs) under node, on the committed evidence of a simulated enclave
// (test/fixtures/evidence). The page itself is tested in Chromium by tests/test_explorer_browser.py.
import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { Reason, TrustedRoot, decodeDocument, keccak256 } from "../src/index.mjs";
import { RULES, RULE_OF_REASON, checkEnclave, drawNonce, parsePins, registryStatus, verifyAnswer } from "../explorer/check.mjs";

const EVIDENCE = new URL("./fixtures/evidence/", import.meta.url);
const text = (name) => readFileSync(new URL(name, EVIDENCE), "utf8");
const json = (name) => JSON.parse(text(name));
const ROOT = TrustedRoot.fromPem(text("root.pem"), "root.pem");
const NONCE = "6a73" + "5e".repeat(30); // make_evidence.py's
const POLICY = json("policy.json");
const ATTESTATION = json("attestation.json");
const AT = new Date(decodeDocument(Buffer.from(ATTESTATION.document, "base64")).document.timestampMs);
const PINS = parsePins({ pcrs: POLICY.pcrs });

const check = (overrides = {}) =>
  checkEnclave({ attestationJson: ATTESTATION, modelsJson: json("models.json"), nonce: NONCE, root: ROOT, pins: PINS, at: AT, ...overrides });
const statuses = (result) => Object.fromEntries([...result.rules.values()].map((r) => [r.name, r.status]));

test("every rejection reason belongs to a rule the page shows", () => {
  const rules = new Set(RULES.map(([name]) => name));
  for (const reason of Object.values(Reason)) assert.ok(rules.has(RULE_OF_REASON[reason]), reason);
});

test("a pinned simulated enclave: VERIFIED, SIMULATED, every rule but the registry passes", async () => {
  const result = await check();
  assert.equal(result.verdict, "VERIFIED");
  assert.equal(result.simulated, true);
  const { registry, ...rest } = statuses(result);
  assert.equal(registry, "skipped");
  assert.deepEqual(new Set(Object.values(rest)), new Set(["pass"]));
  assert.equal(result.models.length, 4);
});

test("no pin: UNPINNED; a wrong PCR, another nonce, the AWS root: REJECTED on the rule that broke", async () => {
  assert.equal((await check({ pins: parsePins({}) })).verdict, "UNPINNED");
  const wrongPcr = await check({ pins: parsePins({ pcrs: { ...POLICY.pcrs, 2: "00".repeat(48) } }) });
  assert.equal(statuses(wrongPcr).image, "fail");
  const stale = await check({ nonce: "11".repeat(32) });
  assert.deepEqual([stale.verdict, statuses(stale).nonce], ["REJECTED", "fail"]);
  const aws = await check({ root: TrustedRoot.aws() });
  assert.deepEqual([aws.verdict, statuses(aws).chain, statuses(aws).nonce], ["REJECTED", "fail", "skipped"]);
  const otherModels = json("models.json");
  otherModels.models[0].sha256 = "00".repeat(32);
  assert.equal(statuses(await check({ modelsJson: otherModels })).manifest, "fail");
  const otherKey = { ...ATTESTATION, enclave: "0x" + "11".repeat(20) };
  assert.equal(statuses(await check({ attestationJson: otherKey })).enclave_key, "fail");
  const garbage = { ...ATTESTATION, document: "AAAA" };
  assert.deepEqual([statuses(await check({ attestationJson: garbage })).document], ["fail"]);
});

test("an answer verified against the checked enclave, and a forged one refused", async () => {
  const enclave = await check();
  const request = text("infer-mnist-lenet.request.json");
  const response = text("infer-mnist-lenet.response.json");
  const { report } = await verifyAnswer(enclave, response, request, { root: ROOT, at: AT });
  assert.equal(report.verdict, "VERIFIED");
  const forged = JSON.parse(response);
  forged.outputs[1].data[0] = (forged.outputs[1].data[0] + 1) % 10;
  const refused = (await verifyAnswer(enclave, JSON.stringify(forged), request, { root: ROOT, at: AT })).report;
  assert.equal(refused.verdict, "REJECTED");
  assert.equal(refused.checks.find((c) => c.name === "output_hash").status, "fail");
});

test("parsePins refuses malformed pins before anything is fetched", () => {
  assert.throws(() => parsePins({ pcrs: { 0: "abc" } }), /PCR0 is 48 bytes/);
  assert.throws(() => parsePins({ imageIds: ["0x1234"] }), /image id is 32 bytes/);
  assert.deepEqual(parsePins({ pcrs: { 0: "", 1: " " }, imageIds: [""] }).imageIds, []);
});

test("drawNonce: 32 fresh bytes of hex", () => {
  const [a, b] = [drawNonce(), drawNonce()];
  assert.match(a, /^[0-9a-f]{64}$/);
  assert.notEqual(a, b);
});

test("registryStatus encodes eth_call as the ABI says and reads a revert's custom error", async () => {
  const calls = [];
  const selector = (signature) => Buffer.from(keccak256(new TextEncoder().encode(signature)).slice(0, 4)).toString("hex");
  const fakeRpc = async (_url, init) => {
    const { params } = JSON.parse(init.body);
    calls.push(params[0].data);
    const reply = params[0].data.startsWith(`0x${selector("approvedImages(bytes32)")}`)
      ? { result: `0x${"0".repeat(63)}1` }
      : { error: { message: "execution reverted", data: `0x${selector("EnclaveExpired(address,uint64)")}${"0".repeat(128)}` } };
    return { ok: true, status: 200, json: async () => ({ jsonrpc: "2.0", id: 1, ...reply }) };
  };
  const image = `0x${"ab".repeat(32)}`;
  const enclave = `0x${"cd".repeat(20)}`;
  const status = await registryStatus({ rpc: "http://rpc", contract: `0x${"01".repeat(20)}` }, image, enclave, fakeRpc);
  assert.deepEqual(status, { imageApproved: true, live: false, why: "EnclaveExpired" });
  assert.equal(calls[0], `0x${selector("approvedImages(bytes32)")}${"ab".repeat(32)}`);
  assert.equal(calls[1], `0x${selector("requireLiveEnclave(address)")}${"0".repeat(24)}${"cd".repeat(20)}`);
});
