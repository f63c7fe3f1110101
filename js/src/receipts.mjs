// Verifying an inference or a completion offline (PROTOCOL.md sections 5, 9 and 10), as a skeptic runs it:
// the attestation chains to the pinned root and matches the pinned image, the key it binds signed the
// receipt, the hashes recompute from what was sent and received, and the answer is from the model the
// request names, in the attested manifest. The checks, their names, statuses and the verdict rules are
// those of the Python verifier (verinfer/verify.py, verify_llm.py), so the two can be compared on any input.
//
// Verdict: REJECTED if a check fails; otherwise VERIFIED when the image is pinned (PCR0, PCR1 and PCR2,
// or image ids) or the caller accepts any image, else UNPINNED.
import { AttestationError, decodeDocument, verifyAttestation, readDocumentBytes } from "./attestation.mjs";
import { base64Decode, bytesEqual, fromHexPy, hex0x, keccak256, utf8 } from "./bytes.mjs";
import { addressOf, checksumAddress, parseSignedReceipt, receiptToJson, recoverSigner, ReceiptError } from "./eip712.mjs";
import { RequestError, parseInputs } from "./inputs.mjs";
import { get, has, internal, isObject, makeObject, parseJson, pyRepr, pyStr } from "./json.mjs";
import {
  CompletionError,
  FINISH_CODES,
  UnexpectedInput,
  checkpointHash,
  completionInputHash,
  completionOutputHash,
  isSse,
  readCompletion,
  readStream,
} from "./llm.mjs";
import { parseManifest } from "./manifest.mjs";
import { KEM_X25519_SHA256, SealingError, commitInput, commitOutput, decodeKeyConfigs, splitUserData } from "./sealing.mjs";
import { BY_V2, encodeTensors, tensorsFromJson } from "./tensors.mjs";

export const IMAGE_PCRS = [0, 1, 2];
/** Without a manifest, several self-describing inputs are tried in every order up to this many. */
export const MAX_UNORDERED_INPUTS = 5;

// --- the report ---

export class VerificationReport {
  constructor({ simulated = false, pinned = false, allowAnyImage = false } = {}) {
    this.checks = [];
    this.simulated = simulated;
    this.pinned = pinned;
    this.allowAnyImage = allowAnyImage;
    this.imageId = null;
    this.partial = null; // a streamed completion verified only up to its last checkpoint
    this.receipt = null; // the receipt's JSON form (timestampMs a bigint)
  }

  add(name, status, detail) {
    this.checks.push({ name, status, detail });
  }

  /** No check failed (not the verdict, which also needs a pinned image). */
  get ok() {
    return this.checks.length > 0 && this.checks.every((c) => c.status !== "fail");
  }

  get verdict() {
    if (!this.ok) return "REJECTED";
    return this.pinned || this.allowAnyImage ? "VERIFIED" : "UNPINNED";
  }

  get verified() {
    return this.verdict === "VERIFIED";
  }

  get verdictLine() {
    let line = this.verdict;
    if (line === "VERIFIED" && !this.pinned) line = "VERIFIED (ANY IMAGE: not pinned)";
    else if (line === "UNPINNED") {
      line =
        "UNPINNED: every check passed, but no image is pinned (give --pcr 0=, 1= and 2=, --image-id " +
        "or --policy; --allow-any-image to accept any image)";
    }
    if (this.partial !== null && line.startsWith("VERIFIED")) line += ` PREFIX ONLY: ${this.partial}`;
    return line + (this.simulated ? " [SIMULATED attestation: not hardware]" : "");
  }

  /** The Python verifier's --json object (receipt.timestampMs a bigint: write it with pyJsonDumps). */
  toJson() {
    return makeObject([
      ["verdict", this.verdict],
      ["verified", this.verified],
      ["pinned", this.pinned],
      ["simulated", this.simulated],
      ["image_id", this.imageId],
      ["partial", this.partial],
      ["receipt", this.receipt],
      ["checks", this.checks.map((c) => makeObject([["name", c.name], ["status", c.status], ["detail", c.detail]]))],
    ]);
  }

