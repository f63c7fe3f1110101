// Request inputs converted to the model's tensors (PROTOCOL.md sections 1 and 6, "Input validation"):
// what the enclave hashed as inputHash, in the model's declared input order. The rules are the
// enclave's: a value it would refuse (wrong name, shape, dtype, a non-number, a non-finite or
// out-of-range value, ragged lists) is a RequestError here too.
import { get, has, isObject, pyRepr } from "./json.mjs";
import { BY_V2, doubleToFloat, intRange, intToFloat, nestedShape, packElements } from "./tensors.mjs";

export const MAX_BATCH_ELEMENTS = 1 << 22;
const FLOAT_EXACT = 2 ** 53;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_END = 2n ** 64n;

export class RequestError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "RequestError";
    this.code = code;
  }
}

const bad = (code, message) => new RequestError(code, message);

function product(shape) {
  return shape.reduce((a, b) => a * BigInt(b), 1n);
}

function containsBool(leaves) {
  return leaves.some((v) => typeof v === "boolean");
}

/** What numpy's np.array(data) makes of JSON leaves: its dtype kind ("i", "u", "f", "b", "U", "O"). */
function inferredKind(leaves) {
  if (leaves.length === 0) return "f";
  let strings = false;
  let objects = false;
  let floats = false;
  let bools = 0;
  let ints = false;
  let bigPositive = false;
  let negative = false;
  let outOfRange = false;
  for (const v of leaves) {
    if (typeof v === "string") strings = true;
    else if (v === null || isObject(v)) objects = true;
    else if (typeof v === "boolean") bools++;
    else if (typeof v === "number") floats = true;
    else if (typeof v === "bigint") {
      ints = true;
      if (v < INT64_MIN || v >= UINT64_END) outOfRange = true;
      else if (v > INT64_MAX) bigPositive = true;
      if (v < 0n) negative = true;
    }
  }
  if (objects) return "O";
  if (strings) return "U";
  if (bools === leaves.length) return "b";
  if (ints && outOfRange) return "O";
  if (floats) return "f";
  if (bigPositive) return negative ? "f" : "u";
  return "i";
}

function notFinite(spec) {
  return bad("invalid_value", `${spec.name}: values must be finite`);
}

/** JSON data to the tensor `spec` ({name, dtype, shape}) describes (protocol/inputs.py to_array). */
export function toArray(spec, data, shape = null, maxElements = MAX_BATCH_ELEMENTS) {
  const dtype = spec.dtype;
  if (shape !== null && product(shape) > BigInt(maxElements)) {
    throw bad("tensor_too_large", `${spec.name}: shape has more than ${maxElements} elements`);
  }
  let nested;
  try {
    nested = nestedShape(data);
  } catch {
    throw bad("invalid_tensor", `${spec.name}: data is not a rectangular array of numbers`);
  }
  const leaves = nested.leaves;
  const kind = inferredKind(leaves);
  if (!"iuf".includes(kind) || containsBool(leaves)) {
    throw bad("invalid_dtype", `${spec.name}: expected numbers of type ${dtype.name}`);
  }
  if (leaves.length > maxElements) {
    throw bad("tensor_too_large", `${spec.name}: more than ${maxElements} elements`);
  }
  let values;
  if (dtype.kind === "b") {
    // the JSON numbers 0 and 1 only (protocol/inputs.py _bools); JSON true/false were refused above
    const doubles = leaves.map(Number);
    if (kind === "f" && !doubles.every((x) => Number.isFinite(x) && x === Math.round(x))) {
      throw bad("invalid_dtype", `${spec.name}: expected 0 or 1 for type ${dtype.name}`);
    }
    if (!doubles.every((x) => x === 0 || x === 1)) {
      throw bad("invalid_value", `${spec.name}: values of type ${dtype.name} must be 0 or 1`);
    }
    values = doubles.map((x) => x === 1);
  } else if (dtype.kind === "f") {
    // np.array(data).astype(float): from float64 (every leaf a double) or directly from int64/uint64
    values = leaves.map((v) => (kind === "f" ? doubleToFloat(Number(v), dtype) : intToFloat(v, dtype)));
    if (!values.every(Number.isFinite)) {
      if (kind === "f" && !leaves.every((v) => Number.isFinite(Number(v)))) throw notFinite(spec);
      throw bad("invalid_value", `${spec.name}: values exceed the range of ${dtype.name}`);
    }
  } else {
    const [low, high] = intRange(dtype);
    const wanted = `${spec.name}: expected integers of type ${dtype.name}`;
    const exceed = () => bad("invalid_value", `${spec.name}: values exceed the range of ${dtype.name}`);
    if (kind === "f") {
      const doubles = leaves.map(Number);
      if (!doubles.every((x) => Number.isFinite(x) && x === Math.round(x))) throw bad("invalid_dtype", wanted);
      // below 2^53 the doubles are the integers; above, numpy re-reads the JSON values exactly
      values = leaves.map((v) => (typeof v === "bigint" ? v : BigInt(v)));
      if (doubles.some((x) => Math.abs(x) >= FLOAT_EXACT)) {
        if (values.some((n) => n < low || n > high)) throw exceed();
      } else if (values.some((n) => n < low || n > high)) throw exceed();
    } else {
      values = leaves;
      if (values.some((n) => n < low || n > high)) throw exceed();
    }
  }
  let actual = nested.shape;
  if (shape !== null) {
    if (BigInt(values.length) !== product(shape)) {
      throw bad("invalid_shape", `${spec.name}: ${values.length} values do not fill shape ${showList(shape)}`);
    }
    actual = shape.map(Number);
  }
  checkShape(spec, actual);
  return { name: spec.name, dtype, shape: actual, data: packElements(dtype, values) };
}

