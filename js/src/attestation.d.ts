// Types of the attestation half of @verinfer/verify (./attestation.mjs): AWS Nitro attestation documents read,
// decoded and verified with the rules and reason codes of the Python package `attestation/`.

/** Stable reason codes; `malformed` is always reported with its field, as `malformed:<field>`. */
export declare const Reason: Readonly<{
  MALFORMED: 'malformed'
  UNSUPPORTED_ALGORITHM: 'unsupported_algorithm'
  BAD_SIGNATURE: 'bad_signature'
  ROOT_NOT_TRUSTED: 'root_not_trusted'
  CHAIN_BROKEN: 'chain_broken'
  CERT_EXPIRED: 'cert_expired'
  CERT_NOT_YET_VALID: 'cert_not_yet_valid'
  CERT_CONSTRAINTS: 'cert_constraints'
  PCR_MISMATCH: 'pcr_mismatch'
  DEBUG_MODE: 'debug_mode'
  STALE: 'stale'
  TIMESTAMP_IN_FUTURE: 'timestamp_in_future'
  NONCE_MISMATCH: 'nonce_mismatch'
  PUBLIC_KEY_MISMATCH: 'public_key_mismatch'
  USER_DATA_MISMATCH: 'user_data_mismatch'
}>

export type AttestationReason = (typeof Reason)[keyof typeof Reason]

/** The fields a `malformed:<field>` code names. */
export type MalformedField =
  | 'cose'
  | 'protected'
  | 'unprotected'
  | 'payload'
  | 'signature'
  | 'module_id'
  | 'digest'
  | 'timestamp'
  | 'pcrs'
  | 'certificate'
  | 'cabundle'
  | 'public_key'
  | 'user_data'
  | 'nonce'

/** A document was rejected. `code` is stable across releases; `detail` is for people. */
export declare class AttestationError extends Error {
  constructor(reason: AttestationReason, detail: string, field?: MalformedField | null)
  readonly reason: AttestationReason
  readonly field: MalformedField | null
  /** `reason`, or `malformed:<field>`. */
  readonly code: string
  readonly detail: string
}

/** The input looks like the JSON of GET /attestation but carries no readable document. */
export declare class DocumentFormatError extends Error {}

export declare const COSE_SIGN1_TAG: 18
export declare const ALG_ES384: -35
export declare const SIGNATURE_LENGTH: 96
export declare const MAX_DOCUMENT: number
export declare const PCR_LENGTH: 48
export declare const MAX_PCRS: 32
export declare const MAX_OPTIONAL_FIELD: 1024
export declare const MAX_MODULE_ID: 256
export declare const MAX_CERTIFICATE: number
export declare const MAX_CABUNDLE: 8
/** 2019-10-28 (the AWS root's notBefore) in ms: an earlier document timestamp is a seconds/ms unit error. */
export declare const EARLIEST_TIMESTAMP_MS: number
/** SHA-256 of the AWS Nitro Enclaves root G1 (DER). */
export declare const AWS_ROOT_SHA256: string
/** The payload's keys in hardware order; the first six are required. */
export declare const FIELD_ORDER: readonly string[]

export type BytesLike = Uint8Array | ArrayBuffer | ArrayBufferView

export declare function toHex(bytes: Uint8Array): string
/** Python's bytes.fromhex after removing one leading "0x"; throws TypeError for non-hex text. */
export declare function fromHex(text: string): Uint8Array
/** base64.b64decode(text, validate=True) as CPython 3.11 decodes it; throws DocumentFormatError. */
export declare function b64decodeStrict(text: string): Uint8Array

/**
 * The COSE_Sign1 bytes of a document in any form it travels in: raw bytes, hex (optional 0x), base64
 * (standard or URL-safe, padding optional), or the JSON answer of GET /attestation. Anything else comes back
 * unchanged (so decoding reports what is wrong with it); a JSON object without a base64 "document" throws
 * DocumentFormatError.
 */
export declare function readDocumentBytes(input: BytesLike | string): Uint8Array

/** The bytes ES384 signs: ["Signature1", protected, h'', payload]. */
export declare function sigStructure(protectedHeader: Uint8Array, payload: Uint8Array): Uint8Array