  /** JSON.stringify-friendly: timestampMs as a number. */
  toJSON() {
    const out = { ...this.toJson() };
    if (this.receipt) out.receipt = { ...this.receipt, timestampMs: Number(this.receipt.timestampMs) };
    return out;
  }
}

// --- helpers on the policy (the attestation half's Policy object) ---

function pcrMap(policy) {
  const pcrs = policy?.expectedPcrs ?? policy?.expected_pcrs ?? new Map();
  if (pcrs instanceof Map) return new Map([...pcrs].map(([k, v]) => [Number(k), v]));
  return new Map(Object.entries(pcrs).map(([k, v]) => [Number(k), v]));
}

function rootIsAws(policy) {
  const root = policy?.root;
  if (!root) return true; // the default root is AWS's
  const value = root.isAws ?? root.is_aws;
  return typeof value === "function" ? Boolean(value.call(root)) : Boolean(value);
}

/** Whether the policy names the image: PCR0, PCR1 and PCR2 together, or at least one image id. */
export function isPinned(policy, imageIds = []) {
  const pcrs = pcrMap(policy);
  return imageIds.length > 0 || IMAGE_PCRS.every((i) => pcrs.has(i));
}

/** Python's format(x, "g"). */
export function pyFormatG(x) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  const [mantissa, exp] = x.toExponential(5).split("e");
  const exponent = Number(exp);
  const trim = (s) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
  if (exponent >= -4 && exponent < 6) return trim(x.toFixed(5 - exponent));
  return `${trim(mantissa)}e${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
}

function bytesOf(value, what) {
  if (value instanceof Uint8Array) return value;
  if (typeof value === "string") {
    const raw = fromHexPy(value);
    if (raw === null) throw new TypeError(`${what} is not hex: ${value}`);
    return raw;
  }
  throw new TypeError(`${what} must be bytes or hex`);
}

function pcrsOf(doc) {
  const pcrs = doc?.pcrs;
  if (!pcrs) return new Map();
  if (pcrs instanceof Map) return new Map([...pcrs].map(([k, v]) => [Number(k), v]));
  return new Map(Object.entries(pcrs).map(([k, v]) => [Number(k), v]));
}

function docField(doc, camel, snake) {
  if (!doc) return null;
  return doc[camel] ?? doc[snake] ?? null;
}

function imageIdOf(pcrs) {
  return keccak256(new Uint8Array([...pcrs.get(0), ...pcrs.get(1), ...pcrs.get(2)]));
}

/** The attestation document's bytes, and the OHTTP key configurations when given the GET /attestation
 * JSON (parsed or as text). */
export function attestationInput(attestation) {
  if (attestation instanceof Uint8Array) return { document: attestation, keyConfigs: undefined };
  let value = attestation;
  if (typeof value === "string") {
    if (!value.trimStart().startsWith("{")) return { document: readDocumentBytes(utf8(value)), keyConfigs: undefined };
    value = parseJson(value);
  }
  if (isObject(value) && typeof get(value, "document") === "string") {
    const keys = get(value, "ohttpKeys");
    return {
      document: base64Decode(value.document.replace(/\s+/g, "")),
      keyConfigs: typeof keys === "string" ? base64Decode(keys) : undefined,
    };
  }
  throw new TypeError("the attestation is the document's bytes, or the JSON of GET /attestation");
}

// --- the checks every receipt gets ---

async function checkAttestation(report, attestation, policy, at, imageIds, verified) {
  let doc = null;
  try {
    const decoded = decodeDocument(attestation);
    doc = decoded?.document ?? decoded;
  } catch {
    doc = null;
  }
  const pcrs = pcrsOf(doc);
  if (doc && IMAGE_PCRS.every((i) => pcrs.has(i))) report.imageId = hex0x(imageIdOf(pcrs));
  let attested;
  try {
    attested = verified ?? (await verifyAttestation(attestation, policy, at));
  } catch (error) {
    if (!(error instanceof AttestationError) && !(error?.name === "AttestationError" && error.code)) throw error;
    report.add("attestation", "fail", `${error.code}: ${error.detail}`);
    return [docField(doc, "publicKey", "public_key"), docField(doc, "userData", "user_data")];
  }
  const publicKey = docField(attested, "publicKey", "public_key");
  const userData = docField(attested, "userData", "user_data");
  if (imageIds.length && (report.imageId === null || !imageIds.some((id) => hex0x(id) === report.imageId))) {
    const shown = imageIds.map(hex0x).join(", ");
    report.add("attestation", "fail", `image_mismatch: image ${report.imageId ?? "None"} is not a pinned image (${shown})`);
    return [publicKey, userData];
  }
  const root = attested.simulated ? "SIMULATOR root (not hardware)" : (policy?.root?.label ?? attested.rootLabel ?? "AWS Nitro Enclaves root G1");
  const pins = [report.pinned ? "pinned" : "NOT pinned"];
  const nonce = policy?.expectedNonce ?? policy?.expected_nonce ?? null;
  const maxAge = policy?.maxAgeS ?? policy?.max_age_s ?? null;
  if (nonce !== null && nonce !== undefined) pins.push("your nonce");
  if (maxAge !== null && maxAge !== undefined) pins.push(`at most ${pyFormatG(Number(maxAge))} s old`);
  const moduleId = docField(attested, "moduleId", "module_id");
  report.add("attestation", "pass", `chains to ${root}; module ${moduleId}; image ${report.imageId ?? "None"} (${pins.join(", ")})`);
  return [publicKey, userData];
}

/** Checks 1-3 (attestation, enclave_key, signature); returns the attested user_data. */
export async function checkSigner(report, signed, attestation, { policy, at = null, imageIds = [], verified = null }) {
  const [publicKey, userData] = await checkAttestation(report, attestation, policy, at, imageIds, verified);
  if (!publicKey || publicKey.length !== 64) {
    report.add("enclave_key", "fail", "the attestation does not bind a 64-byte secp256k1 public key");
  } else if (!bytesEqual(addressOf(publicKey), signed.enclave)) {
    report.add(
      "enclave_key",
      "fail",
      `attested key is ${checksumAddress(addressOf(publicKey))}, receipt names ${checksumAddress(signed.enclave)}`,
    );
  } else {
    report.add("enclave_key", "pass", `attested key is enclave ${checksumAddress(signed.enclave)}`);
  }
  try {
    const signer = recoverSigner(signed.receipt, signed.signature);
    if (bytesEqual(signer, signed.enclave)) report.add("signature", "pass", "EIP-712 signature recovers to the enclave");
    else report.add("signature", "fail", `signature recovers to ${checksumAddress(signer)}, not the enclave`);
  } catch (error) {
    if (!(error instanceof ReceiptError)) throw error;
    report.add("signature", "fail", error.message);
  }
  return userData;
}

/** encryption_key: every X25519 key configuration offered names the key user_data[32:64] binds. */
export function checkKeyBinding(report, keyConfigs, userData) {
  let bound;
  let configs;
  try {
    bound = splitUserData(userData).encryptionKey;
    configs = decodeKeyConfigs(keyConfigs);
  } catch (error) {
    if (!(error instanceof SealingError)) throw error;
    report.add("encryption_key", "fail", error.message);
    return;
  }
  const offered = configs.filter((c) => c.kemId === KEM_X25519_SHA256).map((c) => c.publicKey);
  if (bound === null) report.add("encryption_key", "fail", "a key configuration is offered, but the document binds no key");
  else if (!offered.length || offered.some((key) => !bytesEqual(key, bound))) {
    report.add("encryption_key", "fail", "the key configuration names a key the attestation does not bind");
  } else report.add("encryption_key", "pass", `the OHTTP key configuration names the attested key ${hex0x(bound)}`);
}

function attestedManifestDigest(userData) {
  try {
    return splitUserData(userData).manifestDigest;
  } catch {
    return null;
  }
}

/** The answer is for the requested model: the response names it, and modelHash is its attested sha256. */
export function checkModel(report, { manifest, userData, modelHash, requested, named, claimed, withRequest }) {
  if (withRequest && requested === null) {
    report.add(
      "model",
      "fail",
      "the request names no model (a V2 request has it in the URL /v2/models/NAME/infer): give --model NAME",
    );
    return;
  }
  if (requested !== null && named !== null && named !== requested) {
    report.add("model", "fail", `the request names model ${pyRepr(named)}, but --model says ${pyRepr(requested)}`);
    return;
  }
  if (requested !== null && claimed !== null && claimed !== requested) {
    report.add("model", "fail", `the response is from model ${pyRepr(claimed)}, but the request asked ${pyRepr(requested)}`);
    return;
  }
  const name = requested || claimed;
  const source = requested !== null ? "the requested model" : "the model the response names (no request)";
  if (!manifest) {
    report.add("model", "skipped", `no manifest given: modelHash not tied to the attested model set (${source}: ${pyStr(name)})`);
    return;
  }
  const digest = attestedManifestDigest(userData);
  if (!digest || !bytesEqual(digest, manifest.digest)) {
    report.add("model", "fail", "the manifest's digest is not the attested user_data (its first half)");
    return;
  }
  if (name === null) {
    report.add("model", "fail", "no model named: give the request (or --model NAME)");
    return;
  }
  const entry = manifest.models.get(name);
  if (!entry) {
    report.add("model", "fail", `model ${pyRepr(name)} is not in the attested manifest`);
    return;
  }
  if (!bytesEqual(entry.modelHash, modelHash)) {
    const other = [...manifest.models.values()].find((m) => bytesEqual(m.modelHash, modelHash))?.name;
    report.add(
      "model",
      "fail",
      other
        ? `modelHash is the sha256 of ${pyRepr(other)}, not of ${pyRepr(name)}`
        : `modelHash is not the sha256 of ${pyRepr(name)} in the attested manifest`,
    );
    return;
  }
  report.add(
    "model",
    "pass",
    `${pyStr(entry.name)} v${entry.version} (sha256 ${entry.sha256.slice(0, 16)}...), ${source}, is in the attested ` +
      "manifest and is the receipt's modelHash",
  );
}

// --- the pieces of a response and a request ---

/** The receipt of an /infer response, a V2 response (parameters.receipt), or a bare receipt. */
export function receiptOf(response) {
  if (isObject(response)) {
    if (has(response, "receipt")) return response.receipt;
    const parameters = get(response, "parameters");
    if (isObject(parameters) && has(parameters, "receipt")) return parameters.receipt;
    if (has(response, "signature")) return response;
  }
  throw new ReceiptError("no receipt found in the response");
}

/** The model an /infer response (`model`) or a V2 response (`model_name`) says it is from. */
export function responseModel(response) {
  if (!isObject(response)) return null;
  const model = get(response, "model");
  const name = truthy(model) ? model : (get(response, "model_name") ?? null);
  return typeof name === "string" ? name : null;
}

function truthy(value) {
  if (value === null || value === undefined || value === false || value === "" || value === 0 || value === 0n) return false;
  if (Array.isArray(value)) return value.length > 0;
  if (isObject(value)) return Object.keys(value).length > 0;
  return true;
}

/** The request_id a request sets: /infer `request_id`, V2 `parameters.request_id`; null if unset. */
export function requestIdOf(request) {
  if (!isObject(request)) return null;
  const direct = get(request, "request_id") ?? null;
  if (direct !== null) return direct;
  const parameters = get(request, "parameters");
  return isObject(parameters) ? (get(parameters, "request_id") ?? null) : null;
}

/** Whether request inputs can be encoded without the model's signature: V2-style tensor objects. */
export function selfDescribing(inputs) {
  return (
    Array.isArray(inputs) &&
    inputs.length > 0 &&
    inputs.every(
      (item) =>
        isObject(item) &&
        typeof get(item, "name") === "string" &&
        typeof get(item, "datatype") === "string" &&
        BY_V2.has(item.datatype) &&
        Array.isArray(get(item, "shape")) &&
        has(item, "data"),
    )
  );
}

function commitments(salt) {
  if (salt === null || salt === undefined) return [(h) => h, (h) => h];
  return [(h) => commitInput(salt, h), (h) => commitOutput(salt, h)];
}

function salted(salt) {
  return salt === null || salt === undefined ? "" : " (committed with the sealed request's salt)";
}

function* permutations(items) {
  if (items.length <= 1) {
    yield items.slice();
    return;
  }
  for (let i = 0; i < items.length; i++) {
    const rest = [...items.slice(0, i), ...items.slice(i + 1)];
    for (const tail of permutations(rest)) yield [items[i], ...tail];
  }
}

function checkDescribedInputs(report, inputs, expected, seal) {
  let tensors;
  try {
    tensors = tensorsFromJson(inputs, "input");
  } catch (error) {
    report.add("input_hash", "fail", `request inputs do not encode: ${error.message}`);
    return;
  }
  const first = keccak256(encodeTensors(tensors));
  const orders = tensors.length <= MAX_UNORDERED_INPUTS ? permutations(tensors) : [tensors];
  for (const order of orders) {
    const recomputed = keccak256(encodeTensors(order));
    if (bytesEqual(seal(recomputed), expected)) {
      report.add(
        "input_hash",
        "pass",
        `keccak256 of the request's self-describing inputs is ${hex0x(recomputed)} (no manifest)`,
      );
      return;
    }
  }
  const tried = tensors.length > 1 && tensors.length <= MAX_UNORDERED_INPUTS ? ", every order tried)" : ")";
  report.add("input_hash", "fail", `keccak256 of the request's self-describing inputs is ${hex0x(first)} (no manifest${tried}`);
}

