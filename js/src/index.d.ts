// Types of @verinfer/verify. The attestation half's declarations are in ./attestation.d.ts.
export * from "./attestation.js";

type Bytes = Uint8Array;
type Hex = string;

/** A JSON value as the verifier reads it: integers as bigint (exact), other numbers as number. */
export type JsonValue = null | boolean | string | number | bigint | JsonValue[] | { [key: string]: JsonValue };

// --- the report ---

export type CheckStatus = "pass" | "fail" | "skipped";
export type Verdict = "VERIFIED" | "UNPINNED" | "REJECTED";
/** Check names, as the Python verifier names them. */
export type CheckName =
  | "receipt"
  | "attestation"
  | "enclave_key"
  | "signature"
  | "encryption_key"
  | "output_hash"
  | "input_hash"
  | "model"
  | "request_id"
  | "completion"
  | "chain";

export interface Check {
  name: CheckName;
  status: CheckStatus;
  detail: string;
}

/** A receipt's JSON form (section 2); timestampMs exact. */
export interface ReceiptJson {
  requestId: Hex;
  modelHash: Hex;
  inputHash: Hex;
  outputHash: Hex;
  timestampMs: bigint;
  enclave: Hex;
  signature: Hex;
}

export class VerificationReport {
  checks: Check[];
  simulated: boolean;
  pinned: boolean;
  allowAnyImage: boolean;
  /** keccak256(PCR0 || PCR1 || PCR2) of the document, 0x-hex, or null. */
  imageId: Hex | null;
  /** For a streamed completion cut short: what the last checkpoint vouches for. */
  partial: string | null;
  receipt: ReceiptJson | null;
  /** No check failed (not the verdict: that also needs a pinned image, or allowAnyImage). */
  readonly ok: boolean;
  readonly verdict: Verdict;
  readonly verified: boolean;
  /** The Python CLI's verdict line, e.g. "VERIFIED [SIMULATED attestation: not hardware]". */
  readonly verdictLine: string;
  constructor(init?: { simulated?: boolean; pinned?: boolean; allowAnyImage?: boolean });
  add(name: CheckName, status: CheckStatus, detail: string): void;
  /** The Python verifier's --json object (write it with pyJsonDumps). */
  toJson(): {
    verdict: Verdict;
    verified: boolean;
    pinned: boolean;
    simulated: boolean;
    image_id: Hex | null;
    partial: string | null;
    receipt: ReceiptJson | null;
    checks: Check[];
  };
  /** For JSON.stringify: the same, timestampMs as a number. */
  toJSON(): object;
}

// --- verifying ---

/** The attestation policy (the attestation half's): root, PCR pins, nonce, freshness. */
export interface VerifierPolicy {
  root?: { der: Bytes; label: string; readonly isAws: boolean };
  expectedPcrs?: Map<number, Bytes | Hex> | Record<string, Bytes | Hex>;
  maxAgeS?: number | null;
  expectedNonce?: Bytes | Hex | null;
  expectedPublicKey?: Bytes | Hex | null;
  expectedUserData?: Bytes | Hex | null;
  allowDebug?: boolean;
  maxClockSkewS?: number;
}

/** What verifyAttestation resolves to, passed as `verified` to skip re-verifying the chain. */
export interface AttestedDocument {
  moduleId: string;
  publicKey: Bytes | null;
  userData: Bytes | null;
  simulated: boolean;
  [field: string]: unknown;
}

/** A parsed manifest (parseManifest). */
export interface Manifest {
  models: Map<JsonValue, ModelEntry>;
  digest: Bytes;
}

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

export interface ModelEntry {
  name: string;
  version: string;
  file: JsonValue;
  sha256: string;
  modelHash: Bytes;
  task: string;
  description: string;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  metrics: JsonValue;
  files: [string, string][];
  isLlm: boolean;
}

export interface VerifyOptions {
  policy?: VerifierPolicy;
  /** Verification time (default now). */
  at?: Date | null;
  /** Parsed manifest, or the JSON of GET /models. */
  manifest?: Manifest | JsonValue | string | null;
  /** Accepted images: keccak256(PCR0 || PCR1 || PCR2), any of them. */
  imageIds?: (Bytes | Hex)[];
  allowAnyImage?: boolean;
  /** A sealed request's commitment salt (32 bytes). */
  salt?: Bytes | Hex | null;
  /** The enclave's application/ohttp-keys (default: ohttpKeys of a GET /attestation JSON). */
  keyConfigs?: Bytes | null;
  verified?: AttestedDocument | null;
}

