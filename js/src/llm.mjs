// LLM completions (PROTOCOL.md section 9): the completion output encoding, the streamed hash chain and
// checkpoints, and reading a saved answer (JSON, or the SSE transcript of a stream) as a client got it.
//
//   inputHash      = keccak256(the exact request body bytes)
//   outputHash     = keccak256(encoding of text uint8[n], finish_reason uint8[1], usage uint32[2])
//   chain_0        = inputHash;  chain_k = keccak256(chain_{k-1} || UTF-8 of the k-th non-empty text delta)
//   checkpointHash = keccak256("verinfer.llm.checkpoint.v1" || 0x00 || u32 BE tokens || chain)
import { concatBytes, hex0x, keccak256, sha256, toHex, utf8 } from "./bytes.mjs";
import { get, has, isObject, parseJson } from "./json.mjs";
import { BY_NAME, encodeTensors, makeTensor, pyIntOfString } from "./tensors.mjs";

export const FINISH_CODES = Object.freeze({ stop: 1, length: 2 });
export const CHECKPOINT_DOMAIN = concatBytes(utf8("verinfer.llm.checkpoint.v1"), Uint8Array.of(0));
export const OUTPUT_LAYOUT = Object.freeze([
  ["text", "uint8"],
  ["finish_reason", "uint8"],
  ["usage", "uint32"],
]);

export class CompletionError extends Error {
  constructor(message) {
    super(message);
    this.name = "CompletionError";
  }
}

/** Where the Python verifier itself would raise (not a verdict): the JS verifier throws too. */
export class UnexpectedInput extends TypeError {
  constructor(message) {
    super(message);
    this.name = "UnexpectedInput";
  }
}

const UINT32_END = 2n ** 32n;

/** keccak256 of the request body bytes: a completion receipt's inputHash. */
export function completionInputHash(requestBody) {
  return keccak256(typeof requestBody === "string" ? utf8(requestBody) : requestBody);
}

/** The completion output encoding (three tensors: text, finish_reason, usage). */
export function completionOutputEncoding(text, finishReason, promptTokens, completionTokens) {
  if (!Object.hasOwn(FINISH_CODES, finishReason)) {
    throw new CompletionError(`finish_reason must be one of ['length', 'stop'], not ${JSON.stringify(finishReason)}`);
  }
  const prompt = BigInt(promptTokens);
  const completion = BigInt(completionTokens);
  if (!(prompt >= 0n && prompt < UINT32_END && completion >= 0n && completion < UINT32_END)) {
    throw new CompletionError("token counts must fit in uint32");
  }
  const bytes = utf8(text);
  return encodeTensors([
    { name: "text", dtype: BY_NAME.get("uint8"), shape: [bytes.length], data: bytes },
    makeTensor("finish_reason", "uint8", [1], [BigInt(FINISH_CODES[finishReason])]),
    makeTensor("usage", "uint32", [2], [prompt, completion]),
  ]);
}

export function completionOutputHash(text, finishReason, promptTokens, completionTokens) {
  return keccak256(completionOutputEncoding(text, finishReason, promptTokens, completionTokens));
}

export function chainNext(chain, delta) {
  return keccak256(concatBytes(chain, utf8(delta)));
}

/** The outputHash of a checkpoint receipt: a signed prefix, never a complete output. */
export function checkpointHash(completionTokens, chain) {
  const tokens = BigInt(completionTokens);
  if (tokens < 0n || tokens >= UINT32_END) throw new CompletionError("token counts must fit in uint32");
  const count = new Uint8Array(4);
  new DataView(count.buffer).setUint32(0, Number(tokens));
  return keccak256(concatBytes(CHECKPOINT_DOMAIN, count, chain));
}

/** EIP-191 personal_sign digest of `text` (GET /v1/signature/{id}). */
export function personalMessageDigest(text) {
  const raw = utf8(text);
  return keccak256(concatBytes(utf8(`\x19Ethereum Signed Message:\n${raw.length}`), raw));
}

/** The text of GET /v1/signature/{id}: sha256 hex of the request body ":" sha256 hex of the response. */
export function signatureText(requestBody, responseBody) {
  return `${toHex(sha256(requestBody))}:${toHex(sha256(responseBody))}`;
}

// --- reading saved answers ---

const ASCII_SPACE = new Set([0x20, 0x09, 0x0a, 0x0d, 0x0b, 0x0c]);

function strip(bytes, left = true, right = true) {
  let start = 0;
  let end = bytes.length;
  if (left) while (start < end && ASCII_SPACE.has(bytes[start])) start++;
  if (right) while (end > start && ASCII_SPACE.has(bytes[end - 1])) end--;
  return bytes.subarray(start, end);
}

function startsWith(bytes, prefix) {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[i] !== prefix.charCodeAt(i)) return false;
  return true;
}

function splitOn(bytes, separator) {
  const parts = [];
  let start = 0;
  for (let i = 0; i + 1 < bytes.length; i++) {
    if (bytes[i] === separator[0] && bytes[i + 1] === separator[1]) {
      parts.push(bytes.subarray(start, i));
      start = i + 2;
      i++;
    }
  }
  parts.push(bytes.subarray(start));
  return parts;
}

/** Whether saved answer bytes are an SSE transcript (a streamed completion). */
export function isSse(data) {
  return startsWith(strip(data, true, false), "data:");
}

/** Whether parsed JSON is a non-streamed completion (OpenAI's `object` says which). */
export function isCompletion(response) {
  const kind = get(response, "object");
  return kind === "text_completion" || kind === "chat.completion";
}

