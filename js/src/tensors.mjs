// The canonical tensor encoding (PROTOCOL.md section 1) and the JSON tensors it is computed from.
//
//   encoding = u8 version (0x01) || u8 count || tensor[0] || ... || tensor[count-1]
//   tensor   = u8 nameLength || name (UTF-8) || u8 dtype || u8 rank || u32 BE dim * rank || data
//   data     = prod(dim) elements, row-major, each little-endian
//
// A tensor here is {name, dtype, shape: number[], data: Uint8Array (the little-endian element bytes)}.
// JSON numbers become the dtype's values exactly: float32 and float16 are rounded to nearest-even from
// the binary64 value of the JSON number (as numpy does), integers are exact bigints (int64/uint64 beyond
// 2^53 included).
import { concatBytes, keccak256, utf8 } from "./bytes.mjs";
import { get, has, isObject, pyRepr, pyStr } from "./json.mjs";

export const ENCODING_VERSION = 1;
export const MAX_TENSORS = 255;

export class TensorEncodingError extends Error {
  constructor(message) {
    super(message);
    this.name = "TensorEncodingError";
  }
}

/** dtype: ONNX code, name, KServe V2 datatype, element size, kind (f float, i signed, u unsigned, b bool). */
export const DTYPES = Object.freeze([
  { code: 1, name: "float32", v2: "FP32", size: 4, kind: "f" },
  { code: 2, name: "uint8", v2: "UINT8", size: 1, kind: "u" },
  { code: 3, name: "int8", v2: "INT8", size: 1, kind: "i" },
  { code: 4, name: "uint16", v2: "UINT16", size: 2, kind: "u" },
  { code: 5, name: "int16", v2: "INT16", size: 2, kind: "i" },
  { code: 6, name: "int32", v2: "INT32", size: 4, kind: "i" },
  { code: 7, name: "int64", v2: "INT64", size: 8, kind: "i" },
  { code: 9, name: "bool", v2: "BOOL", size: 1, kind: "b" },
  { code: 10, name: "float16", v2: "FP16", size: 2, kind: "f" },
  { code: 11, name: "float64", v2: "FP64", size: 8, kind: "f" },
  { code: 12, name: "uint32", v2: "UINT32", size: 4, kind: "u" },
  { code: 13, name: "uint64", v2: "UINT64", size: 8, kind: "u" },
]);
for (const d of DTYPES) Object.freeze(d);
export const BY_NAME = new Map(DTYPES.map((d) => [d.name, d]));
export const BY_V2 = new Map(DTYPES.map((d) => [d.v2, d]));
export const BY_CODE = new Map(DTYPES.map((d) => [d.code, d]));

/** [min, max] of an integer dtype, as bigints. */
export function intRange(dtype) {
  const bits = BigInt(dtype.size * 8);
  return dtype.kind === "u" ? [0n, (1n << bits) - 1n] : [-(1n << (bits - 1n)), (1n << (bits - 1n)) - 1n];
}

// --- float rounding ---

const F64 = new DataView(new ArrayBuffer(8));

