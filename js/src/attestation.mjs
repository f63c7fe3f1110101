// AWS Nitro attestation documents in JavaScript: read, decode and verify them against a pinned root and a
// policy, with the rules, the order of checks and the reason codes of the Python package `attestation/`
// (docs/ATTESTATION.md). Runs in browsers and Node >= 20; ECDSA, SHA-2 and Keccak come from @noble/curves,
// @noble/hashes and WebCrypto.

import { keccak_256 } from '@noble/hashes/sha3.js'
import { sha256 } from '@noble/hashes/sha2.js'
import { CborError, CborMap, Tagged, head, loads } from './attestation/cbor.mjs'
import { verifyChain, loadable } from './attestation/chain.mjs'
import { ecdsaVerify, setEcdsaBackend } from './attestation/ecdsa.mjs'
import { AttestationError, Reason, malformed } from './attestation/errors.mjs'
import { AWS_NITRO_ROOT_G1_PEM } from './roots/aws_nitro_root_g1.mjs'
import { concatBytes } from './bytes.mjs'

export { AttestationError, Reason, setEcdsaBackend }

export const COSE_SIGN1_TAG = 18
export const ALG_ES384 = -35
export const SIGNATURE_LENGTH = 96
export const MAX_DOCUMENT = 16 * 1024
export const PCR_LENGTH = 48
export const MAX_PCRS = 32
export const MAX_OPTIONAL_FIELD = 1024
export const MAX_MODULE_ID = 256
export const MAX_CERTIFICATE = 8 * 1024
export const MAX_CABUNDLE = 8
export const EARLIEST_TIMESTAMP_MS = 1_572_269_285_000
export const AWS_ROOT_SHA256 = '641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b'
export const FIELD_ORDER = Object.freeze([
  'module_id',
  'digest',
  'timestamp',
  'pcrs',
  'certificate',
  'cabundle',
  'public_key',
  'user_data',
  'nonce',
])
const REQUIRED = new Set(FIELD_ORDER.slice(0, 6))
const KNOWN = new Set(FIELD_ORDER)
const ES384_PROTECTED = Uint8Array.of(0xa1, 0x01, 0x38, 0x22)
const SIG1_CONTEXT = new TextEncoder().encode('\x6aSignature1')

// ---- small helpers ----

export function toHex(bytes) {
  let out = ''
  for (const b of bytes) out += b.toString(16).padStart(2, '0')
  return out
}

/** bytes.fromhex after removing one leading "0x" (ASCII whitespace between bytes allowed, as in Python). */
export function fromHex(text) {
  const body = text.startsWith('0x') ? text.slice(2) : text
  const out = []
  let i = 0
  while (i < body.length) {
    if (/[ \t\n\r\x0b\x0c]/.test(body[i])) {
      i += 1
      continue
    }
    const pair = body.slice(i, i + 2)
    if (!/^[0-9a-fA-F]{2}$/.test(pair)) throw new TypeError(`non-hexadecimal number found in fromhex() arg at position ${i}`)
    out.push(Number.parseInt(pair, 16))
    i += 2
  }
  return Uint8Array.from(out)
}

function bytesEqual(a, b) {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i]
  return diff === 0
}

function concat(parts) {
  return concatBytes(...parts)
}

function asBytes(data) {
  if (data instanceof Uint8Array) return data
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  if (typeof data === 'string') return new TextEncoder().encode(data)
  throw new TypeError('expected bytes (Uint8Array, ArrayBuffer) or a string')
}

// ---- reading documents as they travel (attestation/encoding.py) ----

export class DocumentFormatError extends Error {
  constructor(message) {
    super(message)
    this.name = 'DocumentFormatError'
  }
}

const ASCII_WS = new Set([0x20, 0x09, 0x0a, 0x0d, 0x0b, 0x0c])
const B64_VALUES = (() => {
  const table = new Int16Array(256).fill(-1)
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  for (let i = 0; i < 64; i++) table[alphabet.charCodeAt(i)] = i
  return table
})()