function checkInputs(report, request, entry, expected, { manifest, name, seal }) {
  if (request === null) {
    report.add("input_hash", "skipped", "no request given: inputs not checked");
    return;
  }
  const inputs = isObject(request) ? (get(request, "inputs") ?? null) : null;
  if (!entry) {
    if (!selfDescribing(inputs)) {
      let why;
      if (!manifest) why = "no manifest given";
      else why = name === null ? "no model named" : `model ${pyRepr(name)} is not in the manifest`;
      report.add(
        "input_hash",
        "skipped",
        `${why}: the request's tensors do not all state name, datatype and shape, so encoding them ` +
          "needs the model's input signature from the manifest (give --manifest)",
      );
      return;
    }
    checkDescribedInputs(report, inputs, expected, seal);
    return;
  }
  let parsed;
  try {
    parsed = parseInputs(entry, inputs);
  } catch (error) {
    if (!(error instanceof RequestError)) throw error;
    report.add("input_hash", "fail", `request inputs do not parse: ${error.message}`);
    return;
  }
  const recomputed = keccak256(encodeTensors(parsed));
  report.add(
    "input_hash",
    bytesEqual(seal(recomputed), expected) ? "pass" : "fail",
    `keccak256 of the request's inputs is ${hex0x(recomputed)}`,
  );
}

