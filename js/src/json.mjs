// JSON as the verifier needs it: integers exact (bigint), floats as binary64 (number), and output written
// the way Python's json.dumps writes it, so that hashes over canonical JSON (PROTOCOL.md sections 3 and 9)
// and the command's --json output are byte for byte those of the Python verifier.
//
// Internal representation of a JSON value: null, boolean, string, bigint (a JSON integer literal),
// number (a JSON literal with a fraction or an exponent, or NaN/Infinity), Array, and null-prototype
// objects (so that "toString" in obj is false, as in a Python dict).

const EXACT = new WeakSet();

export class JsonError extends Error {
  constructor(message, position) {
    super(position === undefined ? message : `${message} (at character ${position})`);
    this.name = "JsonError";
  }
}

/** A null-prototype object with `entries` set in order (a later duplicate key keeps the first slot). */
export function makeObject(entries = []) {
  const out = Object.create(null);
  for (const [key, value] of entries) out[key] = value;
  return out;
}

export function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) && !(value instanceof Uint8Array);
}

export function has(object, key) {
  return isObject(object) && Object.prototype.hasOwnProperty.call(object, key);
}

/** object[key] for an own key; undefined otherwise (Python's dict.get). */
export function get(object, key) {
  return has(object, key) ? object[key] : undefined;
}

/** Python's `type(value) is int` on the internal representation. */
export function isInt(value) {
  return typeof value === "bigint";
}

/** A value as the verifier reads it: text/bytes are parsed exactly (Python's json.loads); a value parsed
 * here is used as is; any other JS value (JSON.parse output, an object literal) is converted, reading
 * integral numbers as JSON integers. */
export function internal(value) {
  if (typeof value === "string" || value instanceof Uint8Array || value instanceof ArrayBuffer) {
    return parseJson(value);
  }
  if (value !== null && typeof value === "object" && EXACT.has(value)) return value;
  return fromJs(value);
}

function fromJs(value, depth = 0) {
  if (depth > 10000) throw new JsonError("value nested too deeply");
  if (value === undefined || value === null) return null;
  if (typeof value === "number") return Number.isInteger(value) ? BigInt(value) : value;
  if (typeof value === "boolean" || typeof value === "string" || typeof value === "bigint") return value;
  if (typeof value === "object" && EXACT.has(value)) return value;
  if (Array.isArray(value)) return value.map((item) => fromJs(item, depth + 1));
  if (typeof value === "object") {
    return makeObject(Object.entries(value).map(([k, v]) => [k, fromJs(v, depth + 1)]));
  }
  throw new JsonError(`not a JSON value: ${typeof value}`);
}