/** base64.b64decode(text, validate=True) of CPython 3.11 (binascii strict mode), byte for byte. */
export function b64decodeStrict(text) {
  const out = []
  let quad = 0
  let left = 0
  let pads = 0
  let paddingStarted = false
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i)
    if (ch === 0x3d) {
      paddingStarted = true
      if (i === 0) throw new DocumentFormatError('Leading padding not allowed')
      if (quad >= 2 && quad + ++pads >= 4) {
        if (i + 1 < text.length) throw new DocumentFormatError('Excess data after padding')
        return Uint8Array.from(out)
      }
      continue
    }
    const v = ch < 256 ? B64_VALUES[ch] : -1
    if (v < 0) throw new DocumentFormatError('Only base64 data is allowed')
    if (paddingStarted) throw new DocumentFormatError('Discontinuous padding not allowed')
    pads = 0
    if (quad === 0) {
      quad = 1
      left = v
    } else if (quad === 1) {
      quad = 2
      out.push(((left << 2) | (v >> 4)) & 0xff)
      left = v & 0x0f
    } else if (quad === 2) {
      quad = 3
      out.push(((left << 4) | (v >> 2)) & 0xff)
      left = v & 0x03
    } else {
      quad = 0
      out.push(((left << 6) | v) & 0xff)
      left = 0
    }
  }
  if (quad === 1) throw new DocumentFormatError('Invalid base64-encoded string')
  if (quad !== 0) throw new DocumentFormatError('Incorrect padding')
  return Uint8Array.from(out)
}

function stripAscii(bytes) {
  let start = 0
  let end = bytes.length
  while (start < end && ASCII_WS.has(bytes[start])) start++
  while (end > start && ASCII_WS.has(bytes[end - 1])) end--
  return bytes.subarray(start, end)
}

function fromJson(text) {
  let value
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(text))
  } catch (exc) {
    throw new DocumentFormatError(`attestation JSON does not parse: ${exc.message}`)
  }
  const document = value !== null && typeof value === 'object' && !Array.isArray(value) ? value.document : undefined
  if (typeof document !== 'string') {
    throw new DocumentFormatError("attestation JSON has no base64 'document' (the GET /attestation answer)")
  }
  try {
    return b64decodeStrict(document.replace(PY_WHITESPACE, ''))
  } catch (exc) {
    throw new DocumentFormatError(`attestation JSON 'document' is not base64: ${exc.message}`)
  }
}

// str.split() whitespace in Python (Unicode White_Space plus the ASCII separators \x1c-\x1f)
const PY_WHITESPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/g
const HEX_RE = /^(0x)?[0-9a-fA-F]+$/
const B64_RE = /^[A-Za-z0-9+/_-]+={0,2}$/

/**
 * The COSE_Sign1 bytes of a document in any form it travels in: raw COSE bytes (returned as they are), the
 * JSON answer of GET /attestation (its base64 "document"), hex text (optional 0x) or base64 text (standard or
 * URL-safe, padding optional), whitespace ignored. Anything else is returned unchanged, so decoding reports
 * what is wrong with it. Throws DocumentFormatError for a JSON object without a readable "document".
 */
export function readDocumentBytes(input) {
  const data = asBytes(input)
  if (data[0] === 0x84 || data[0] === 0xd2) return data
  const stripped = stripAscii(data)
  if (stripped[0] === 0x7b) return fromJson(stripped)
  const kept = []
  for (const b of data) if (!ASCII_WS.has(b)) kept.push(b)
  let text = ''
  for (let i = 0; i < kept.length; i += 8192) text += String.fromCharCode(...kept.slice(i, i + 8192))
  if (HEX_RE.test(text)) {
    const body = text.startsWith('0x') ? text.slice(2) : text
    if (body.length % 2 === 0) return fromHex(body)
  }
  if (B64_RE.test(text)) {
    try {
      const padded = text + '='.repeat((4 - (text.length % 4)) % 4)
      return b64decodeStrict(padded.replaceAll('-', '+').replaceAll('_', '/'))
    } catch {
      // not base64 after all
    }
  }
  return data
}

