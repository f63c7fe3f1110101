// The model manifest and its digest (PROTOCOL.md section 3).
//
//   manifestDigest = sha256(canonical JSON of [{name, sha256, version} of each model, sorted by name])
//   bundleHash     = sha256(canonical JSON of {"bundle": "verinfer.llm.bundle.v1", "files": {name: sha256}})
//
// canonical JSON: keys sorted, separators "," and ":", ASCII only (Python's json.dumps(sort_keys=True,
// separators=(",", ":"), ensure_ascii=True)).
import { hexToBytes, sha256, utf8 } from "./bytes.mjs";
import { canonicalJson, compareCodePoints, get, has, internal, isObject, makeObject, pyRepr, pyStr } from "./json.mjs";
import { BY_NAME, pyIntOfString } from "./tensors.mjs";

export const TEXT_GENERATION = "text-generation";
export const BUNDLE_DOMAIN = "verinfer.llm.bundle.v1";

export class ManifestError extends Error {
  constructor(message) {
    super(message);
    this.name = "ManifestError";
  }
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

/** The LLM bundle hash: sha256 of the canonical JSON of its files' names and sha256 hex digests. */
export function bundleHash(files) {
  const entries = files instanceof Map ? [...files] : Object.entries(files);
  const body = makeObject([
    ["bundle", BUNDLE_DOMAIN],
    ["files", makeObject(entries)],
  ]);
  return sha256(utf8(canonicalJson(body)));
}

function compareNames(a, b) {
  if (typeof a === "string" && typeof b === "string") return compareCodePoints(a, b);
  if (typeof a === typeof b && (typeof a === "bigint" || typeof a === "number")) return a < b ? -1 : a > b ? 1 : 0;
  throw new ManifestError(`cannot order model names ${pyRepr(a)} and ${pyRepr(b)}`);
}

/** sha256 over the canonical JSON of (name, sha256, version) of every model ({name, sha256, version}). */
export function manifestDigest(models) {
  const summary = [...models]
    .map((m) => makeObject([["name", m.name], ["sha256", m.sha256], ["version", m.version]]))
    .sort((a, b) => compareNames(a.name, b.name));
  return sha256(utf8(canonicalJson(summary)));
}

function pyIntOf(value) {
  if (typeof value === "bigint") return value;
  if (typeof value === "boolean") return value ? 1n : 0n;
  if (typeof value === "number") {
    if (!Number.isFinite(value)) return null;
    return BigInt(Math.trunc(value));
  }
  if (typeof value === "string") return pyIntOfString(value);
  return null;
}

/** Python's iteration over a JSON value (list items, string characters, dict keys), or null. */
function pyIter(value) {
  if (Array.isArray(value)) return value;
  if (typeof value === "string") return Array.from(value);
  if (isObject(value)) return Object.keys(value);
  return null;
}

function tensorSpec(raw, where) {
  const fail = () => new ManifestError(`${where}: tensor needs name, a known dtype and an integer shape`);
  if (!isObject(raw) || !has(raw, "dtype") || !has(raw, "shape") || !has(raw, "name")) throw fail();
  const dtype = typeof raw.dtype === "string" ? BY_NAME.get(raw.dtype) : undefined;
  const dims = pyIter(raw.shape);
  if (!dtype || dims === null) throw fail();
  const shape = dims.map((d) => {
    const n = pyIntOf(d);
    if (n === null) throw fail();
    return n;
  });
  if (shape.some((d) => d < -1n || d === 0n)) throw new ManifestError(`${where}: dimensions are positive or -1 (dynamic)`);
  return { name: pyStr(raw.name), dtype, shape: shape.map(Number) };
}

function filesOf(raw, name) {
  if (raw === undefined || raw === null) return [];
  if (!isObject(raw) || !Object.values(raw).every((v) => typeof v === "string" && SHA256_HEX.test(v))) {
    throw new ManifestError(`${pyStr(name)}: 'files' maps file names to sha256 hex`);
  }
  const names = Object.keys(raw);
  if (names.some((k) => k.includes("/") || k === "" || k === "." || k === "..")) {
    throw new ManifestError(`${pyStr(name)}: 'files' names plain files inside the model's directory`);
  }
  return names.sort(compareCodePoints).map((k) => [k, raw[k]]);
}

function entryOf(raw) {
  if (!isObject(raw)) throw new ManifestError("each model entry must be an object");
  const lacks = (key) => new ManifestError(`model entry ${pyRepr(get(raw, "name") ?? null)} lacks '${key}'`);
  for (const key of ["name", "file", "sha256", "inputs", "outputs"]) if (!has(raw, key)) throw lacks(key);
  const name = raw.name;
  if (typeof raw.sha256 !== "string") throw new ManifestError(`model entry ${pyRepr(name)} lacks sha256`);
  const iterInputs = pyIter(raw.inputs);
  const iterOutputs = pyIter(raw.outputs);
  if (iterInputs === null || iterOutputs === null) throw new ManifestError(`model entry ${pyRepr(name)} lacks inputs`);
  const entry = {
    name,
    version: has(raw, "version") ? pyStr(raw.version) : "1",
    file: raw.file,
    sha256: raw.sha256.toLowerCase(),
    task: has(raw, "task") ? pyStr(raw.task) : "",
    description: has(raw, "description") ? pyStr(raw.description) : "",
    inputs: iterInputs.map((t) => tensorSpec(t, `${pyStr(name)} input`)),
    outputs: iterOutputs.map((t) => tensorSpec(t, `${pyStr(name)} output`)),
    metrics: get(raw, "metrics") ?? makeObject(),
    files: filesOf(get(raw, "files"), name),
  };
  if (!SHA256_HEX.test(entry.sha256)) throw new ManifestError(`${pyStr(entry.name)}: sha256 must be 64 hex characters`);
  if (!entry.inputs.length || !entry.outputs.length) {
    throw new ManifestError(`${pyStr(entry.name)}: needs at least one input and one output`);
  }
  const isLlm = entry.task === TEXT_GENERATION;
  if (isLlm !== entry.files.length > 0) {
    throw new ManifestError(`${pyStr(entry.name)}: an LLM entry, and only one, lists its 'files'`);
  }
  if (isLlm) {
    const bundle = bundleHash(new Map(entry.files));
    const expected = hexToBytes(entry.sha256);
    if (!bundle.every((b, i) => b === expected[i])) {
      throw new ManifestError(`${pyStr(entry.name)}: sha256 must be the bundle hash of its files`);
    }
  }
  entry.modelHash = hexToBytes(entry.sha256);
  entry.isLlm = isLlm;
  return Object.freeze(entry);
}

/**
 * A manifest as GET /models serves it (or models/manifest.json): {models: Map(name -> entry), digest}.
 * Entries: {name, version, file, sha256, modelHash, task, description, inputs, outputs, metrics, files,
 * isLlm}; tensor specs {name, dtype, shape (-1 dynamic)}. Throws ManifestError.
 */
export function parseManifest(data) {
  const value = internal(data);
  if (!isObject(value) || !Array.isArray(get(value, "models"))) {
    throw new ManifestError("manifest must be an object with a 'models' list");
  }
  const models = new Map();
  for (const raw of value.models) {
    const entry = entryOf(raw);
    if (models.has(entry.name)) throw new ManifestError(`model ${pyRepr(entry.name)} is listed twice`);
    models.set(entry.name, entry);
  }
  return { models, digest: manifestDigest(models.values()) };
}
