// A strict DER reader with the acceptance rules of rust-asn1, the parser under pyca/cryptography (what the
// Python verifier uses). Certificates are read with these rules so that a certificate the Python verifier
// refuses as malformed is refused here too, and one it accepts is accepted: generic JavaScript ASN.1 readers
// accept BER forms (long lengths, non-minimal integers, unsorted SETs) that cryptography rejects.
//
// This is a parser, not cryptography: signatures and curve arithmetic come from @noble/curves / WebCrypto.

export class Asn1Error extends Error {}

export function fail(message) {
  throw new Asn1Error(message)
}

// Tag classes
export const UNIVERSAL = 0
export const CONTEXT = 2

/** A tag as rust-asn1 sees it: class, constructed bit and number. */
export class Tag {
  constructor(cls, constructed, num) {
    this.cls = cls
    this.constructed = constructed
    this.num = num
  }

  /** The single identifier byte, or -1 for a long-form (number >= 31) tag. */
  get byte() {
    return this.num < 31 ? (this.cls << 6) | (this.constructed ? 0x20 : 0) | this.num : -1
  }

  is(byte) {
    return this.byte === byte
  }

  equals(other) {
    return this.cls === other.cls && this.constructed === other.constructed && this.num === other.num
  }
}

// Universal tags used below (identifier bytes)
export const T = Object.freeze({
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  VISIBLE_STRING: 0x1a,
  UNIVERSAL_STRING: 0x1c,
  BMP_STRING: 0x1e,
  SEQUENCE: 0x30,
  SET: 0x31,
})

/** Context-specific tag byte: [n] IMPLICIT keeps the inner type's constructed bit; EXPLICIT is constructed. */
export const ctx = (n, constructed) => 0x80 | (constructed ? 0x20 : 0) | n

const U128_MAX = (1n << 128n) - 1n

/** base128 integer as rust-asn1 reads it (OID arcs, long-form tag numbers): minimal, at most 128 bits. */
function readBase128(buf, pos, end) {
  let value = 0n
  for (let i = 0; i < 19; i++) {
    if (pos >= end) fail('short base128 integer')
    const b = buf[pos++]
    if (value > U128_MAX >> 7n) fail('base128 integer overflows 128 bits')
    value = (value << 7n) | BigInt(b & 0x7f)
    if (i === 0 && b === 0x80) fail('base128 integer is not minimal')
    if ((b & 0x80) === 0) return [value, pos]
  }
  return fail('base128 integer too long')
}

/** A TLV read from `buf`: tag, value range [dataStart, end), whole encoding [start, end). */
export class Tlv {
  constructor(buf, tag, start, dataStart, end) {
    this.buf = buf
    this.tag = tag
    this.start = start
    this.dataStart = dataStart
    this.end = end
  }

  get data() {
    return this.buf.subarray(this.dataStart, this.end)
  }

  get full() {
    return this.buf.subarray(this.start, this.end)
  }

  /** A parser over the value bytes. */
  contents() {
    return new Parser(this.buf, this.dataStart, this.end)
  }
}

export class Parser {
  constructor(buf, start = 0, end = buf.length) {
    this.buf = buf
    this.pos = start
    this.end = end
  }

  isEmpty() {
    return this.pos >= this.end
  }

  finish() {
    if (!this.isEmpty()) fail('extra data')
  }

  _tagAt(pos) {
    if (pos >= this.end) fail('short data (tag)')
    const first = this.buf[pos++]
    let num = first & 0x1f
    const constructed = (first & 0x20) !== 0
    const cls = first >> 6
    if (num === 0x1f) {
      let value
      try {
        ;[value, pos] = readBase128(this.buf, pos, this.end)
      } catch {
        fail('invalid tag')
      }
      if (value < 0x1fn || value > 0xffffffffn) fail('invalid tag')
      num = Number(value)
    }
    return [new Tag(cls, constructed, num), pos]
  }

  /** The next tag, or null when there is none or it does not parse (rust-asn1's peek_tag). */
  peekTag() {
    try {
      return this._tagAt(this.pos)[0]
    } catch {
      return null
    }
  }

  peekIs(byte) {
    const tag = this.peekTag()
    return tag !== null && tag.is(byte)
  }

  readTlv() {
    const start = this.pos
    let [tag, pos] = this._tagAt(this.pos)
    if (pos >= this.end) fail('short data (length)')
    const first = this.buf[pos++]
    let length
    if ((first & 0x80) === 0) {
      length = first
    } else {
      const count = first & 0x7f
      if (count < 1 || count > 4) fail('invalid length')
      if (pos + count > this.end) fail('short data (length)')
      length = 0
      for (let i = 0; i < count; i++) length = length * 256 + this.buf[pos++]
      const minimum = [0, 0x80, 0x100, 0x10000, 0x1000000][count]
      if (length < minimum) fail('invalid length (not minimal)')
    }
    if (length > this.end - pos) fail('short data (value)')
    this.pos = pos + length
    return new Tlv(this.buf, tag, start, pos, pos + length)
  }