// ---- COSE_Sign1 (attestation/cose.py) ----

/** The bytes ES384 signs: ["Signature1", protected, h'', payload]. */
export function sigStructure(protectedHeader, payload) {
  return concat([
    Uint8Array.of(0x84),
    SIG1_CONTEXT,
    head(2, protectedHeader.length),
    protectedHeader,
    Uint8Array.of(0x40),
    head(2, payload.length),
    payload,
  ])
}

function checkProtected(protectedHeader) {
  if (bytesEqual(protectedHeader, ES384_PROTECTED)) return
  let header
  try {
    header = loads(protectedHeader)
  } catch (exc) {
    throw malformed('protected', `protected header is not CBOR: ${exc.message}`)
  }
  if (!(header instanceof CborMap) || !header.has(1n)) {
    throw malformed('protected', 'protected header must be a map with an algorithm (label 1)')
  }
  const alg = header.get(1n)
  if (alg !== -35n) {
    throw new AttestationError(Reason.UNSUPPORTED_ALGORITHM, `algorithm ${describe(alg)} is not ES384 (-35)`)
  }
  if (header.size !== 1) throw malformed('protected', 'protected header may only carry the algorithm')
}

function describe(value) {
  if (typeof value === 'bigint') return String(value)
  if (typeof value === 'string') return JSON.stringify(value)
  if (value instanceof Uint8Array) return `bytes ${toHex(value)}`
  return String(value)
}

function decodeSign1(data) {
  if (data.length > MAX_DOCUMENT) {
    throw malformed('cose', `document is ${data.length} bytes, at most ${MAX_DOCUMENT} are accepted`)
  }
  let top
  try {
    top = loads(data)
  } catch (exc) {
    if (!(exc instanceof CborError)) throw exc
    throw malformed('cose', `not CBOR: ${exc.message}`)
  }
  if (top instanceof Tagged) {
    if (top.tag !== BigInt(COSE_SIGN1_TAG)) throw malformed('cose', `tag ${top.tag} is not COSE_Sign1 (18)`)
    top = top.value
  }
  if (!Array.isArray(top) || top.length !== 4) throw malformed('cose', 'COSE_Sign1 must be an array of four items')
  let [protectedHeader, unprotected, payload, signature] = top
  if (!(protectedHeader instanceof Uint8Array)) throw malformed('protected', 'protected header must be a byte string')
  checkProtected(protectedHeader)
  // The unprotected header is not signed, so nothing in it is trusted; Nitro sends {} and some re-encoders null.
  if (unprotected === null) unprotected = new CborMap()
  if (!(unprotected instanceof CborMap)) throw malformed('unprotected', 'unprotected header must be a map')
  if (!(payload instanceof Uint8Array)) throw malformed('payload', 'payload must be a byte string')
  if (!(signature instanceof Uint8Array) || signature.length !== SIGNATURE_LENGTH) {
    throw malformed('signature', `signature must be ${SIGNATURE_LENGTH} raw bytes (r||s)`)
  }
  return { protected: protectedHeader, unprotected, payload, signature }
}

// ---- the payload (attestation/document.py) ----

const codePoints = (s) => {
  let n = 0
  for (const _ of s) n++
  return n
}

function moduleId(value) {
  if (typeof value !== 'string' || !(codePoints(value) > 0 && codePoints(value) <= MAX_MODULE_ID)) {
    throw malformed('module_id', `must be a non-empty text string of at most ${MAX_MODULE_ID} chars`)
  }
  return value
}

function digest(value) {
  if (value !== 'SHA384') throw malformed('digest', `digest must be 'SHA384', got ${describe(value)}`)
  return 'SHA384'
}

function timestamp(value) {
  if (typeof value !== 'bigint' || value < BigInt(EARLIEST_TIMESTAMP_MS) || value >= 1n << 64n) {
    throw malformed('timestamp', `must be milliseconds since the epoch (uint), got ${describe(value)}`)
  }
  return value
}