function roundHalfEven(y) {
  // y >= 0, y < 2^53: the nearest integer, ties to even
  const f = Math.floor(y);
  const diff = y - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** IEEE binary16 bits of the binary64 `x`, rounded to nearest-even (numpy's double-to-half). */
export function halfBits(x) {
  F64.setFloat64(0, x);
  const sign = (F64.getUint8(0) & 0x80) << 8;
  if (Number.isNaN(x)) return sign | 0x7e00;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7c00;
  if (a === 0) return sign;
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24); // subnormal (1024 carries into the exponent)
  F64.setFloat64(0, a);
  const exponent = ((F64.getUint16(0) >> 4) & 0x7ff) - 1023;
  const mantissa = roundHalfEven((a / 2 ** exponent - 1) * 1024);
  const bits = ((exponent + 15) << 10) + mantissa; // a carry from the mantissa moves the exponent up
  return bits >= 0x7c00 ? sign | 0x7c00 : sign | bits;
}

/** The value of binary16 bits, as a number. */
export function halfValue(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** A bigint rounded to `bits` significant bits, nearest-even, as a number (exact). */
function roundBigInt(n, bits) {
  const negative = n < 0n;
  let a = negative ? -n : n;
  const length = a.toString(2).length;
  if (length > bits) {
    const shift = BigInt(length - bits);
    let q = a >> shift;
    const rest = a - (q << shift);
    const half = 1n << (shift - 1n);
    if (rest > half || (rest === half && (q & 1n) === 1n)) q += 1n;
    a = q << shift;
  }
  const value = Number(a); // at most `bits` (<= 53) significant bits: exact
  return negative ? -value : value;
}

/** An integer converted directly to a float dtype (numpy's astype from int64/uint64): one rounding. */
export function intToFloat(n, dtype) {
  if (dtype.size === 8) return Number(n); // correctly rounded
  if (dtype.size === 4) return Math.fround(roundBigInt(n, 24));
  const value = roundBigInt(n, 24); // |n| < 2^24 is exact here; anything larger is infinite in binary16
  return halfValue(halfBits(value));
}

/** A binary64 value rounded to a float dtype. */
export function doubleToFloat(x, dtype) {
  if (dtype.size === 8) return x;
  if (dtype.size === 4) return Math.fround(x);
  return halfValue(halfBits(x));
}

// --- the encoding ---

/** Element bytes of `values` (numbers for float dtypes, already of the dtype; bigints for integer
 * dtypes, in range; booleans for bool), little-endian. */
export function packElements(dtype, values) {
  const out = new Uint8Array(values.length * dtype.size);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    const at = i * dtype.size;
    const v = values[i];
    switch (dtype.name) {
      case "float32":
        view.setFloat32(at, v, true);
        break;
      case "float64":
        view.setFloat64(at, v, true);
        break;
      case "float16":
        view.setUint16(at, halfBits(v), true);
        break;
      case "bool":
        out[at] = v ? 1 : 0;
        break;
      case "uint8":
      case "int8":
        out[at] = Number(BigInt.asUintN(8, v));
        break;
      case "uint16":
      case "int16":
        view.setUint16(at, Number(BigInt.asUintN(16, v)), true);
        break;
      case "uint32":
      case "int32":
        view.setUint32(at, Number(BigInt.asUintN(32, v)), true);
        break;
      default:
        view.setBigUint64(at, BigInt.asUintN(64, v), true);
    }
  }
  return out;
}

/** Element values of little-endian bytes (inverse of packElements; float16 as its value). */
export function unpackElements(dtype, data) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const count = data.length / dtype.size;
  const out = [];
  for (let i = 0; i < count; i++) {
    const at = i * dtype.size;
    switch (dtype.name) {
      case "float32":
        out.push(view.getFloat32(at, true));
        break;
      case "float64":
        out.push(view.getFloat64(at, true));
        break;
      case "float16":
        out.push(halfValue(view.getUint16(at, true)));
        break;
      case "bool":
        out.push(data[at] !== 0);
        break;
      case "uint8":
        out.push(BigInt(view.getUint8(at)));
        break;
      case "int8":
        out.push(BigInt(view.getInt8(at)));
        break;
      case "uint16":
        out.push(BigInt(view.getUint16(at, true)));
        break;
      case "int16":
        out.push(BigInt(view.getInt16(at, true)));
        break;
      case "uint32":
        out.push(BigInt(view.getUint32(at, true)));
        break;
      case "int32":
        out.push(BigInt(view.getInt32(at, true)));
        break;
      case "int64":
        out.push(view.getBigInt64(at, true));
        break;
      default:
        out.push(view.getBigUint64(at, true));
    }
  }
  return out;
}

function header(name, dtype, shape) {
  const rawName = utf8(name);
  if (rawName.length > 255 || shape.length > 255) {
    throw new TensorEncodingError("tensor name longer than 255 bytes or rank above 255");
  }
  const out = new Uint8Array(1 + rawName.length + 2 + 4 * shape.length);
  const view = new DataView(out.buffer);
  out[0] = rawName.length;
  out.set(rawName, 1);
  out[1 + rawName.length] = dtype.code;
  out[2 + rawName.length] = shape.length;
  shape.forEach((dim, i) => {
    if (!Number.isSafeInteger(dim) || dim < 0 || dim > 0xffffffff) {
      throw new TensorEncodingError(`dimension ${dim} does not fit in u32`);
    }
    view.setUint32(3 + rawName.length + 4 * i, dim);
  });
  return out;
}

/** The canonical encoding of tensors ({name, dtype, shape, data}), in the given order. */
export function encodeTensors(tensors) {
  if (tensors.length > MAX_TENSORS) throw new TensorEncodingError(`at most ${MAX_TENSORS} tensors`);
  const parts = [Uint8Array.of(ENCODING_VERSION, tensors.length)];
  for (const t of tensors) parts.push(header(t.name, t.dtype, t.shape), t.data);
  return concatBytes(...parts);
}

export function tensorsHash(tensors) {
  return keccak256(encodeTensors(tensors));
}

/** Tensors from typed values: [{name, dtype (name, V2 name or object), shape, values}]. */
export function makeTensor(name, dtype, shape, values) {
  const type = typeof dtype === "string" ? (BY_NAME.get(dtype) ?? BY_V2.get(dtype)) : dtype;
  if (!type) throw new TensorEncodingError(`unknown dtype ${dtype}`);
  const converted = values.map((v) => toElement(v, type));
  return { name, dtype: type, shape: shape.map(Number), data: packElements(type, converted) };
}