  /** A TLV whose tag must be `byte`. */
  read(byte) {
    const tlv = this.readTlv()
    if (!tlv.tag.is(byte)) fail(`unexpected tag ${tlv.tag.byte} (expected ${byte})`)
    return tlv
  }

  /** The TLV if the next tag is `byte` (Option<T>), else null. */
  optional(byte) {
    return this.peekIs(byte) ? this.read(byte) : null
  }
}

/** Parse exactly one TLV spanning `bytes` (rust-asn1 parse_single). */
export function single(bytes, byte) {
  const p = new Parser(bytes)
  const tlv = byte === undefined ? p.readTlv() : p.read(byte)
  p.finish()
  return tlv
}

/** Contents of an EXPLICIT [n] wrapper: exactly one element. */
export function explicitInner(tlv) {
  const p = tlv.contents()
  const inner = p.readTlv()
  p.finish()
  return inner
}

// ---- primitive value checks (applied to the value bytes of a TLV) ----

function validateInteger(data, signed) {
  if (data.length === 0) fail('empty INTEGER')
  if (data.length > 1 && ((data[0] === 0 && (data[1] & 0x80) === 0) || (data[0] === 0xff && (data[1] & 0x80) !== 0))) {
    fail('INTEGER is not minimally encoded')
  }
  if (!signed && (data[0] & 0x80) !== 0) fail('negative value for an unsigned INTEGER')
}

export function bigIntOf(data) {
  let value = 0n
  for (const b of data) value = (value << 8n) | BigInt(b)
  if (data.length && data[0] & 0x80) value -= 1n << BigInt(8 * data.length)
  return value
}

/** BigInt / BigUint: minimal INTEGER, any size. Returns the value bytes. */
export function integerBytes(tlv, signed) {
  validateInteger(tlv.data, signed)
  return tlv.data
}

/** A fixed-size unsigned integer (u8, u16, u32, u64) as rust-asn1 reads it. Returns a BigInt. */
export function unsigned(tlv, size) {
  let data = tlv.data
  validateInteger(data, false)
  if (data.length === size + 1 && data[0] === 0) data = data.subarray(1)
  if (data.length > size) fail('integer overflow')
  return bigIntOf(data.length && data[0] & 0x80 ? Uint8Array.of(0, ...data) : data)
}

export function boolean(tlv) {
  const d = tlv.data
  if (d.length === 1 && d[0] === 0x00) return false
  if (d.length === 1 && d[0] === 0xff) return true
  return fail('invalid BOOLEAN')
}

export function nullValue(tlv) {
  if (tlv.data.length !== 0) fail('NULL with content')
  return null
}

/** OBJECT IDENTIFIER: returns its value bytes (compare with oidHex/oidEquals). */
export function oid(tlv) {
  const d = tlv.data
  if (d.length === 0) fail('empty OBJECT IDENTIFIER')
  if (d.length > 63) fail('OBJECT IDENTIFIER too long')
  let pos = 0
  while (pos < d.length) [, pos] = readBase128(d, pos, d.length)
  return d
}

export function hex(bytes) {
  let out = ''
  for (const b of bytes) out += b.toString(16).padStart(2, '0')
  return out
}

