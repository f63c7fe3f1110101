// ECDSA verification for the chain and the COSE signature: WebCrypto where the platform has it (Node >= 20,
// browsers; fast), @noble/curves otherwise. Both are given (r, s) already range-checked the way OpenSSL checks
// them (1 <= r, s < n), and an uncompressed point already validated on its curve.

import { p256, p384, p521 } from '@noble/curves/nist.js'
import { secp256k1 } from '@noble/curves/secp256k1.js'
import { sha256, sha384, sha512 } from '@noble/hashes/sha2.js'

const CURVES = {
  'P-256': { curve: p256, bytes: 32, webcrypto: true },
  'P-384': { curve: p384, bytes: 48, webcrypto: true },
  'P-521': { curve: p521, bytes: 66, webcrypto: true },
  secp256k1: { curve: secp256k1, bytes: 32, webcrypto: false },
}
const HASHES = { 'SHA-256': sha256, 'SHA-384': sha384, 'SHA-512': sha512 }

let backend = globalThis.crypto?.subtle ? 'webcrypto' : 'noble'

/** Choose 'webcrypto' or 'noble' (tests run both); returns the previous choice. */
export function setEcdsaBackend(name) {
  const previous = backend
  backend = name
  return previous
}

function toBigInt(bytes) {
  let v = 0n
  for (const b of bytes) v = (v << 8n) | BigInt(b)
  return v
}

function fixed(value, size) {
  const out = new Uint8Array(size)
  for (let i = size - 1; i >= 0; i--) {
    out[i] = Number(value & 0xffn)
    value >>= 8n
  }
  return out
}

const keys = new Map()

async function importKey(curveName, point) {
  const k = `${curveName}:${Array.from(point, (b) => b.toString(16).padStart(2, '0')).join('')}`
  let key = keys.get(k)
  if (key === undefined) {
    key = await globalThis.crypto.subtle.importKey('raw', point, { name: 'ECDSA', namedCurve: curveName }, false, [
      'verify',
    ])
    if (keys.size > 256) keys.delete(keys.keys().next().value)
    keys.set(k, key)
  }
  return key
}

/**
 * Verify an ECDSA signature (r, s as big-endian unsigned bytes) over `message` hashed with `hash`
 * ('SHA-256' | 'SHA-384' | 'SHA-512') by `publicKey` ({ curve, point }). Never throws for a bad signature.
 */
export async function ecdsaVerify(publicKey, message, hash, r, s) {
  const info = CURVES[publicKey.curve]
  if (!info) return false
  const n = info.curve.Point.CURVE().n
  const rv = toBigInt(r)
  const sv = toBigInt(s)
  if (rv < 1n || rv >= n || sv < 1n || sv >= n) return false
  const signature = new Uint8Array(2 * info.bytes)
  signature.set(fixed(rv, info.bytes), 0)
  signature.set(fixed(sv, info.bytes), info.bytes)
  try {
    if (backend === 'webcrypto' && info.webcrypto) {
      const key = await importKey(publicKey.curve, publicKey.point)
      return await globalThis.crypto.subtle.verify({ name: 'ECDSA', hash }, key, signature, message)
    }
    const digest = HASHES[hash](message)
    return info.curve.verify(signature, digest, publicKey.point, { prehash: false, lowS: false })
  } catch {
    return false
  }
}