/** Inverse of encodeTensors; throws TensorEncodingError for anything that is not exactly one encoding. */
export function decodeTensors(data) {
  if (data.length < 2 || data[0] !== ENCODING_VERSION) throw new TensorEncodingError("not a version 1 tensor encoding");
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  let position = 2;
  const tensors = [];
  for (let k = 0; k < data[1]; k++) {
    if (position >= data.length) throw new TensorEncodingError("truncated tensor header");
    const nameLength = data[position];
    const nameEnd = position + 1 + nameLength;
    if (nameEnd + 2 > data.length) throw new TensorEncodingError("truncated tensor header");
    let name;
    try {
      name = decoder.decode(data.subarray(position + 1, nameEnd));
    } catch {
      throw new TensorEncodingError("tensor name is not UTF-8");
    }
    const code = data[nameEnd];
    const rank = data[nameEnd + 1];
    const dimsEnd = nameEnd + 2 + 4 * rank;
    const dtype = BY_CODE.get(code);
    if (!dtype || dimsEnd > data.length) throw new TensorEncodingError("unknown dtype or truncated shape");
    const shape = [];
    let count = 1n;
    for (let i = 0; i < rank; i++) {
      const dim = view.getUint32(nameEnd + 2 + 4 * i);
      shape.push(dim);
      count *= BigInt(dim);
    }
    const size = count * BigInt(dtype.size);
    if (BigInt(dimsEnd) + size > BigInt(data.length)) throw new TensorEncodingError("truncated tensor data");
    const end = dimsEnd + Number(size);
    tensors.push({ name, dtype, shape, data: data.slice(dimsEnd, end) });
    position = end;
  }
  if (position !== data.length) throw new TensorEncodingError("trailing bytes after the last tensor");
  return tensors;
}

// --- JSON numbers to elements: numpy's np.asarray(data, dtype=...) ---

const PY_INT = /^[+-]?[0-9](?:_?[0-9])*$/;
const PY_FLOAT = /^[+-]?(?:(?:[0-9](?:_?[0-9])*)(?:\.(?:[0-9](?:_?[0-9])*)?)?|\.[0-9](?:_?[0-9])*)(?:[eE][+-]?[0-9](?:_?[0-9])*)?$/;
const PY_SPECIAL = /^[+-]?(?:inf|infinity|nan)$/i;

/** Python's int(str), or null where it raises. */
export function pyIntOfString(text) {
  const s = text.trim();
  if (!PY_INT.test(s)) return null;
  return BigInt(s.replaceAll("_", ""));
}

/** Python's float(str), or null where it raises. */
export function pyFloatOfString(text) {
  const s = text.trim();
  if (PY_SPECIAL.test(s)) {
    const body = s.replace(/^[+-]/, "").toLowerCase();
    if (body === "nan") return NaN;
    return s.startsWith("-") ? -Infinity : Infinity;
  }
  if (!PY_FLOAT.test(s)) return null;
  return Number(s.replaceAll("_", ""));
}

/** One JSON value as an element of `dtype` (numpy's per-element conversion); throws if numpy raises. */
export function toElement(value, dtype) {
  if (dtype.kind === "b") {
    if (typeof value === "boolean") return value;
    if (typeof value === "bigint") return value !== 0n;
    if (typeof value === "number") return value !== 0; // NaN is true
    if (typeof value === "string") return value.length > 0;
    if (value === null) return false;
    if (isObject(value)) return Object.keys(value).length > 0;
    throw new TensorEncodingError(`cannot convert ${pyRepr(value)} to bool`);
  }
  if (dtype.kind === "f") {
    let x;
    if (typeof value === "boolean") x = value ? 1 : 0;
    else if (typeof value === "bigint") {
      x = Number(value);
      if (!Number.isFinite(x)) throw new TensorEncodingError("int too large to convert to float");
    } else if (typeof value === "number") x = value;
    else if (typeof value === "string") {
      x = pyFloatOfString(value);
      if (x === null) throw new TensorEncodingError(`could not convert string to float: ${pyRepr(value)}`);
    } else if (value === null) x = NaN;
    else throw new TensorEncodingError(`float() argument must be a string or a real number, not ${pyRepr(value)}`);
    return doubleToFloat(x, dtype);
  }
  let n;
  if (typeof value === "boolean") n = value ? 1n : 0n;
  else if (typeof value === "bigint") n = value;
  else if (typeof value === "number") {
    if (Number.isNaN(value)) throw new TensorEncodingError("cannot convert float NaN to integer");
    if (!Number.isFinite(value)) throw new TensorEncodingError("cannot convert float infinity to integer");
    n = BigInt(Math.trunc(value));
  } else if (typeof value === "string") {
    n = pyIntOfString(value);
    if (n === null) throw new TensorEncodingError(`invalid literal for int() with base 10: ${pyRepr(value)}`);
  } else throw new TensorEncodingError(`int() argument must be a string or a real number, not ${pyRepr(value)}`);
  const [low, high] = intRange(dtype);
  if (n < low || n > high) throw new TensorEncodingError(`Python integer ${n} out of bounds for ${dtype.name}`);
  return n;
}

