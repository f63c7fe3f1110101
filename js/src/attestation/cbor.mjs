// A strict CBOR (RFC 8949) decoder with exactly the acceptance rules of attestation/cbor.py, so that both
// verifiers read the same values out of the same signed bytes (or refuse them alike).
//
// Why not cborg: its strict mode refuses non-minimal heads, which the Python decoder accepts, it has no
// indefinite-length byte/text strings, which Python accepts (and hardware may send), and it decodes a float
// 1.0 as the integer 1, which Python refuses. A decoder that disagrees on any of these would give another
// verdict on the same bytes, so this one mirrors cbor.py line by line.
//
// Values: integers are BigInt, byte strings Uint8Array, text strings string, arrays Array, maps CborMap,
// tags Tagged, true/false/null as themselves. A break code inside a definite-length array is kept as the
// BREAK symbol, as the Python decoder keeps its _BREAK marker there.

import { concatBytes } from '../bytes.mjs'

export const MAX_DEPTH = 16

export class CborError extends Error {}

export class Tagged {
  constructor(tag, value) {
    this.tag = tag
    this.value = value
  }
}

export const BREAK = Symbol('cbor-break')

const hexOf = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')

/** A map key's identity as Python compares dict keys: int, str and bytes never equal each other. */
export function keyOf(key) {
  if (typeof key === 'bigint') return `i${key}`
  if (typeof key === 'string') return `s${key}`
  return `b${hexOf(key)}`
}

/** A decoded map: insertion order kept, keys int (BigInt) / str / bytes, never duplicated. */
export class CborMap {
  constructor() {
    this.entries = new Map()
  }

  get size() {
    return this.entries.size
  }

  has(key) {
    return this.entries.has(keyOf(key))
  }

  get(key) {
    const entry = this.entries.get(keyOf(key))
    return entry === undefined ? undefined : entry[1]
  }

  keys() {
    return [...this.entries.values()].map(([k]) => k)
  }

  items() {
    return [...this.entries.values()]
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

function text(raw) {
  try {
    return utf8.decode(raw)
  } catch {
    throw new CborError('text string is not valid UTF-8')
  }
}

class Decoder {
  constructor(data) {
    this.data = data
    this.pos = 0
    this.end = data.length
  }

  argument(info) {
    if (info < 24) return BigInt(info)
    const size = { 24: 1, 25: 2, 26: 4, 27: 8 }[info]
    if (size === undefined) throw new CborError(`reserved additional information ${info} at offset ${this.pos - 1}`)
    const start = this.pos
    this.pos = start + size
    if (this.pos > this.end) throw new CborError('truncated argument')
    let value = 0n
    for (let i = start; i < this.pos; i++) value = (value << 8n) | BigInt(this.data[i])
    return value
  }

  take(length) {
    const start = this.pos
    if (length > BigInt(this.end - start)) {
      throw new CborError(`string of ${length} bytes runs past the end of the input`)
    }
    this.pos = start + Number(length)
    return this.data.subarray(start, this.pos)
  }

  chunks(major) {
    const parts = []
    for (;;) {
      if (this.pos >= this.end) throw new CborError('unterminated indefinite-length string')
      const initial = this.data[this.pos]
      this.pos += 1
      if (initial === 0xff) break
      if (initial >> 5 !== major || (initial & 0x1f) === 31) {
        throw new CborError('indefinite-length string chunk of the wrong type')
      }
      parts.push(this.take(this.argument(initial & 0x1f)))
    }
    return concatBytes(...parts)
  }

  item(depth) {
    if (depth > MAX_DEPTH) throw new CborError(`nesting deeper than ${MAX_DEPTH}`)
    if (this.pos >= this.end) throw new CborError('unexpected end of input')
    const initial = this.data[this.pos]
    this.pos += 1
    const major = initial >> 5
    const info = initial & 0x1f
    if (major === 7) return this.simple(info)
    if (info === 31) return this.indefinite(major, depth)
    const argument = this.argument(info)
    switch (major) {
      case 0:
        return argument
      case 1:
        return -1n - argument
      case 2:
        return this.take(argument)
      case 3:
        return text(this.take(argument))
      case 4: {
        this.checkCount(argument)
        const items = []
        for (let i = 0n; i < argument; i++) items.push(this.item(depth + 1))
        return items
      }
      case 5: {
        this.checkCount(2n * argument)
        const result = new CborMap()
        for (let i = 0n; i < argument; i++) {
          const key = this.item(depth + 1)
          const value = this.item(depth + 1)
          put(result, key, value)
        }
        return result
      }
      default:
        return new Tagged(argument, this.item(depth + 1))
    }
  }

  checkCount(items) {
    // Every item takes at least one byte, so a count beyond what is left cannot be honest.
    if (items > BigInt(this.end - this.pos)) {
      throw new CborError(`container claims ${items} items but only ${this.end - this.pos} bytes remain`)
    }
  }

  indefinite(major, depth) {
    if (major === 2) return this.chunks(2)
    if (major === 3) return text(this.chunks(3))
    if (major === 4) {
      const items = []
      for (;;) {
        const value = this.item(depth + 1)
        if (value === BREAK) return items
        items.push(value)
      }
    }
    if (major === 5) {
      const result = new CborMap()
      for (;;) {
        const key = this.item(depth + 1)
        if (key === BREAK) return result
        const value = this.item(depth + 1)
        if (value === BREAK) throw new CborError('indefinite-length map ends after a key')
        put(result, key, value)
      }
    }
    throw new CborError(`major type ${major} cannot have indefinite length`)
  }

  simple(info) {
    if (info === 20) return false
    if (info === 21) return true
    if (info === 22) return null
    if (info === 31) return BREAK
    throw new CborError(`unsupported simple value or float (additional information ${info})`)
  }
}

function put(target, key, value) {
  if (key === BREAK || value === BREAK) throw new CborError('unexpected break code in a definite-length map')
  if (!(typeof key === 'bigint' || typeof key === 'string' || key instanceof Uint8Array)) {
    throw new CborError('map key of unsupported type')
  }
  const id = keyOf(key)
  if (target.entries.has(id)) throw new CborError('duplicate map key')
  target.entries.set(id, [key, value])
}

/** Decode exactly one CBOR item that spans all of `data`. */
export function loads(data) {
  if (!(data instanceof Uint8Array)) throw new CborError('input must be bytes')
  const decoder = new Decoder(data)
  const value = decoder.item(0)
  if (value === BREAK) throw new CborError('unexpected break code at top level')
  if (decoder.pos !== decoder.end) throw new CborError(`${decoder.end - decoder.pos} trailing bytes after the item`)
  return value
}

/** The shortest head for a major type and argument (RFC 8949 preferred serialisation). */
export function head(major, argument) {
  const prefix = major << 5
  if (argument < 24) return Uint8Array.of(prefix | argument)
  if (argument < 0x100) return Uint8Array.of(prefix | 24, argument)
  if (argument < 0x10000) return Uint8Array.of(prefix | 25, argument >> 8, argument & 0xff)
  if (argument < 0x100000000) {
    return Uint8Array.of(prefix | 26, argument >>> 24, (argument >>> 16) & 0xff, (argument >>> 8) & 0xff, argument & 0xff)
  }
  const out = new Uint8Array(9)
  out[0] = prefix | 27
  let rest = BigInt(argument)
  for (let i = 8; i >= 1; i--) {
    out[i] = Number(rest & 0xffn)
    rest >>= 8n
  }
  return out
}