const DECODER = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** UTF-8 bytes to text; throws JsonError for invalid UTF-8. */
export function decodeUtf8(bytes, { allowBom = true } = {}) {
  const view = bytes instanceof ArrayBuffer ? new Uint8Array(bytes) : bytes;
  let text;
  try {
    text = DECODER.decode(view);
  } catch {
    throw new JsonError("the bytes are not UTF-8");
  }
  if (text.charCodeAt(0) === 0xfeff) {
    if (!allowBom) throw new JsonError("UTF-8 byte order mark (BOM) is not supported");
    text = text.slice(1);
  }
  return text;
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
const INT64_MIN = -(2n ** 63n);
const UINT64_END = 2n ** 64n;

/**
 * Parse JSON text or UTF-8 bytes.
 *  mode "python" (default): Python's json.loads: NaN, Infinity and -Infinity accepted, integers of any
 *    size, lone surrogate escapes kept, a UTF-8 BOM before bytes skipped.
 *  mode "orjson": what orjson.loads accepts: no NaN/Infinity, integers beyond [-2^63, 2^64) read as
 *    floats, a float literal that overflows is an error, lone surrogates and a BOM are errors.
 */
export function parseJson(input, { mode = "python" } = {}) {
  const strict = mode === "orjson";
  const text = typeof input === "string" ? input : decodeUtf8(input, { allowBom: !strict });
  let pos = 0;
  const fail = (message) => {
    throw new JsonError(message, pos);
  };
  const skip = () => {
    while (pos < text.length) {
      const c = text.charCodeAt(pos);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) pos++;
      else break;
    }
  };
  const literal = (word, value) => {
    if (text.startsWith(word, pos)) {
      pos += word.length;
      return value;
    }
    return fail("expecting a value");
  };
  const parseString = () => {
    pos++; // opening quote
    let out = "";
    let start = pos;
    for (;;) {
      if (pos >= text.length) fail("unterminated string");
      const c = text.charCodeAt(pos);
      if (c === 0x22) {
        out += text.slice(start, pos);
        pos++;
        return out;
      }
      if (c < 0x20) fail("invalid control character in a string");
      if (c !== 0x5c) {
        pos++;
        continue;
      }
      out += text.slice(start, pos);
      const e = text[pos + 1];
      pos += 2;
      switch (e) {
        case '"':
          out += '"';
          break;
        case "\\":
          out += "\\";
          break;
        case "/":
          out += "/";
          break;
        case "b":
          out += "\b";
          break;
        case "f":
          out += "\f";
          break;
        case "n":
          out += "\n";
          break;
        case "r":
          out += "\r";
          break;
        case "t":
          out += "\t";
          break;
        case "u": {
          const unit = hex4(pos);
          pos += 4;
          if (unit >= 0xd800 && unit <= 0xdbff && text.startsWith("\\u", pos)) {
            const low = hex4(pos + 2);
            if (low >= 0xdc00 && low <= 0xdfff) {
              out += String.fromCharCode(unit, low);
              pos += 6;
              break;
            }
          }
          if (strict && unit >= 0xd800 && unit <= 0xdfff) fail("lone surrogate in a string");
          out += String.fromCharCode(unit);
          break;
        }
        default:
          pos -= 1;
          fail("invalid escape");
      }
      start = pos;
    }
  };
  const hex4 = (at) => {
    const digits = text.slice(at, at + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(digits)) {
      pos = at;
      fail("invalid \\uXXXX escape");
    }
    return parseInt(digits, 16);
  };
  const parseNumber = () => {
    NUMBER.lastIndex = pos;
    const match = NUMBER.exec(text);
    if (!match) return fail("expecting a value");
    pos = NUMBER.lastIndex;
    const source = match[0];
    if (match[1] === undefined && match[2] === undefined) {
      const value = BigInt(source);
      if (strict && (value < INT64_MIN || value >= UINT64_END)) return Number(source);
      return value;
    }
    const value = Number(source);
    if (strict && !Number.isFinite(value)) fail("number is infinity when parsed as double");
    return value;
  };
  const parseValue = (depth) => {
    if (depth > 1024) fail("JSON nested too deeply");
    skip();
    if (pos >= text.length) fail("expecting a value");
    const c = text[pos];
    if (c === '"') return parseString();
    if (c === "{") {
      pos++;
      const object = Object.create(null);
      EXACT.add(object);
      skip();
      if (text[pos] === "}") {
        pos++;
        return object;
      }
      for (;;) {
        skip();
        if (text[pos] !== '"') fail("expecting a property name in double quotes");
        const key = parseString();
        skip();
        if (text[pos] !== ":") fail("expecting ':' delimiter");
        pos++;
        object[key] = parseValue(depth + 1);
        skip();
        if (text[pos] === ",") {
          pos++;
          continue;
        }
        if (text[pos] === "}") {
          pos++;
          return object;
        }
        fail("expecting ',' delimiter");
      }
    }
    if (c === "[") {
      pos++;
      const array = [];
      EXACT.add(array);
      skip();
      if (text[pos] === "]") {
        pos++;
        return array;
      }
      for (;;) {
        array.push(parseValue(depth + 1));
        skip();
        if (text[pos] === ",") {
          pos++;
          continue;
        }
        if (text[pos] === "]") {
          pos++;
          return array;
        }
        fail("expecting ',' delimiter");
      }
    }
    if (c === "t") return literal("true", true);
    if (c === "f") return literal("false", false);
    if (c === "n") return literal("null", null);
    if (!strict && c === "N") return literal("NaN", NaN);
    if (!strict && c === "I") return literal("Infinity", Infinity);
    if (!strict && c === "-" && text.startsWith("-Infinity", pos)) return literal("-Infinity", -Infinity);
    return parseNumber();
  };
  const value = parseValue(0);
  skip();
  if (pos !== text.length) fail("extra data");
  return value;
}

// --- Python's repr and json.dumps ---