/** The shape numpy discovers in nested lists, and the leaves in row-major order; throws for ragged data. */
export function nestedShape(data) {
  if (!Array.isArray(data)) return { shape: [], leaves: [data] };
  const shape = [];
  let level = [data];
  for (;;) {
    const lists = level.filter((item) => Array.isArray(item)).length;
    if (lists === 0) break;
    if (lists !== level.length) {
      throw new TensorEncodingError(
        `setting an array element with a sequence. The requested array has an inhomogeneous shape after ${shape.length} dimensions`,
      );
    }
    const length = level[0].length;
    if (level.some((item) => item.length !== length)) {
      throw new TensorEncodingError(
        `setting an array element with a sequence. The requested array has an inhomogeneous shape after ${shape.length + 1} dimensions`,
      );
    }
    shape.push(length);
    if (shape.length > 64) throw new TensorEncodingError("maximum supported dimension for an ndarray is 64");
    if (length === 0) return { shape, leaves: [] };
    level = level.flat(1);
  }
  return { shape, leaves: level };
}

/** numpy's reshape(target) of an array of `size` elements; throws where numpy raises. */
export function reshape(size, current, target) {
  if (target === null || target === undefined) return current;
  const dims = typeof target === "bigint" ? [target] : target;
  if (!Array.isArray(dims)) throw new TensorEncodingError(`expected a sequence of integers or a single integer, got ${pyRepr(target)}`);
  if (dims.length > 64) throw new TensorEncodingError("maximum supported dimension for an ndarray is 64");
  let unknown = -1;
  let known = 1n;
  dims.forEach((d, i) => {
    if (typeof d !== "bigint") throw new TensorEncodingError(`${pyRepr(d)} cannot be interpreted as an integer`);
    if (d < -(2n ** 63n) || d >= 2n ** 63n) throw new TensorEncodingError("Python int too large to convert to C ssize_t");
    if (d === -1n) {
      if (unknown >= 0) throw new TensorEncodingError("can only specify one unknown dimension");
      unknown = i;
    } else if (d < 0n) throw new TensorEncodingError("negative dimensions not allowed");
    else known *= d;
  });
  const shown = `(${dims.map(String).join(",")})`;
  const out = dims.map((d) => d);
  if (unknown >= 0) {
    if (known === 0n || BigInt(size) % known !== 0n) {
      throw new TensorEncodingError(`cannot reshape array of size ${size} into shape ${shown}`);
    }
    out[unknown] = BigInt(size) / known;
  } else if (known !== BigInt(size)) {
    throw new TensorEncodingError(`cannot reshape array of size ${size} into shape ${shown}`);
  }
  return out.map((d) => {
    if (d > 0xffffffffn) throw new TensorEncodingError(`dimension ${d} does not fit in u32`);
    return Number(d);
  });
}

/**
 * Named tensors from JSON tensors that describe themselves ({name, datatype (V2), shape, data}), in the
 * given order, as /infer and V2 answers (and V2 requests) carry them. Values convert as numpy's
 * np.asarray(data, dtype).reshape(shape): what the enclave hashed when it answered.
 */
export function tensorsFromJson(items, what = "tensor") {
  if (!Array.isArray(items)) throw new TensorEncodingError(`${what}s must be a list of tensors`);
  return items.map((item) => {
    const dtype = isObject(item) ? BY_V2.get(pyStr(get(item, "datatype") ?? null)) : undefined;
    if (!dtype) throw new TensorEncodingError(`${what} tensor without a known datatype: ${pyRepr(item).slice(0, 80)}`);
    const name = get(item, "name");
    if (typeof name !== "string") throw new TensorEncodingError(`${what} tensor without a name: ${pyRepr(item).slice(0, 80)}`);
    const shown = pyRepr(name).slice(0, 40);
    if (!has(item, "data")) throw new TensorEncodingError(`${what} tensor ${shown} does not encode: 'data'`);
    let shape;
    let values;
    try {
      const nested = nestedShape(item.data);
      values = nested.leaves.map((v) => toElement(v, dtype));
      if (!has(item, "shape")) throw new TensorEncodingError("'shape'");
      shape = reshape(values.length, nested.shape, item.shape);
    } catch (error) {
      throw new TensorEncodingError(`${what} tensor ${shown} does not encode: ${error.message}`);
    }
    return { name, dtype, shape, data: packElements(dtype, values) };
  });
}

/** outputHash recomputed from response tensors, in response order. */
export function outputHash(outputs) {
  return keccak256(encodeTensors(tensorsFromJson(outputs, "output")));
}
