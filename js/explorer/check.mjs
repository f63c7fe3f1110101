// The explorer's checks, apart from the page: an enclave's attestation rule by rule, a receipt, and what the
// chain says about both. Everything here runs on the user's machine with @verinfer/verify; nothing is taken on
// the enclave's word. The DOM half is page.mjs; this half also runs under node (test/explorer.test.mjs).
import {
  AttestationError,
  Reason,
  TrustedRoot,
  checkKeyBinding,
  hex0x,
  hexToBytes,
  imageId as imageIdOf,
  keccak256,
  parseManifest,
  parseSignedReceipt,
  receiptDigest,
  receiptOf,
  verifyAttestation,
  verifyInference,
  VerificationReport,
  addressOf,
  checksumAddress,
  decodeDocument,
  b64decodeStrict,
} from "../src/index.mjs";

/** The enclave rules in the order they are shown; a rule after a failed "chain" cannot be judged. */
export const RULES = Object.freeze([
  ["document", "decodes as a Nitro attestation document (COSE_Sign1 over CBOR)"],
  ["chain", "certificate chain and ES384 signature lead to the pinned root"],
  ["freshness", "timestamp is not in the future, certificates valid now"],
  ["image", "PCR0-2 are the expected image (pinned, or approved on chain)"],
  ["nonce", "carries the nonce this page just drew (not a replayed document)"],
  ["enclave_key", "binds the signing key the enclave serves"],
  ["manifest", "binds the digest of the models the enclave lists"],
  ["encryption_key", "the sealing key offered is the attested one"],
  ["registry", "the enclave is registered and live on the configured contract"],
]);

/** Which rule an attestation rejection reason (attestation/ and js/src/attestation) belongs to. */
export const RULE_OF_REASON = Object.freeze({
  [Reason.MALFORMED]: "document",
  [Reason.UNSUPPORTED_ALGORITHM]: "document",
  [Reason.BAD_SIGNATURE]: "chain",
  [Reason.ROOT_NOT_TRUSTED]: "chain",
  [Reason.CHAIN_BROKEN]: "chain",
  [Reason.CERT_CONSTRAINTS]: "chain",
  [Reason.CERT_EXPIRED]: "freshness",
  [Reason.CERT_NOT_YET_VALID]: "freshness",
  [Reason.STALE]: "freshness",
  [Reason.TIMESTAMP_IN_FUTURE]: "freshness",
  [Reason.PCR_MISMATCH]: "image",
  [Reason.DEBUG_MODE]: "image",
  [Reason.NONCE_MISMATCH]: "nonce",
  [Reason.PUBLIC_KEY_MISMATCH]: "enclave_key",
  [Reason.USER_DATA_MISMATCH]: "manifest",
});

const NONCE_BYTES = 32;

/** A fresh 32-byte challenge from the platform's CSPRNG, as lower-case hex. */
export function drawNonce() {
  const bytes = new Uint8Array(NONCE_BYTES);
  globalThis.crypto.getRandomValues(bytes);
  return hex0x(bytes).slice(2);
}

/** The pinned root: "aws" (the AWS Nitro root shipped in the package), or a PEM text (a simulator's root). */
export function rootFrom(choice) {
  const text = (choice ?? "").trim();
  if (text === "" || text === "aws") return TrustedRoot.aws();
  return TrustedRoot.fromPem(text, "pasted root (not AWS: SIMULATED)");
}

/**
 * What the user pins: PCRs {0: hex, 1: hex, 2: hex} and/or image ids (0x-hex). Empty strings are ignored.
 * Throws Error with a readable message on malformed input, before anything is fetched.
 */
export function parsePins({ pcrs = {}, imageIds = [] } = {}) {
  const expectedPcrs = new Map();
  for (const [index, value] of Object.entries(pcrs)) {
    const text = String(value ?? "").trim().replace(/^0x/i, "");
    if (text === "") continue;
    if (!/^[0-9a-fA-F]{96}$/.test(text)) throw new Error(`PCR${index} is 48 bytes of hex (96 digits)`);
    expectedPcrs.set(Number(index), hexToBytes(text));
  }
  const ids = [];
  for (const value of imageIds) {
    const text = String(value ?? "").trim();
    if (text === "") continue;
    if (!/^(0x)?[0-9a-fA-F]{64}$/.test(text)) throw new Error("an image id is 32 bytes of hex (64 digits)");
    ids.push(hex0x(hexToBytes(text.replace(/^0x/i, ""))));
  }
  return { expectedPcrs, imageIds: ids };
}