function showList(items) {
  return "[" + items.map(String).join(", ") + "]";
}

export function checkShape(spec, shape) {
  const expected = spec.shape;
  if (shape.length !== expected.length || expected.some((e, i) => e !== -1 && e !== shape[i])) {
    const shown = "[" + expected.map((e) => (e === -1 ? "'N'" : String(e))).join(", ") + "]";
    throw bad("invalid_shape", `${spec.name}: shape ${showList(shape)} does not match ${shown}`);
  }
  if (shape.includes(0)) throw bad("invalid_shape", `${spec.name}: empty tensors are not accepted`);
}

/** One tensor object {name, data, shape?, datatype?} of a request (protocol/inputs.py parse_named_tensor). */
export function parseNamedTensor(entry, item, maxElements = MAX_BATCH_ELEMENTS) {
  if (!isObject(item) || !has(item, "name") || !has(item, "data")) {
    throw bad("missing_field", "each input tensor needs 'name' and 'data'");
  }
  const spec = typeof item.name === "string" ? entry.inputs.find((s) => s.name === item.name) : undefined;
  if (!spec) {
    const names = "[" + entry.inputs.map((s) => pyRepr(s.name)).join(", ") + "]";
    throw bad("unknown_input", `${entry.name} has no input ${pyRepr(item.name)}; inputs: ${names}`);
  }
  const shape = get(item, "shape") ?? null;
  if (has(item, "datatype")) {
    const datatype = item.datatype;
    if (typeof datatype !== "string" || BY_V2.get(datatype) !== spec.dtype) {
      throw bad("invalid_dtype", `${spec.name}: datatype must be ${spec.dtype.v2}, got ${pyRepr(datatype).slice(0, 40)}`);
    }
  }
  if (shape !== null && (!Array.isArray(shape) || !shape.every((d) => typeof d === "bigint" && d >= 0n))) {
    throw bad("invalid_shape", `${spec.name}: shape must be a list of non-negative integers`);
  }
  return [spec, toArray(spec, item.data, shape, maxElements)];
}

/** Request inputs as the model's tensors, in its declared order: named tensor objects, or a plain
 * nested list for a one-input model (protocol/inputs.py parse_inputs). Throws RequestError. */
export function parseInputs(entry, inputs, maxElements = MAX_BATCH_ELEMENTS) {
  const specs = entry.inputs;
  if (Array.isArray(inputs) && inputs.length > 0 && inputs.every(isObject)) {
    const parsed = new Map();
    let budget = maxElements;
    for (const item of inputs) {
      const [spec, tensor] = parseNamedTensor(entry, item, budget);
      if (parsed.has(spec.name)) throw bad("duplicate_input", `input ${pyRepr(spec.name)} given twice`);
      parsed.set(spec.name, tensor);
      budget -= tensor.data.length / tensor.dtype.size;
    }
    const missing = specs.filter((s) => !parsed.has(s.name)).map((s) => pyRepr(s.name));
    if (missing.length) throw bad("missing_input", `${entry.name} also needs inputs [${missing.join(", ")}]`);
    return specs.map((s) => parsed.get(s.name));
  }
  if (inputs === null || inputs === undefined) throw bad("missing_field", "'inputs' must be a list of tensors");
  if (specs.length !== 1) throw bad("invalid_inputs", `${entry.name} takes several inputs: name each tensor`);
  return [toArray(specs[0], inputs, null, maxElements)];
}