export function fromHex(text) {
  const out = new Uint8Array(text.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(text.slice(2 * i, 2 * i + 2), 16)
  return out
}

/** The dotted form of OID value bytes ("1.2.840.10045.4.3.3"). */
export function oidDotted(bytes) {
  const arcs = []
  let pos = 0
  while (pos < bytes.length) {
    let value
    ;[value, pos] = readBase128(bytes, pos, bytes.length)
    arcs.push(value)
  }
  const first = arcs[0]
  const head = first < 80n ? `${first / 40n}.${first % 40n}` : `2.${first - 80n}`
  return [head, ...arcs.slice(1).map(String)].join('.')
}

/** OID value bytes (hex) from a dotted string, for constants. */
export function oidFromDotted(dotted) {
  const parts = dotted.split('.').map(BigInt)
  const arcs = [parts[0] * 40n + parts[1], ...parts.slice(2)]
  const out = []
  for (const arc of arcs) {
    const chunk = [Number(arc & 0x7fn)]
    let rest = arc >> 7n
    while (rest > 0n) {
      chunk.unshift(Number(rest & 0x7fn) | 0x80)
      rest >>= 7n
    }
    out.push(...chunk)
  }
  return hex(out)
}

/** BIT STRING: { padding, bytes }; padding bits must be zero, as rust-asn1 requires. */
export function bitString(tlv) {
  const d = tlv.data
  if (d.length === 0) fail('empty BIT STRING')
  const padding = d[0]
  const bytes = d.subarray(1)
  if (padding > 7 || (bytes.length === 0 && padding !== 0)) fail('invalid BIT STRING padding')
  if (padding > 0 && (bytes[bytes.length - 1] & ((1 << padding) - 1)) !== 0) fail('BIT STRING padding bits set')
  return { padding, bytes }
}

export function hasBit(bits, n) {
  const idx = n >> 3
  return idx < bits.bytes.length && (bits.bytes[idx] & (1 << (7 - (n & 7)))) !== 0
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/** Rust's std::str::from_utf8 (the same strictness as WHATWG's fatal decoder). */
export function utf8Text(bytes) {
  try {
    return utf8.decode(bytes)
  } catch {
    return fail('invalid UTF-8')
  }
}

const PRINTABLE = /^[A-Za-z0-9 '()+,\-./:=?]*$/

export function printableString(bytes) {
  const text = String.fromCharCode(...bytes)
  if (!PRINTABLE.test(text)) fail('invalid PrintableString')
  return text
}

export function ia5String(bytes) {
  for (const b of bytes) if (b > 0x7f) fail('invalid IA5String')
  return String.fromCharCode(...bytes)
}

export function bmpString(bytes) {
  if (bytes.length % 2 === 1) fail('invalid BMPString length')
  let out = ''
  for (let i = 0; i < bytes.length; i += 2) {
    const unit = (bytes[i] << 8) | bytes[i + 1]
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = i + 3 < bytes.length ? (bytes[i + 2] << 8) | bytes[i + 3] : -1
      if (next < 0xdc00 || next > 0xdfff) fail('invalid BMPString (unpaired surrogate)')
      out += String.fromCharCode(unit, next)
      i += 2
    } else if (unit >= 0xdc00 && unit <= 0xdfff) {
      fail('invalid BMPString (unpaired surrogate)')
    } else {
      out += String.fromCharCode(unit)
    }
  }
  return out
}

export function universalString(bytes) {
  if (bytes.length % 4 !== 0) fail('invalid UniversalString length')
  let out = ''
  for (let i = 0; i < bytes.length; i += 4) {
    const cp = ((bytes[i] << 24) >>> 0) + (bytes[i + 1] << 16) + (bytes[i + 2] << 8) + bytes[i + 3]
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) fail('invalid UniversalString')
    out += String.fromCodePoint(cp)
  }
  return out
}

function digits(bytes, pos, count) {
  let value = 0
  for (let i = 0; i < count; i++) {
    const b = bytes[pos + i]
    if (b === undefined || b < 0x30 || b > 0x39) fail('invalid time digit')
    value = value * 10 + (b - 0x30)
  }
  return value
}

function dateTime(year, month, day, hour, minute, second) {
  if (hour > 23 || minute > 59 || second > 59) fail('invalid time')
  if (day < 1) fail('invalid day')
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0
  const days = [0, 31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month]
  if (days === undefined || month < 1) fail('invalid month')
  if (day > days) fail('invalid day')
  return { year, month, day, hour, minute, second }
}

function finishZ(bytes, pos) {
  if (bytes[pos] !== 0x5a || pos + 1 !== bytes.length) fail('time must end in Z')
}

/** UTCTime: exactly YYMMDDHHMMSSZ (years 1950-2049). */
export function utcTime(bytes) {
  const yy = digits(bytes, 0, 2)
  const year = yy >= 50 ? 1900 + yy : 2000 + yy
  const month = digits(bytes, 2, 2)
  const day = digits(bytes, 4, 2)
  const hour = digits(bytes, 6, 2)
  const minute = digits(bytes, 8, 2)
  const second = digits(bytes, 10, 2)
  finishZ(bytes, 12)
  return dateTime(year, month, day, hour, minute, second)
}

/** GeneralizedTime as X.509 allows it: exactly YYYYMMDDHHMMSSZ, no fraction. */
export function x509GeneralizedTime(bytes) {
  const year = digits(bytes, 0, 4)
  const month = digits(bytes, 4, 2)
  const day = digits(bytes, 6, 2)
  const hour = digits(bytes, 8, 2)
  const minute = digits(bytes, 10, 2)
  const second = digits(bytes, 12, 2)
  finishZ(bytes, 14)
  return dateTime(year, month, day, hour, minute, second)
}

/** Compare encodings as rust slices compare (lexicographic, a prefix sorts first). */
export function compareBytes(a, b) {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i]
  return a.length - b.length
}

export function bytesEqual(a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** SEQUENCE OF: every element parsed by `each(parser)`; returns the results. */
export function sequenceOf(tlv, each) {
  const p = tlv.contents()
  const out = []
  while (!p.isEmpty()) out.push(each(p))
  return out
}

/** SET OF: elements in DER order (by whole encoding), each parsed alone by `each(tlv)`. */
export function setOf(tlv, each) {
  const p = tlv.contents()
  const out = []
  let last = null
  while (!p.isEmpty()) {
    const el = p.readTlv()
    if (last !== null && compareBytes(el.full, last.full) < 0) fail('SET OF elements are not sorted')
    last = el
    out.push(each(el))
  }
  return out
}