// --- JSON-RPC, for the on-chain registry and anchoring (eth_call only: the page never sends a transaction) ---

function selector(signature) {
  return hex0x(keccak256(new TextEncoder().encode(signature)).slice(0, 4)).slice(2);
}

function word(hex) {
  return hex.replace(/^0x/, "").toLowerCase().padStart(64, "0");
}

/** eth_call `to` with `data`; resolves {ok, result} or {ok: false, revert} (a revert is an answer, not an error). */
export async function ethCall(rpc, to, data, fetchImpl = globalThis.fetch) {
  const answer = await fetchImpl(rpc, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_call", params: [{ to, data }, "latest"] }),
  });
  if (!answer.ok) throw new Error(`RPC answered HTTP ${answer.status}`);
  const reply = await answer.json();
  if (reply.error) return { ok: false, revert: String(reply.error.data?.data ?? reply.error.data ?? reply.error.message) };
  return { ok: true, result: String(reply.result) };
}

const CONTRACT_ERRORS = new Map(
  [
    "UnknownEnclave(address)",
    "EnclaveExpired(address,uint64)",
    "EnclaveImageRevoked(address,bytes32)",
    "EnclaveBanned(address)",
  ].map((signature) => [selector(signature), signature.split("(")[0]]),
);

/** The registry's view of an image and an enclave: {imageApproved, live, why}. */
export async function registryStatus(chain, imageId, enclave, fetchImpl = globalThis.fetch) {
  const approved = await ethCall(chain.rpc, chain.contract, `0x${selector("approvedImages(bytes32)")}${word(imageId)}`, fetchImpl);
  if (!approved.ok || approved.result === "0x") throw new Error(`${chain.contract} is not a verifier contract on this chain`);
  const imageApproved = BigInt(approved.result) !== 0n;
  const live = await ethCall(chain.rpc, chain.contract, `0x${selector("requireLiveEnclave(address)")}${word(enclave)}`, fetchImpl);
  let why = null;
  if (!live.ok) {
    const data = /0x[0-9a-fA-F]{8}/.exec(live.revert)?.[0]?.slice(2).toLowerCase();
    why = (data && CONTRACT_ERRORS.get(data)) || live.revert;
  }
  return { imageApproved, live: live.ok, why };
}

/** The enclave the contract recorded this receipt digest for (anchorReceipt), or null. A receipt anchored only in a batch is not looked up: that needs its Merkle proof, which an answer does not carry. */
export async function anchoredFor(chain, digest, fetchImpl = globalThis.fetch) {
  const answer = await ethCall(chain.rpc, chain.contract, `0x${selector("anchoredReceipts(bytes32)")}${word(digest)}`, fetchImpl);
  if (!answer.ok) throw new Error("anchoredReceipts reverted");
  const address = answer.result.replace(/^0x/, "").slice(-40);
  return /^0+$/.test(address) ? null : checksumAddress(hexToBytes(address));
}

// --- the enclave check ---

export class EnclaveCheck {
  constructor() {
    this.rules = new Map(RULES.map(([name, what]) => [name, { name, what, status: "pending", detail: "" }]));
    this.simulated = false;
    this.attested = null; // the VerifiedAttestation, once the chain verified
    this.imageId = null;
    this.pinned = false;
    this.enclave = null;
    this.models = [];
    this.attestationJson = null;
    this.manifest = null;
  }

  set(name, status, detail) {
    const rule = this.rules.get(name);
    rule.status = status;
    rule.detail = detail;
  }

  get failed() {
    return [...this.rules.values()].filter((r) => r.status === "fail");
  }

  /** REJECTED when a rule failed; VERIFIED when nothing failed and the image is pinned; else UNPINNED. */
  get verdict() {
    if (this.failed.length) return "REJECTED";
    return this.pinned ? "VERIFIED" : "UNPINNED";
  }

  toJSON() {
    return {
      verdict: this.verdict,
      simulated: this.simulated,
      imageId: this.imageId,
      enclave: this.enclave,
      rules: [...this.rules.values()],
      models: this.models,
    };
  }
}