export interface InferenceOptions extends VerifyOptions {
  /** The request JSON that produced the response (text or bytes are read exactly). */
  request?: JsonValue | string | Bytes | null;
  /** The model the request was sent to, when it does not say (V2: the NAME of /v2/models/NAME/infer). */
  model?: string | null;
}

/** The document's bytes, or the JSON of GET /attestation (parsed or text). */
export type AttestationInput = Bytes | string | { document: string; ohttpKeys?: string; [key: string]: unknown };

/** Verify an /infer or V2 answer (or a bare receipt): same checks and verdict as `verinfer verify`. */
export function verifyInference(
  response: JsonValue | string | Bytes,
  attestation: AttestationInput,
  options?: InferenceOptions,
): Promise<VerificationReport>;

/** Verify a /v1 completion (JSON answer or SSE transcript) against the exact request bytes sent. */
export function verifyCompletion(
  requestBody: Bytes | string | null,
  response: Bytes | string,
  attestation: AttestationInput,
  options?: VerifyOptions,
): Promise<VerificationReport>;

export const IMAGE_PCRS: number[];
export const MAX_UNORDERED_INPUTS: number;
export function isPinned(policy: VerifierPolicy | undefined, imageIds?: Bytes[]): boolean;
export function attestationInput(attestation: AttestationInput): { document: Bytes; keyConfigs: Bytes | undefined };
export function checkKeyBinding(report: VerificationReport, keyConfigs: Bytes, userData: Bytes | null): void;
export function receiptOf(response: JsonValue): JsonValue;
export function responseModel(response: JsonValue): string | null;
export function requestIdOf(request: JsonValue): JsonValue | null;
export function selfDescribing(inputs: JsonValue): boolean;
export function parseImageId(text: string): Bytes;
export interface PolicyFile {
  root: string | null;
  pcrs: Map<number, Bytes>;
  imageIds: Bytes[];
  allowDebug: boolean;
  maxAgeS: number | null;
}
export function parsePolicyFile(data: JsonValue, base?: string): PolicyFile;

// --- tensors (section 1) ---

export interface DType {
  readonly code: number;
  readonly name: string;
  readonly v2: string;
  readonly size: number;
  readonly kind: "f" | "i" | "u" | "b";
}
/** A tensor: little-endian element bytes, row-major. */
export interface Tensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: Bytes;
}
export const DTYPES: readonly DType[];
export const DTYPE_BY_CODE: Map<number, DType>;
export const DTYPE_BY_NAME: Map<string, DType>;
export const DTYPE_BY_V2: Map<string, DType>;
export const ENCODING_VERSION: number;
export class TensorEncodingError extends Error {}
export function encodeTensors(tensors: Tensor[]): Bytes;
export function decodeTensors(encoding: Bytes): Tensor[];
export function tensorsHash(tensors: Tensor[]): Bytes;
/** A tensor of JSON-like values converted to `dtype` (float32 rounded, integers exact). */
export function makeTensor(
  name: string,
  dtype: DType | string,
  shape: (number | bigint)[],
  values: (number | bigint | boolean | string | null)[],
): Tensor;
export function unpackElements(dtype: DType, data: Bytes): (number | bigint | boolean)[];
/** Tensors from {name, datatype, shape, data} objects, converted as numpy's np.asarray(data, dtype). */
export function tensorsFromJson(items: JsonValue, what?: string): Tensor[];
export function outputHash(outputs: JsonValue): Bytes;

export const MAX_BATCH_ELEMENTS: number;
export class RequestError extends Error {
  code: string;
}
/** Request inputs as the model's tensors, in its declared order, with the enclave's validation rules. */
export function parseInputs(entry: ModelEntry, inputs: JsonValue, maxElements?: number): Tensor[];

// --- manifest (section 3) ---

export class ManifestError extends Error {}
export function parseManifest(data: JsonValue | string | Bytes): Manifest;
export function manifestDigest(models: Iterable<{ name: JsonValue; sha256: string; version: string }>): Bytes;
export function bundleHash(files: Map<string, string> | Record<string, string>): Bytes;

// --- receipts (section 2) and on-chain formats (section 7) ---