/** Python's repr(float). */
export function pyFloatRepr(value) {
  if (Number.isNaN(value)) return "nan";
  if (value === Infinity) return "inf";
  if (value === -Infinity) return "-inf";
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const [mantissa, exp] = value.toExponential().split("e");
  const exponent = Number(exp);
  const negative = mantissa.startsWith("-");
  const digits = mantissa.replace("-", "").replace(".", "");
  let out;
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) out = "0." + "0".repeat(-exponent - 1) + digits;
    else if (digits.length <= exponent + 1) out = digits + "0".repeat(exponent + 1 - digits.length) + ".0";
    else out = digits.slice(0, exponent + 1) + "." + digits.slice(exponent + 1);
  } else {
    const body = digits.length > 1 ? digits[0] + "." + digits.slice(1) : digits;
    const sign = exponent < 0 ? "-" : "+";
    out = body + "e" + sign + String(Math.abs(exponent)).padStart(2, "0");
  }
  return (negative ? "-" : "") + out;
}

const NOT_PRINTABLE = /[\p{C}\p{Z}]/u;

/** Python's repr(str). */
export function pyStrRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (ch === quote || ch === "\\") out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (cp < 0x20 || cp === 0x7f) out += "\\x" + cp.toString(16).padStart(2, "0");
    else if (cp < 0x7f) out += ch;
    else if (ch !== " " && NOT_PRINTABLE.test(ch)) {
      if (cp < 0x100) out += "\\x" + cp.toString(16).padStart(2, "0");
      else if (cp < 0x10000) out += "\\u" + cp.toString(16).padStart(4, "0");
      else out += "\\U" + cp.toString(16).padStart(8, "0");
    } else out += ch;
  }
  return out + quote;
}

/** Python's repr() of a JSON value (dict, list, str, int, float, bool, None). */
export function pyRepr(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return pyFloatRepr(value);
  if (typeof value === "string") return pyStrRepr(value);
  if (Array.isArray(value)) return "[" + value.map(pyRepr).join(", ") + "]";
  if (value instanceof Uint8Array) return "b'...'";
  return "{" + Object.keys(value).map((k) => `${pyStrRepr(k)}: ${pyRepr(value[k])}`).join(", ") + "}";
}

/** Python's str() of a JSON value. */
export function pyStr(value) {
  return typeof value === "string" ? value : pyRepr(value);
}

function jsonString(text, ensureAscii) {
  let out = '"';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const ch = text[i];
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || (ensureAscii && c > 0x7e)) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}

/** Compare strings by code point, as Python sorts str. */
export function compareCodePoints(a, b) {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/**
 * Python's json.dumps(value, indent=, sort_keys=, separators=, ensure_ascii=True) of an internal JSON
 * value. `indent` null: one line, with `separators` (default [", ", ": "]; with an indent [",", ": "]).
 */
export function pyJsonDumps(value, { indent = null, sortKeys = false, separators = null, ensureAscii = true } = {}) {
  const [itemSep, keySep] = separators ?? (indent === null ? [", ", ": "] : [",", ": "]);
  const write = (v, level) => {
    if (v === null || v === undefined) return "null";
    if (v === true) return "true";
    if (v === false) return "false";
    if (typeof v === "bigint") return v.toString();
    if (typeof v === "number") {
      if (Number.isNaN(v)) return "NaN";
      if (v === Infinity) return "Infinity";
      if (v === -Infinity) return "-Infinity";
      return pyFloatRepr(v);
    }
    if (typeof v === "string") return jsonString(v, ensureAscii);
    const open = indent === null ? "" : "\n" + " ".repeat(indent * (level + 1));
    const close = indent === null ? "" : "\n" + " ".repeat(indent * level);
    if (Array.isArray(v)) {
      if (v.length === 0) return "[]";
      return "[" + open + v.map((item) => write(item, level + 1)).join(itemSep + open) + close + "]";
    }
    let keys = Object.keys(v);
    if (keys.length === 0) return "{}";
    if (sortKeys) keys = keys.sort(compareCodePoints);
    const items = keys.map((k) => jsonString(k, ensureAscii) + keySep + write(v[k], level + 1));
    return "{" + open + items.join(itemSep + open) + close + "}";
  };
  return write(value, 0);
}

/** The canonical JSON of PROTOCOL.md sections 3 and 9: keys sorted, "," and ":" separators, ASCII. */
export function canonicalJson(value) {
  return pyJsonDumps(value, { sortKeys: true, separators: [",", ":"], ensureAscii: true });
}