/** Python truthiness of a JSON value. */
export function truthy(value) {
  if (value === null || value === undefined || value === false) return false;
  if (typeof value === "bigint") return value !== 0n;
  if (typeof value === "number") return value !== 0;
  if (typeof value === "string" || Array.isArray(value)) return value.length > 0;
  if (isObject(value)) return Object.keys(value).length > 0;
  return true;
}

/** Python's `(value or [])[0]`, for a chunk's or a body's `choices`. */
function firstChoice(choices) {
  if (!truthy(choices)) return undefined;
  if (Array.isArray(choices)) return choices[0];
  if (typeof choices === "string") return choices[0];
  throw new UnexpectedInput("choices is not a list");
}

function deltaOf(chunk) {
  const choice = firstChoice(get(chunk, "choices"));
  if (!isObject(choice)) return "";
  let text = get(choice, "text") ?? null;
  if (text === null && isObject(get(choice, "delta"))) text = get(choice.delta, "content");
  return typeof text === "string" ? text : "";
}

/** Python's int() of a chunk's `tokens`: a ValueError (a verdict) for a bad string, else a crash. */
function pyInt(value) {
  if (typeof value === "bigint") return value;
  if (typeof value === "boolean") return value ? 1n : 0n;
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new UnexpectedInput("cannot convert float infinity to integer");
    return BigInt(Math.trunc(value));
  }
  if (typeof value === "string") {
    const n = pyIntOfString(value);
    if (n === null) throw new CompletionError(`invalid literal for int() with base 10: '${value}'`);
    return n;
  }
  throw new UnexpectedInput("int() argument must be a string or a real number");
}

/**
 * A streamed completion rebuilt from its SSE bytes, the chain recomputed from `inputDigest` (null: not
 * recomputed) as the client received it: {streamed, model, text, finishReason, usage, receipt,
 * checkpoints: [{tokens, chain, text, receipt}], chainBreak}. Throws for a chunk that is not JSON.
 */
export function readStream(data, inputDigest) {
  const transcript = {
    streamed: true,
    model: null,
    text: "",
    finishReason: null,
    usage: null,
    receipt: null,
    checkpoints: [],
    chainBreak: null,
  };
  let chain = inputDigest ?? null;
  const parts = [];
  const events = splitOn(data, [0x0a, 0x0a]);
  for (let number = 0; number < events.length; number++) {
    const line = strip(events[number]);
    if (!startsWith(line, "data:")) continue;
    const payload = strip(line.subarray(5));
    if (payload.length === 6 && startsWith(payload, "[DONE]")) break;
    const chunk = parseJson(payload, { mode: "orjson" });
    if (!isObject(chunk)) continue;
    if (has(chunk, "model")) transcript.model = chunk.model;
    const delta = deltaOf(chunk);
    if (delta) {
      parts.push(delta);
      if (chain !== null) chain = chainNext(chain, delta);
    }
    const found = get(chunk, "verinfer");
    const extension = isObject(found) ? found : Object.create(null);
    const stated = get(extension, "chain") ?? null;
    if (chain !== null && stated !== null && stated !== hex0x(chain)) {
      transcript.chainBreak ??= `chunk ${number}`;
    }
    const choice = firstChoice(get(chunk, "choices"));
    if (isObject(choice) && truthy(get(choice, "finish_reason"))) transcript.finishReason = choice.finish_reason;
    if (truthy(get(chunk, "usage"))) transcript.usage = chunk.usage;
    if (has(extension, "checkpoint") && chain !== null) {
      const tokens = pyInt(has(extension, "tokens") ? extension.tokens : -1n);
      transcript.checkpoints.push({ tokens, chain, text: parts.join(""), receipt: extension.checkpoint });
    }
    if (has(extension, "receipt")) {
      transcript.receipt = extension.receipt;
      if (has(extension, "usage")) transcript.usage = extension.usage;
    }
  }
  transcript.text = parts.join("");
  return transcript;
}

/** A non-streamed completion from its JSON bytes (same shape as readStream's, no checkpoints). */
export function readCompletion(data) {
  const body = parseJson(data, { mode: "orjson" });
  if (!isObject(body)) throw new CompletionError("a completion response is a JSON object");
  const choices = get(body, "choices");
  const choice = truthy(choices) ? firstChoice(choices) : Object.create(null);
  if (!isObject(choice)) throw new UnexpectedInput("a choice is not an object");
  let text = get(choice, "text") ?? null;
  if (text === null && isObject(get(choice, "message"))) text = get(choice.message, "content");
  return {
    streamed: false,
    model: get(body, "model") ?? null,
    text: typeof text === "string" ? text : "",
    finishReason: get(choice, "finish_reason") ?? null,
    usage: get(body, "usage") ?? null,
    receipt: get(body, "receipt") ?? null,
    checkpoints: [],
    chainBreak: null,
  };
}

/** The text a verified report vouches for: all of it, or the prefix up to the last checkpoint. */
export function verifiedText(response, requestBody = null) {
  const data = typeof response === "string" ? utf8(response) : response;
  const transcript = isSse(data)
    ? readStream(data, requestBody === null ? null : completionInputHash(requestBody))
    : readCompletion(data);
  if (transcript.receipt !== null || !transcript.checkpoints.length) return transcript.text;
  return transcript.checkpoints[transcript.checkpoints.length - 1].text;
}