function pcrs(value) {
  if (!(value instanceof CborMap) || !(value.size >= 1 && value.size <= MAX_PCRS)) {
    throw malformed('pcrs', `must be a map of 1 to ${MAX_PCRS} entries`)
  }
  const out = new Map()
  for (const [index, d] of value.items()) {
    if (typeof index !== 'bigint' || index < 0n || index >= BigInt(MAX_PCRS)) {
      throw malformed('pcrs', `PCR index ${describe(index)} is not in 0..${MAX_PCRS - 1}`)
    }
    if (!(d instanceof Uint8Array) || d.length !== PCR_LENGTH) {
      // One length for all: mixed 32/64-byte PCRs would make keccak(PCR0 || PCR1 || PCR2) ambiguous.
      throw malformed('pcrs', `PCR${index} must be ${PCR_LENGTH} bytes (SHA384)`)
    }
    out.set(Number(index), d)
  }
  return out
}

function der(field, value, where) {
  if (!(value instanceof Uint8Array) || !(value.length > 0 && value.length <= MAX_CERTIFICATE)) {
    throw malformed(field, `${where}: must be a DER certificate (byte string of 1 to ${MAX_CERTIFICATE} bytes)`)
  }
  return value
}

function cabundle(value) {
  if (!Array.isArray(value) || value.length === 0) {
    throw malformed('cabundle', 'must be a non-empty array of DER certificates, root first')
  }
  if (value.length > MAX_CABUNDLE) {
    throw malformed('cabundle', `has ${value.length} certificates, at most ${MAX_CABUNDLE} (Nitro sends root + 3)`)
  }
  return value.map((item, i) => der('cabundle', item, `cabundle[${i}]`))
}

function optional(field, value) {
  if (value === undefined || value === null) return null
  if (!(value instanceof Uint8Array) || value.length > MAX_OPTIONAL_FIELD) {
    throw malformed(field, `must be absent, null or at most ${MAX_OPTIONAL_FIELD} bytes`)
  }
  return value
}

function parsePayload(payload) {
  let fields
  try {
    fields = loads(payload)
  } catch (exc) {
    if (!(exc instanceof CborError)) throw exc
    throw malformed('payload', `payload is not CBOR: ${exc.message}`)
  }
  if (!(fields instanceof CborMap)) throw malformed('payload', 'payload must be a map')
  const unknown = fields.keys().filter((k) => !(typeof k === 'string' && KNOWN.has(k)))
  if (unknown.length) throw malformed('payload', `unknown payload field(s): ${unknown.map(describe).join(', ')}`)
  const missing = FIELD_ORDER.filter((k) => REQUIRED.has(k) && !fields.has(k))
  if (missing.length) throw malformed(missing[0], 'required field is missing')
  // Checked in Python's order (the keyword arguments of AttestationDocument, evaluated left to right).
  const moduleIdValue = moduleId(fields.get('module_id'))
  const digestValue = digest(fields.get('digest'))
  const ts = timestamp(fields.get('timestamp'))
  const document = {
    moduleId: moduleIdValue,
    digest: digestValue,
    timestampMs: ts <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(ts) : ts,
    pcrs: pcrs(fields.get('pcrs')),
    certificate: der('certificate', fields.get('certificate'), 'certificate'),
    cabundle: cabundle(fields.get('cabundle')),
    publicKey: optional('public_key', fields.get('public_key')),
    userData: optional('user_data', fields.get('user_data')),
    nonce: optional('nonce', fields.get('nonce')),
  }
  document.isDebug = [0, 1, 2].every((i) => document.pcrs.has(i) && document.pcrs.get(i).every((b) => b === 0))
  return document
}

/**
 * Decode COSE_Sign1 and its payload (no signature or chain check). Throws AttestationError naming the first
 * bad field, in the order the Python decoder checks them.
 */