function skipRest(check, detail) {
  for (const rule of check.rules.values()) if (rule.status === "pending") check.set(rule.name, "skipped", detail);
}

/**
 * Check an enclave from its GET /attestation JSON (fetched with `nonce`) and its GET /models JSON.
 * `root` a TrustedRoot; `pins` from parsePins; `chain` {rpc, contract} or null; `at` the verification time.
 */
export async function checkEnclave({ attestationJson, modelsJson, nonce, root, pins, chain = null, at = null, fetchImpl }) {
  const check = new EnclaveCheck();
  check.attestationJson = attestationJson;
  check.simulated = !root.isAws;
  let documentBytes;
  try {
    documentBytes = b64decodeStrict(String(attestationJson.document ?? ""));
    decodeDocument(documentBytes);
    check.set("document", "pass", `${documentBytes.length} bytes, format ${attestationJson.format ?? "?"}`);
  } catch (error) {
    check.set("document", "fail", `${error.code ?? "malformed"}: ${error.detail ?? error.message}`);
    skipRest(check, "the document does not decode");
    return check;
  }
  try {
    check.attested = await verifyAttestation(documentBytes, { root }, at);
  } catch (error) {
    if (!(error instanceof AttestationError)) throw error;
    const rule = RULE_OF_REASON[error.code] ?? "chain";
    const vouched = rule !== "document" && rule !== "chain";
    if (vouched) check.set("chain", "pass", `chains to ${root.label}`);
    check.set(rule, "fail", `${error.code}: ${error.detail}`);
    // image here is debug_mode: all-zero PCRs, so nothing else the document says means anything
    const why = vouched ? "an earlier rule failed" : "the document is not vouched for by the pinned root";
    skipRest(check, `not judged: ${why}`);
    return check;
  }
  const attested = check.attested;
  const subjects = attested.chainSubjects.length;
  check.set(
    "chain",
    "pass",
    `${subjects} certificates to ${attested.simulated ? "the SIMULATOR root (not hardware)" : "the AWS Nitro Enclaves root G1"}; module ${attested.moduleId}`,
  );
  check.set("freshness", "pass", `attested at ${new Date(attested.timestampMs).toISOString()}`);
  check.imageId = hex0x(imageIdOf(attested.pcrs));
  checkImage(check, pins);
  checkNonce(check, attested, nonce);
  checkKey(check, attested, attestationJson);
  checkModels(check, attested, modelsJson);
  checkEncryptionKey(check, attested, attestationJson);
  if (chain) await checkRegistry(check, chain, fetchImpl);
  else check.set("registry", "skipped", "no contract configured");
  return check;
}

function checkImage(check, pins) {
  const { expectedPcrs, imageIds } = pins;
  const pcrs = check.attested.pcrs;
  for (const [index, expected] of expectedPcrs) {
    const actual = pcrs.get(index);
    if (!actual || hex0x(actual) !== hex0x(expected)) {
      check.set("image", "fail", `pcr_mismatch: PCR${index} is ${actual ? hex0x(actual) : "absent"}, pinned ${hex0x(expected)}`);
      return;
    }
  }
  if (imageIds.length && !imageIds.includes(check.imageId)) {
    check.set("image", "fail", `image_mismatch: image ${check.imageId} is not a pinned image (${imageIds.join(", ")})`);
    return;
  }
  const pinnedPcrs = [0, 1, 2].every((i) => expectedPcrs.has(i));
  if (pinnedPcrs || imageIds.length) {
    check.pinned = true;
    check.set("image", "pass", `image ${check.imageId} (${pinnedPcrs ? "PCR0-2 pinned" : "image id pinned"})`);
  } else {
    check.set("image", "skipped", `image ${check.imageId} NOT pinned: enter its PCRs or image id, or a contract`);
  }
}

function checkNonce(check, attested, nonce) {
  const got = attested.nonce ? hex0x(attested.nonce).slice(2) : null;
  if (got === nonce) check.set("nonce", "pass", `nonce ${nonce.slice(0, 16)}… drawn by this page`);
  else check.set("nonce", "fail", `nonce_mismatch: the document carries ${got === null ? "no nonce" : `${got.slice(0, 16)}…`}, this page asked for ${nonce.slice(0, 16)}…`);
}