function checkRequestId(report, request, actual) {
  const wanted = requestIdOf(request);
  if (wanted === null) return;
  const raw = typeof wanted === "string" ? fromHexPy(wanted) : null;
  if (raw === null || raw.length !== 32) {
    report.add("request_id", "fail", `the request's request_id is not 0x-hex of 32 bytes: ${pyRepr(wanted).slice(0, 80)}`);
  } else if (!bytesEqual(raw, actual)) {
    report.add("request_id", "fail", `the receipt's requestId is ${hex0x(actual)}, the request's is ${hex0x(raw)}`);
  } else {
    report.add("request_id", "pass", "the receipt's requestId is the request's request_id");
  }
}

function manifestOf(manifest) {
  if (manifest === null || manifest === undefined) return null;
  if (manifest.models instanceof Map && manifest.digest instanceof Uint8Array) return manifest;
  return parseManifest(manifest);
}

function options(opts) {
  const imageIds = (opts.imageIds ?? []).map((id) => bytesOf(id, "an image id"));
  const salt = opts.salt === null || opts.salt === undefined ? null : bytesOf(opts.salt, "the salt");
  if (salt !== null && salt.length !== 32) throw new TypeError("the salt is 32 bytes");
  return {
    policy: opts.policy,
    at: opts.at ?? null,
    manifest: manifestOf(opts.manifest),
    imageIds,
    allowAnyImage: Boolean(opts.allowAnyImage),
    salt,
    verified: opts.verified ?? null,
  };
}