export function decodeDocument(data) {
  const cose = decodeSign1(asBytes(data))
  return { cose, document: parsePayload(cose.payload) }
}

// ---- trust anchors (attestation/roots.py) ----

function pemToDer(pem) {
  const text = typeof pem === 'string' ? pem : new TextDecoder().decode(asBytes(pem))
  const re = /-----BEGIN ([^-\r\n]*)-----([\s\S]*?)-----END \1-----/g
  for (const match of text.matchAll(re)) {
    if (match[1] !== 'CERTIFICATE' && match[1] !== 'X509 CERTIFICATE') continue
    const body = match[2].split(/\r?\n/).filter((line) => !line.includes(':'))
    return b64decodeStrict(body.join('').replace(/\s+/g, ''))
  }
  throw new TypeError('no BEGIN CERTIFICATE/END CERTIFICATE block in the PEM data')
}

/** A pinned root certificate. Anything other than the AWS root means the chain is not hardware's. */
export class TrustedRoot {
  constructor(derBytes, label) {
    this.der = asBytes(derBytes)
    this.label = label
    const problem = loadable(this.der)
    if (problem !== null) throw new TypeError(`not a loadable X.509 certificate: ${problem}`)
  }

  get sha256() {
    return toHex(sha256(this.der))
  }

  get isAws() {
    return this.sha256 === AWS_ROOT_SHA256
  }

  static fromPem(pem, label = 'PEM root') {
    return new TrustedRoot(pemToDer(pem), label)
  }

  /** The AWS Nitro Enclaves root G1 shipped in the package, checked against its pinned SHA-256. */
  static aws() {
    if (awsRoot === null) {
      const root = TrustedRoot.fromPem(AWS_NITRO_ROOT_G1_PEM, 'AWS Nitro Enclaves root G1')
      if (!root.isAws) throw new Error('the packaged AWS Nitro root does not match its pinned SHA-256')
      awsRoot = root
    }
    return awsRoot
  }
}

let awsRoot = null

// ---- verification (attestation/verify.py) ----

function bytesArg(value, what) {
  if (value === undefined || value === null) return null
  if (typeof value === 'string') return fromHex(value)
  if (value instanceof Uint8Array) return value
  throw new TypeError(`${what} must be bytes or hex`)
}

function normalisePolicy(policy = {}) {
  const pcrsIn = policy.expectedPcrs ?? new Map()
  const entries = pcrsIn instanceof Map ? [...pcrsIn.entries()] : Object.entries(pcrsIn)
  const expectedPcrs = entries
    .map(([index, value]) => [Number(index), bytesArg(value, `PCR${index}`)])
    .sort((a, b) => a[0] - b[0])
  return {
    root: policy.root ?? TrustedRoot.aws(),
    expectedPcrs,
    maxAgeS: policy.maxAgeS ?? null,
    expectedNonce: bytesArg(policy.expectedNonce, 'expectedNonce'),
    expectedPublicKey: bytesArg(policy.expectedPublicKey, 'expectedPublicKey'),
    expectedUserData: bytesArg(policy.expectedUserData, 'expectedUserData'),
    allowDebug: Boolean(policy.allowDebug),
    maxClockSkewS: policy.maxClockSkewS ?? 300.0,
  }
}

/** The verification time as BigInt microseconds since the epoch: Date, ms (number) or µs (bigint). */
export function toMicros(at) {
  if (at === undefined || at === null) return BigInt(Date.now()) * 1000n
  if (typeof at === 'bigint') return at
  if (at instanceof Date) return BigInt(at.getTime()) * 1000n
  if (typeof at === 'number' && Number.isFinite(at)) return BigInt(Math.round(at * 1000))
  throw new TypeError('at must be a Date, milliseconds (number) or microseconds (bigint)')
}

/** datetime.timestamp() of a time given in microseconds (a float, as Python computes it). */
function seconds(atUs) {
  if (atUs >= -(2n ** 53n) && atUs <= 2n ** 53n) return Number(atUs) / 1e6
  return Number(atUs / 1000000n) + Number(atUs % 1000000n) / 1e6
}