export interface Receipt {
  requestId: Bytes;
  modelHash: Bytes;
  inputHash: Bytes;
  outputHash: Bytes;
  timestampMs: bigint | number;
}
export interface SignedReceipt {
  receipt: Receipt;
  enclave: Bytes;
  signature: Bytes;
}
export const DOMAIN_TYPEHASH: Bytes;
export const DOMAIN_SEPARATOR: Bytes;
export const RECEIPT_TYPE: string;
export const RECEIPT_TYPEHASH: Bytes;
export const BATCH_TYPEHASH: Bytes;
export class ReceiptError extends Error {}
export function structHash(receipt: Receipt): Bytes;
export function receiptDigest(receipt: Receipt): Bytes;
/** The signer's address; low-s and v in {27, 28} enforced (ReceiptError otherwise). */
export function recoverAddress(digest: Bytes, signature: Bytes): Bytes;
export function recoverSigner(receipt: Receipt, signature: Bytes): Bytes;
export function parseSignedReceipt(json: JsonValue): SignedReceipt;
export function receiptToJson(signed: SignedReceipt): ReceiptJson;
export function addressOf(publicKey64: Bytes): Bytes;
export function checksumAddress(address: Bytes): string;
export function batchDigest(root: Bytes, count: number | bigint): Bytes;
export function merkleRoot(leaves: Bytes[]): Bytes;
export function merkleProof(leaves: Bytes[], index: number): Bytes[];
export function verifyMerkleProof(proof: Bytes[], root: Bytes, leaf: Bytes): boolean;
export function fulfilmentId(requestId: Bytes, fulfiller: Bytes | Hex): Bytes;
export function outputLayout(outputs: { name: string; dtype: DType | string }[]): Bytes;

// --- LLM completions (section 9) ---

export interface Transcript {
  streamed: boolean;
  model: JsonValue;
  text: string;
  finishReason: JsonValue;
  usage: JsonValue;
  receipt: JsonValue;
  checkpoints: { tokens: bigint; chain: Bytes; text: string; receipt: JsonValue }[];
  chainBreak: string | null;
}
export const FINISH_CODES: Readonly<Record<"stop" | "length", number>>;
export class CompletionError extends Error {}
export function completionInputHash(requestBody: Bytes | string): Bytes;
export function completionOutputEncoding(
  text: string,
  finishReason: string,
  promptTokens: number | bigint,
  completionTokens: number | bigint,
): Bytes;
export function completionOutputHash(
  text: string,
  finishReason: string,
  promptTokens: number | bigint,
  completionTokens: number | bigint,
): Bytes;
export function chainNext(chain: Bytes, delta: string): Bytes;
export function checkpointHash(completionTokens: number | bigint, chain: Bytes): Bytes;
export function isSse(data: Bytes): boolean;
export function isCompletion(response: JsonValue): boolean;
export function readStream(data: Bytes, inputDigest: Bytes | null): Transcript;
export function readCompletion(data: Bytes): Transcript;
export function verifiedText(response: Bytes | string, requestBody?: Bytes | string | null): string;
export function personalMessageDigest(text: string): Bytes;
export function signatureText(requestBody: Bytes, responseBody: Bytes): string;

// --- sealed requests (section 10) ---

export function commitInput(salt: Bytes, inputHash: Bytes): Bytes;
export function commitOutput(salt: Bytes, outputHash: Bytes): Bytes;
export function splitUserData(userData: Bytes | null): { manifestDigest: Bytes; encryptionKey: Bytes | null };
export function decodeKeyConfigs(
  data: Bytes,
): { keyId: number; kemId: number; publicKey: Bytes; suites: [number, number][] }[];

// --- JSON and bytes ---

export class JsonError extends Error {}
/** JSON as Python's json.loads reads it (mode "python") or orjson (mode "orjson"): integers as bigint. */
export function parseJson(input: string | Bytes, options?: { mode?: "python" | "orjson" }): JsonValue;
/** Python's json.dumps. */
export function pyJsonDumps(
  value: JsonValue,
  options?: { indent?: number | null; sortKeys?: boolean; separators?: [string, string] | null; ensureAscii?: boolean },
): string;
/** Keys sorted, "," and ":" separators, ASCII (sections 3 and 9). */
export function canonicalJson(value: JsonValue): string;
export function hex0x(bytes: Bytes): string;
export function hexToBytes(text: string): Bytes;
export function keccak256(data: Bytes): Bytes;
export function sha256(data: Bytes): Bytes;
