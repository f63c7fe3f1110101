// The one error the attestation verifier throws, with the stable reason codes of attestation/errors.py.

export const Reason = Object.freeze({
  MALFORMED: 'malformed',
  UNSUPPORTED_ALGORITHM: 'unsupported_algorithm',
  BAD_SIGNATURE: 'bad_signature',
  ROOT_NOT_TRUSTED: 'root_not_trusted',
  CHAIN_BROKEN: 'chain_broken',
  CERT_EXPIRED: 'cert_expired',
  CERT_NOT_YET_VALID: 'cert_not_yet_valid',
  CERT_CONSTRAINTS: 'cert_constraints',
  PCR_MISMATCH: 'pcr_mismatch',
  DEBUG_MODE: 'debug_mode',
  STALE: 'stale',
  TIMESTAMP_IN_FUTURE: 'timestamp_in_future',
  NONCE_MISMATCH: 'nonce_mismatch',
  PUBLIC_KEY_MISMATCH: 'public_key_mismatch',
  USER_DATA_MISMATCH: 'user_data_mismatch',
})

/** A document was rejected. `code` is stable (`malformed:<field>` or a Reason); `detail` is for people. */
export class AttestationError extends Error {
  constructor(reason, detail, field = null) {
    const code = field ? `${reason}:${field}` : reason
    super(`${code}: ${detail}`)
    this.name = 'AttestationError'
    this.reason = reason
    this.field = field
    this.code = code
    this.detail = detail
  }
}

export function malformed(field, detail) {
  return new AttestationError(Reason.MALFORMED, detail, field)
}