export interface CoseSign1 {
  protected: Uint8Array
  /** The unsigned header (a decoded CBOR map); never trusted. */
  unprotected: unknown
  payload: Uint8Array
  /** 96 bytes, r || s. */
  signature: Uint8Array
}

export interface AttestationDocument {
  moduleId: string
  digest: 'SHA384'
  /** Milliseconds since the epoch; a bigint only beyond Number.MAX_SAFE_INTEGER. */
  timestampMs: number | bigint
  /** PCR index -> 48-byte value, in document order. */
  pcrs: Map<number, Uint8Array>
  certificate: Uint8Array
  /** DER certificates, root first. */
  cabundle: Uint8Array[]
  publicKey: Uint8Array | null
  userData: Uint8Array | null
  nonce: Uint8Array | null
  /** PCR0, PCR1 and PCR2 all zero (a debug-mode enclave). */
  isDebug: boolean
}

/** Decode COSE_Sign1 and its payload without any signature or chain check; throws AttestationError. */
export declare function decodeDocument(data: BytesLike): { cose: CoseSign1; document: AttestationDocument }

/** A pinned root certificate. Anything other than the AWS root means the chain is not hardware's. */
export declare class TrustedRoot {
  /** Throws TypeError when `der` is not a certificate cryptography would load. */
  constructor(der: BytesLike, label: string)
  readonly der: Uint8Array
  readonly label: string
  /** SHA-256 of the DER, hex. */
  readonly sha256: string
  readonly isAws: boolean
  /** The first CERTIFICATE block of a PEM text (for example the simulator's root.pem). */
  static fromPem(pem: string | Uint8Array, label?: string): TrustedRoot
  /** The AWS Nitro Enclaves root G1 shipped in the package, checked against AWS_ROOT_SHA256. */
  static aws(): TrustedRoot
}

/** What the verifier requires beyond a valid signature chained to `root`. Hex strings are accepted for bytes. */
export interface AttestationPolicy {
  /** Default: TrustedRoot.aws(). */
  root?: TrustedRoot
  /** Each listed PCR must be present and equal. */
  expectedPcrs?: Map<number, Uint8Array | string> | Record<number | string, Uint8Array | string>
  /** Reject documents older than this many seconds at the verification time. */
  maxAgeS?: number | null
  /** The nonce must be present and equal (your freshness challenge). */
  expectedNonce?: Uint8Array | string | null
  expectedPublicKey?: Uint8Array | string | null
  expectedUserData?: Uint8Array | string | null
  /** Accept debug-mode enclaves (all-zero PCR0-2); refused by default. */
  allowDebug?: boolean
  /** Reject documents timestamped more than this after the verification time (default 300). */
  maxClockSkewS?: number
}

/** A verification time: a Date, milliseconds since the epoch (number), microseconds (bigint); default now. */
export type VerificationTime = Date | number | bigint | null | undefined

/** A document that passed verification, with what it attests. */
export interface VerifiedAttestation {
  moduleId: string
  timestampMs: number
  pcrs: Map<number, Uint8Array>
  publicKey: Uint8Array | null
  userData: Uint8Array | null
  nonce: Uint8Array | null
  /** RFC 4514 subjects, root first, leaf last. */
  chainSubjects: string[]
  rootLabel: string
  /** True whenever the pinned root is not the AWS root. */
  simulated: boolean
  debug: boolean
}

/**
 * Verify raw COSE_Sign1 bytes at `at` against `policy`: structure, pinned root, certificate chain (validity at
 * `at`, CA and path constraints, P-384 leaf), the ES384 signature, then the policy. Rejects with
 * AttestationError only (reason codes and their order as in the Python verifier).
 */
export declare function verifyAttestation(
  documentBytes: BytesLike,
  policy?: AttestationPolicy,
  at?: VerificationTime,
): Promise<VerifiedAttestation>

/** keccak256(PCR0 || PCR1 || PCR2), each exactly 48 bytes; throws RangeError otherwise. */
export declare function imageId(pcrs: Map<number, Uint8Array> | Record<number, Uint8Array>): Uint8Array

/** A verification time as bigint microseconds since the epoch. */
export declare function toMicros(at?: VerificationTime): bigint

/** Choose how ECDSA is verified ('webcrypto' where available, else 'noble'); returns the previous choice. */
export declare function setEcdsaBackend(name: 'webcrypto' | 'noble'): 'webcrypto' | 'noble'