function checkKey(check, attested, json) {
  const key = attested.publicKey;
  if (!key || key.length !== 64) {
    check.set("enclave_key", "fail", "the document binds no 64-byte secp256k1 key");
    return;
  }
  check.enclave = checksumAddress(addressOf(key));
  const served = String(json.enclave ?? "").toLowerCase();
  if (served !== check.enclave.toLowerCase()) check.set("enclave_key", "fail", `attested key is ${check.enclave}, the enclave says it signs as ${json.enclave}`);
  else check.set("enclave_key", "pass", `receipts must be signed by ${check.enclave}`);
}

function checkModels(check, attested, modelsJson) {
  let manifest;
  try {
    manifest = parseManifest(modelsJson);
  } catch (error) {
    check.set("manifest", "fail", `GET /models is not a manifest: ${error.message}`);
    return;
  }
  check.manifest = manifest;
  check.models = [...manifest.models.values()].map((m) => ({
    name: m.name,
    version: m.version,
    task: m.task,
    sha256: m.sha256,
    modelHash: hex0x(m.modelHash),
    description: m.description,
    inputs: m.inputs.map((t) => ({ name: t.name, dtype: t.dtype.name, shape: t.shape })),
    isLlm: m.isLlm,
  }));
  const userData = attested.userData;
  const bound = userData && userData.length >= 32 ? hex0x(userData.slice(0, 32)) : null;
  const listed = hex0x(manifest.digest);
  if (bound === listed) check.set("manifest", "pass", `${manifest.models.size} models, digest ${listed}`);
  else check.set("manifest", "fail", `user_data_mismatch: attested digest ${bound ?? "none"}, the listed models hash to ${listed}`);
}

function checkEncryptionKey(check, attested, json) {
  if (!json.ohttpKeys) {
    check.set("encryption_key", "skipped", "the enclave offers no sealing key");
    return;
  }
  const report = new VerificationReport();
  try {
    checkKeyBinding(report, b64decodeStrict(String(json.ohttpKeys)), attested.userData);
  } catch (error) {
    report.add("encryption_key", "fail", error.message);
  }
  const [result] = report.checks;
  check.set("encryption_key", result.status, result.detail);
}

async function checkRegistry(check, chain, fetchImpl) {
  if (!check.enclave) {
    check.set("registry", "skipped", "no enclave key to look up");
    return;
  }
  let status;
  try {
    status = await registryStatus(chain, check.imageId, check.enclave, fetchImpl);
  } catch (error) {
    check.set("registry", "fail", `cannot read the contract: ${error.message}`);
    return;
  }
  if (!status.imageApproved) {
    check.set("registry", "fail", `image ${check.imageId} is not approved by ${chain.contract}`);
    return;
  }
  if (!status.live) {
    check.set("registry", "fail", `image approved, but enclave ${check.enclave} is not live: ${status.why}`);
    return;
  }
  // An approved image is a pin: the contract's owner chose it, and the page read it from the chain itself.
  if (check.rules.get("image").status === "skipped") {
    check.pinned = true;
    check.set("image", "pass", `image ${check.imageId} (approved on chain by ${chain.contract})`);
  }
  check.set("registry", "pass", `image approved; enclave ${check.enclave} registered and live`);
}

// --- receipts ---

/**
 * Verify an answer (with the request that produced it) against a checked enclave: the same checks and verdict
 * as `verinfer verify`, reusing the enclave check's verified document. `check` must have passed the chain.
 */
export async function verifyAnswer(check, response, request, { root, chain = null, fetchImpl, at = null } = {}) {
  const imageIds = check.pinned && check.rules.get("image").status === "pass" ? [check.imageId] : [];
  const report = await verifyInference(response, check.attestationJson, {
    policy: { root },
    at,
    request,
    manifest: check.manifest,
    imageIds,
    verified: check.attested,
  });
  let anchoring = null;
  if (chain && report.receipt) {
    try {
      const signed = parseSignedReceipt(receiptOf(typeof response === "string" ? JSON.parse(response) : response));
      const digest = hex0x(receiptDigest(signed.receipt));
      const enclave = await anchoredFor(chain, digest, fetchImpl);
      anchoring = enclave
        ? `anchored on chain for enclave ${enclave} (receipt ${digest})`
        : `not anchored on chain (receipt ${digest})`;
    } catch (error) {
      anchoring = `cannot read anchoring: ${error.message}`;
    }
  }
  return { report, anchoring };
}