function receiptJson(signed) {
  return receiptToJson(signed);
}

/**
 * Verify an /infer or V2 answer (or a bare receipt). `response` and `request` are parsed JSON or JSON
 * text/bytes (text is read exactly: int64 values beyond 2^53 stay exact); `attestation` is the
 * document's bytes or the JSON of GET /attestation (whose ohttpKeys add the encryption_key check).
 * Options: policy (the attestation half's Policy), at (Date; default now), request, manifest (parsed or
 * JSON), model (the model the request was sent to, when it does not say: V2), imageIds, allowAnyImage,
 * salt (a sealed request's commitment salt), keyConfigs (application/ohttp-keys bytes), verified (the
 * result of verifyAttestation for this document, to skip the chain).
 */
export async function verifyInference(response, attestation, opts = {}) {
  const { policy, at, manifest, imageIds, allowAnyImage, salt, verified } = options(opts);
  const evidence = attestationInput(attestation);
  const keyConfigs = opts.keyConfigs !== undefined ? opts.keyConfigs : evidence.keyConfigs;
  const body = internal(response);
  const request = opts.request === undefined || opts.request === null ? null : internal(opts.request);
  const model = opts.model ?? null;
  const [sealIn, sealOut] = commitments(salt);
  const report = new VerificationReport({
    simulated: !rootIsAws(policy),
    pinned: isPinned(policy, imageIds),
    allowAnyImage,
  });
  let signed;
  try {
    signed = parseSignedReceipt(receiptOf(body));
  } catch (error) {
    if (!(error instanceof ReceiptError)) throw error;
    report.add("receipt", "fail", error.message);
    return report;
  }
  report.receipt = receiptJson(signed);
  const receipt = signed.receipt;
  report.add("receipt", "pass", `request ${report.receipt.requestId} at ${receipt.timestampMs} ms`);

  const userData = await checkSigner(report, signed, evidence.document, { policy, at, imageIds, verified });
  if (keyConfigs !== undefined && keyConfigs !== null) checkKeyBinding(report, keyConfigs, userData);

  try {
    const tensors = tensorsFromJson(get(body, "outputs") ?? null, "output");
    const recomputed = keccak256(encodeTensors(tensors));
    report.add(
      "output_hash",
      bytesEqual(sealOut(recomputed), receipt.outputHash) ? "pass" : "fail",
      `keccak256 of the returned outputs is ${hex0x(recomputed)}${salted(salt)}`,
    );
  } catch (error) {
    report.add("output_hash", "fail", `cannot recompute: ${error.message}`);
  }

  let requested = model;
  const named = isObject(request) ? (get(request, "model") ?? null) : null;
  if (requested === null && typeof named === "string") requested = named;
  const claimed = responseModel(body);
  const name = requested || claimed;
  const entry = manifest && name !== null ? (manifest.models.get(name) ?? null) : null;
  checkInputs(report, request, entry, receipt.inputHash, { manifest, name, seal: sealIn });
  checkModel(report, {
    manifest,
    userData,
    modelHash: receipt.modelHash,
    requested,
    named: typeof named === "string" ? named : null,
    claimed,
    withRequest: request !== null,
  });
  checkRequestId(report, request, receipt.requestId);
  return report;
}

