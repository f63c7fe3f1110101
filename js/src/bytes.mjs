// Byte helpers and the hash functions of the protocol (from @noble/hashes; nothing hand-written).
import { keccak_256 } from "@noble/hashes/sha3.js";
import { sha256 as nobleSha256 } from "@noble/hashes/sha2.js";

const ENCODER = new TextEncoder();

/** Ethereum's Keccak-256 (original padding, not SHA3-256). */
export function keccak256(data) {
  return keccak_256(data);
}

export function sha256(data) {
  return nobleSha256(data);
}

export function concatBytes(...parts) {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

export function bytesEqual(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/** Lower-case hex, no prefix. */
export function toHex(bytes) {
  let out = "";
  for (const byte of bytes) out += HEX[byte];
  return out;
}

export function hex0x(bytes) {
  return "0x" + toHex(bytes);
}

const HEX_DIGIT = /[0-9a-fA-F]/;
const PY_SPACE = new Set([" ", "\t", "\n", "\r", "\x0b", "\x0c"]);

/** Python's bytes.fromhex(text.removeprefix("0x")): pairs of hex digits, ASCII whitespace allowed
 * between pairs. Returns null where Python raises ValueError. */
export function fromHexPy(text) {
  if (typeof text !== "string") return null;
  const body = text.startsWith("0x") ? text.slice(2) : text;
  const out = [];
  let i = 0;
  while (i < body.length) {
    if (PY_SPACE.has(body[i])) {
      i++;
      continue;
    }
    if (i + 1 >= body.length || !HEX_DIGIT.test(body[i]) || !HEX_DIGIT.test(body[i + 1])) return null;
    out.push(parseInt(body.slice(i, i + 2), 16));
    i += 2;
  }
  return Uint8Array.from(out);
}

/** Strict 0x-optional hex (no whitespace); throws on anything else. */
export function hexToBytes(text) {
  const body = text.startsWith("0x") || text.startsWith("0X") ? text.slice(2) : text;
  if (body.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(body)) throw new Error(`not hex: ${text}`);
  const out = new Uint8Array(body.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(body.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Whether a JS string holds a lone surrogate (Python's str.encode("utf-8") refuses it). */
export function hasLoneSurrogate(text) {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++;
        continue;
      }
      return true;
    }
    if (c >= 0xdc00 && c <= 0xdfff) return true;
  }
  return false;
}

/** UTF-8 bytes of a string; throws (like Python's str.encode) on a lone surrogate. */
export function utf8(text) {
  if (hasLoneSurrogate(text)) throw new Error("'utf-8' codec can't encode a surrogate: surrogates not allowed");
  return ENCODER.encode(text);
}

/** A 32-byte big-endian word of a non-negative bigint. */
export function word(value) {
  const out = new Uint8Array(32);
  let v = value;
  for (let i = 31; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

export function bytesToBigInt(bytes) {
  let v = 0n;
  for (const byte of bytes) v = (v << 8n) | BigInt(byte);
  return v;
}

/** Base64 (standard alphabet) to bytes; `strict` refuses characters outside it (Python's validate=True). */
export function base64Decode(text, { strict = true } = {}) {
  const clean = strict ? text : text.replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 !== 0) throw new Error("invalid base64");
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const body = clean.replace(/=+$/, "");
  const out = new Uint8Array(Math.floor((body.length * 3) / 4));
  let bits = 0;
  let value = 0;
  let index = 0;
  for (const ch of body) {
    value = (value << 6) | alphabet.indexOf(ch);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[index++] = (value >> bits) & 0xff;
    }
  }
  return out.subarray(0, index);
}

export function base64Encode(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}