function checkPolicy(doc, policy, atUs) {
  if (doc.isDebug && !policy.allowDebug) {
    throw new AttestationError(Reason.DEBUG_MODE, 'PCR0-2 are all zero: the enclave runs in debug mode')
  }
  for (const [index, expected] of policy.expectedPcrs) {
    const actual = doc.pcrs.get(index)
    if (actual === undefined || !bytesEqual(actual, expected)) {
      const shown = actual !== undefined ? toHex(actual) : 'absent'
      throw new AttestationError(Reason.PCR_MISMATCH, `PCR${index} is ${shown}, expected ${toHex(expected)}`)
    }
  }
  const ageS = (seconds(atUs) * 1000 - Number(doc.timestampMs)) / 1000
  if (ageS < -policy.maxClockSkewS) {
    throw new AttestationError(Reason.TIMESTAMP_IN_FUTURE, `document is ${(-ageS).toFixed(0)} s in the future`)
  }
  if (policy.maxAgeS !== null && ageS > policy.maxAgeS) {
    throw new AttestationError(Reason.STALE, `document is ${ageS.toFixed(0)} s old, limit ${policy.maxAgeS.toFixed(0)} s`)
  }
  expect(Reason.NONCE_MISMATCH, 'nonce', doc.nonce, policy.expectedNonce)
  expect(Reason.PUBLIC_KEY_MISMATCH, 'public_key', doc.publicKey, policy.expectedPublicKey)
  expect(Reason.USER_DATA_MISMATCH, 'user_data', doc.userData, policy.expectedUserData)
}

function expect(reason, name, actual, expected) {
  if (expected !== null && (actual === null || !bytesEqual(actual, expected))) {
    throw new AttestationError(reason, `${name} does not match the expected value`)
  }
}

/**
 * Verify `documentBytes` (raw COSE_Sign1) at time `at` (default now) against `policy`. Resolves to what the
 * document attests; rejects with AttestationError { code, detail } (never anything else for bad input).
 *
 * Order, as in Python: structure, pinned root, certificate structure, chain links and signatures, validity,
 * CA constraints, leaf, COSE signature, then the policy (debug, PCRs, future timestamp, age, nonce, public key,
 * user data).
 */
export async function verifyAttestation(documentBytes, policy = {}, at = undefined) {
  const p = normalisePolicy(policy)
  const atUs = toMicros(at)
  const { cose, document: doc } = decodeDocument(documentBytes)
  const chain = await verifyChain(doc.certificate, doc.cabundle, p.root, atUs)
  const ok = await ecdsaVerify(
    chain.leafKey,
    sigStructure(cose.protected, cose.payload),
    'SHA-384',
    cose.signature.subarray(0, 48),
    cose.signature.subarray(48),
  )
  if (!ok) throw new AttestationError(Reason.BAD_SIGNATURE, 'COSE signature does not verify with the leaf key')
  checkPolicy(doc, p, atUs)
  return {
    moduleId: doc.moduleId,
    timestampMs: Number(doc.timestampMs),
    pcrs: doc.pcrs,
    publicKey: doc.publicKey,
    userData: doc.userData,
    nonce: doc.nonce,
    chainSubjects: chain.subjects,
    rootLabel: p.root.label,
    simulated: !p.root.isAws,
    debug: doc.isDebug,
  }
}

/** keccak256(PCR0 || PCR1 || PCR2), each exactly 48 bytes (protocol/images.py image_id). */
export function imageId(pcrMap) {
  const get = (i) => (pcrMap instanceof Map ? pcrMap.get(i) : pcrMap[i])
  const parts = [0, 1, 2].map(get)
  if (parts.some((part) => !(part instanceof Uint8Array) || part.length !== PCR_LENGTH)) {
    throw new RangeError(`an image id takes PCR0, PCR1 and PCR2 of ${PCR_LENGTH} bytes each (SHA384)`)
  }
  return keccak_256(concat(parts))
}