function countsOf(usage) {
  if (!isObject(usage)) return null;
  const prompt = get(usage, "prompt_tokens");
  const completion = get(usage, "completion_tokens");
  return typeof prompt === "bigint" && typeof completion === "bigint" ? [prompt, completion] : null;
}

function codePoints(text) {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

function checkOutput(report, transcript, checkpoint, actual, seal) {
  if (transcript.receipt !== null) {
    const counts = countsOf(transcript.usage);
    const reason = transcript.finishReason;
    if (reason !== null && typeof reason === "object") throw new UnexpectedInput("finish_reason is not hashable");
    if (counts === null || typeof reason !== "string" || !Object.hasOwn(FINISH_CODES, reason)) {
      report.add("output_hash", "fail", "the response lacks finish_reason or usage token counts");
      return;
    }
    let recomputed;
    try {
      recomputed = completionOutputHash(transcript.text, reason, ...counts);
    } catch (error) {
      if (!(error instanceof CompletionError)) throw error;
      report.add("output_hash", "fail", error.message);
      return;
    }
    const pass = bytesEqual(seal(recomputed), actual);
    report.add(
      "output_hash",
      pass ? "pass" : "fail",
      `outputHash over the ${codePoints(transcript.text)}-character text, finish_reason ${reason}, usage ` +
        `(${counts[0]}, ${counts[1]})` +
        (pass ? "" : ": differs"),
    );
    return;
  }
  let recomputed;
  try {
    recomputed = checkpointHash(checkpoint.tokens, checkpoint.chain);
  } catch (error) {
    throw new UnexpectedInput(error.message); // Python raises here too
  }
  if (!bytesEqual(recomputed, actual)) {
    report.add("output_hash", "fail", "the last checkpoint's outputHash does not recompute from the chain");
    return;
  }
  report.partial =
    `the first ${checkpoint.tokens} tokens (${codePoints(checkpoint.text)} characters) are vouched for; ` +
    "the stream ended before its final receipt";
  report.add("output_hash", "pass", `checkpoint at ${checkpoint.tokens} tokens recomputes from the chain`);
}

function asBytes(value) {
  if (value === null || value === undefined) return null;
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (typeof value === "string") return utf8(value);
  throw new TypeError("a completion request or response is bytes or text");
}

/**
 * Verify a /v1 completion: `requestBody` the exact bytes sent (null: not checked), `response` the JSON
 * answer or the SSE transcript of a stream (bytes or text). A transcript cut short verifies up to its last
 * checkpoint (report.partial; verdict line "VERIFIED PREFIX ONLY: ..."). Options as verifyInference's.
 */
export async function verifyCompletion(requestBody, response, attestation, opts = {}) {
  const { policy, at, manifest, imageIds, allowAnyImage, salt, verified } = options(opts);
  const evidence = attestationInput(attestation);
  const keyConfigs = opts.keyConfigs !== undefined ? opts.keyConfigs : evidence.keyConfigs;
  const requestBytes = asBytes(requestBody);
  const responseBytes = asBytes(response);
  const [sealIn, sealOut] = commitments(salt);
  const report = new VerificationReport({
    simulated: !rootIsAws(policy),
    pinned: isPinned(policy, imageIds),
    allowAnyImage,
  });
  const inputDigest = requestBytes === null ? null : sealIn(completionInputHash(requestBytes));
  let transcript;
  try {
    transcript = isSse(responseBytes) ? readStream(responseBytes, inputDigest) : readCompletion(responseBytes);
  } catch (error) {
    if (error instanceof UnexpectedInput) throw error;
    report.add("completion", "fail", `cannot read the response: ${error.message}`);
    return report;
  }
  const checkpoint = transcript.checkpoints.length ? transcript.checkpoints[transcript.checkpoints.length - 1] : null;
  const evidenceReceipt = transcript.receipt !== null ? transcript.receipt : checkpoint ? checkpoint.receipt : null;
  let signed;
  try {
    signed = parseSignedReceipt(evidenceReceipt);
  } catch (error) {
    if (!(error instanceof ReceiptError)) throw error;
    const detail = evidenceReceipt === null ? "no receipt: the stream ended before its first checkpoint" : error.message;
    report.add("receipt", "fail", detail);
    return report;
  }
  report.receipt = receiptJson(signed);
  const receipt = signed.receipt;
  report.add("receipt", "pass", `request ${report.receipt.requestId} at ${receipt.timestampMs} ms`);
  const userData = await checkSigner(report, signed, evidence.document, { policy, at, imageIds, verified });
  if (keyConfigs !== undefined && keyConfigs !== null) checkKeyBinding(report, keyConfigs, userData);

  if (inputDigest === null) report.add("input_hash", "skipped", "no request given: inputHash is not tied to what was asked");
  else if (bytesEqual(inputDigest, receipt.inputHash)) {
    report.add("input_hash", "pass", "keccak256 of the request bytes is the receipt's inputHash");
  } else report.add("input_hash", "fail", `keccak256 of the request bytes is ${hex0x(inputDigest)}`);

  if (transcript.streamed) {
    if (inputDigest === null) report.add("chain", "skipped", "the chain starts from inputHash: give the request");
    else if (transcript.chainBreak !== null) report.add("chain", "fail", `the hash chain breaks at ${transcript.chainBreak}`);
    else report.add("chain", "pass", "every chunk's chain recomputes from the text received");
  }
  checkOutput(report, transcript, checkpoint, receipt.outputHash, sealOut);

  let requested = null;
  if (requestBytes !== null) {
    try {
      const parsed = parseJson(requestBytes, { mode: "orjson" });
      const named = isObject(parsed) ? (get(parsed, "model") ?? null) : undefined;
      if (named === undefined) throw new TypeError("not an object"); // Python: AttributeError, caught
      requested = typeof named === "string" ? named : null;
    } catch {
      requested = null;
    }
  }
  checkModel(report, {
    manifest,
    userData,
    modelHash: receipt.modelHash,
    requested,
    named: requested,
    claimed: typeof transcript.model === "string" ? transcript.model : null,
    withRequest: requestBytes !== null,
  });
  return report;
}

// --- the policy file of `verify --policy FILE` (verinfer/verify.py PolicyFile) ---

const POLICY_KEYS = ["allow_debug", "image_ids", "max_age_s", "pcrs", "root"];

/** An image id as 0x-hex of 32 bytes, or an Error (Python's ValueError). */
export function parseImageId(text) {
  const value = typeof text === "string" ? fromHexPy(text) : null;
  if (value === null || value.length !== 32) {
    throw new Error(`an image id is 0x-hex of 32 bytes (keccak256(PCR0 || PCR1 || PCR2)), got ${pyRepr(text)}`);
  }
  return value;
}

function joinPath(base, path) {
  if (path.startsWith("/") || base === "." || base === "") return path;
  return `${base}/${path}`;
}

export function dirname(path) {
  const at = path.lastIndexOf("/");
  if (at < 0) return ".";
  return at === 0 ? "/" : path.slice(0, at);
}

/**
 * A policy file's JSON ({root, pcrs, image_ids, allow_debug, max_age_s}, every key optional, unknown keys
 * refused): {root (null, "aws" or a path relative to `base`), pcrs: Map, imageIds, allowDebug, maxAgeS}.
 * Throws Error naming the bad key.
 */
export function parsePolicyFile(data, base = ".") {
  if (!isObject(data)) throw new Error("a policy is a JSON object");
  const unknown = Object.keys(data).filter((k) => !POLICY_KEYS.includes(k)).sort();
  if (unknown.length) {
    throw new Error(`unknown policy key(s) [${unknown.map(pyRepr).join(", ")}]; known: [${POLICY_KEYS.map(pyRepr).join(", ")}]`);
  }
  let root = get(data, "root") ?? null;
  if (root !== null && !(typeof root === "string" && root)) throw new Error("policy 'root' is 'aws' or the path of a PEM file");
  if (root !== null && root !== "aws") root = joinPath(base, root);
  const pcrs = new Map();
  const rawPcrs = get(data, "pcrs") ?? Object.create(null);
  if (!isObject(rawPcrs)) throw new Error('policy "pcrs" is an object {"N": "HEX"}');
  for (const [index, value] of Object.entries(rawPcrs)) {
    if (!(/^[0-9]+$/.test(index) && Number(index) < 32 && typeof value === "string")) {
      throw new Error(`policy "pcrs" maps "0".."31" to hex strings, got ${pyRepr(index)}: ${pyRepr(value)}`);
    }
    const raw = fromHexPy(value);
    if (raw === null) throw new Error(`policy PCR${index} is not hex: ${pyRepr(value)}`);
    pcrs.set(Number(index), raw);
  }
  const rawImages = get(data, "image_ids") ?? [];
  if (!Array.isArray(rawImages)) throw new Error('policy "image_ids" is a list of 0x-hex image ids');
  const allowDebug = get(data, "allow_debug") ?? false;
  if (typeof allowDebug !== "boolean") throw new Error('policy "allow_debug" is true or false');
  const maxAge = get(data, "max_age_s") ?? null;
  if (maxAge !== null && typeof maxAge !== "bigint" && typeof maxAge !== "number") {
    throw new Error('policy "max_age_s" is a number of seconds');
  }
  return {
    root,
    pcrs,
    imageIds: rawImages.map(parseImageId),
    allowDebug,
    maxAgeS: maxAge === null ? null : Number(maxAge),
  };
}

