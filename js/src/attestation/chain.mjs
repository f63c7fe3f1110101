// The explicit walk of the Nitro certificate chain (attestation/chain.py), in the same order and with the
// same reason codes: pinned root (bytes), structure of every certificate, then per link the signature
// algorithm and issuer name, then the signatures, then validity at the verification time, CA constraints
// with path length, and the leaf.

import { bytesEqual, fail, T, integerBytes, single } from './der.mjs'
import { namesEqual, OID, parseCertificate, loadCertificate, isoTime, CertificateDefect } from './x509.mjs'
import { AttestationError, Reason } from './errors.mjs'
import { ecdsaVerify } from './ecdsa.mjs'

const cache = new Map() // DER (latin1 string) -> parsed certificate or CertificateDefect; intermediates repeat
const linkCache = new Map() // subject DER + issuer DER -> null (issued) or why not
const CACHE_LIMIT = 256

function key(bytes) {
  let s = ''
  for (let i = 0; i < bytes.length; i += 4096) s += String.fromCharCode(...bytes.subarray(i, i + 4096))
  return s
}

function remember(map, k, value) {
  if (map.size >= CACHE_LIMIT) map.delete(map.keys().next().value)
  map.set(k, value)
  return value
}

function parse(der) {
  const k = key(der)
  let entry = cache.get(k)
  if (entry === undefined) {
    try {
      entry = parseCertificate(der)
    } catch (exc) {
      entry = exc instanceof CertificateDefect ? exc : new CertificateDefect('der', String(exc?.message ?? exc))
    }
    remember(cache, k, entry)
  }
  if (entry instanceof CertificateDefect) throw entry
  return entry
}

function load(field, where, der) {
  try {
    return parse(der)
  } catch (defect) {
    if (defect.constraints) {
      throw new AttestationError(Reason.CERT_CONSTRAINTS, `${where} [${defect.rule}]: ${defect.message}`)
    }
    throw new AttestationError(Reason.MALFORMED, `${where} [${defect.rule}]: ${defect.message}`, field)
  }
}

/** (r, s) of a DER ECDSA-Sig-Value, as OpenSSL's ECDSA_verify accepts it (canonical DER, no trailing data). */
function derSignature(bytes) {
  const s = single(bytes, T.SEQUENCE).contents()
  const r = integerBytes(s.read(T.INTEGER), true)
  const sv = integerBytes(s.read(T.INTEGER), true)
  s.finish()
  if (r[0] & 0x80 || sv[0] & 0x80) fail('negative r or s')
  return [r, sv]
}

/** null when `issuer` signed `subject` (cryptography's verify_directly_issued_by), else why not. */
async function signedBy(subject, issuer) {
  const k = key(subject.der) + '\u0000' + key(issuer.der)
  if (linkCache.has(k)) return linkCache.get(k)
  let problem = null
  if (!bytesEqual(subject.tbsSignatureAlgorithm.raw, subject.signatureAlgorithm.raw)) {
    problem = 'Inner and outer signature algorithms do not match. This is an invalid certificate.'
  } else if (!bytesEqual(subject.issuerRaw, issuer.subjectRaw)) {
    problem = 'Issuer certificate subject does not match certificate issuer.'
  } else if (issuer.publicKey.kind !== 'ec') {
    problem = 'Signature algorithm does not match issuer key type'
  } else {
    let ok = false
    try {
      const [r, s] = derSignature(subject.signature)
      ok = await ecdsaVerify(issuer.publicKey, subject.tbs, 'SHA-384', r, s)
    } catch {
      ok = false
    }
    if (!ok) problem = 'InvalidSignature'
  }
  if (problem !== null) problem = `signature does not verify with the issuer's key: ${problem}`
  return remember(linkCache, k, problem)
}

function checkLink(subject, where, issuer, issuerWhere) {
  if (subject.signatureAlgorithm.oidHex !== OID.ECDSA_SHA384) {
    throw new AttestationError(
      Reason.CHAIN_BROKEN,
      `${where} [signature-algorithm]: ${subject.subjectText} is not signed with ecdsa-with-SHA384`,
    )
  }
  if (!namesEqual(subject.issuer, issuer.subject)) {
    throw new AttestationError(
      Reason.CHAIN_BROKEN,
      `${where} [issuer-name]: issuer ${subject.issuerText} is not the subject of ${issuerWhere} (${issuer.subjectText})`,
    )
  }
}

function checkValidity(cert, where, atUs) {
  if (atUs < BigInt(cert.notBefore) * 1000000n) {
    throw new AttestationError(
      Reason.CERT_NOT_YET_VALID,
      `${where} [validity]: ${cert.subjectText} is valid from ${isoTime(cert.notBefore)}`,
    )
  }
  if (atUs > BigInt(cert.notAfter) * 1000000n) {
    throw new AttestationError(Reason.CERT_EXPIRED, `${where} [validity]: ${cert.subjectText} expired ${isoTime(cert.notAfter)}`)
  }
}

function checkCa(cert, where, casBelow) {
  const name = cert.subjectText
  const constraints = cert.basicConstraints
  if (constraints === null || !constraints.ca) {
    throw new AttestationError(Reason.CERT_CONSTRAINTS, `${where} [basic-constraints]: ${name} is in the CA bundle, not a CA`)
  }
  if (constraints.pathLength !== null && BigInt(casBelow) > constraints.pathLength) {
    throw new AttestationError(
      Reason.CERT_CONSTRAINTS,
      `${where} [path-length]: ${name} allows ${constraints.pathLength} CAs below it, the chain has ${casBelow}`,
    )
  }
  if (cert.keyUsage === null || !cert.keyUsage.keyCertSign) {
    throw new AttestationError(Reason.CERT_CONSTRAINTS, `${where} [key-usage]: ${name} may not sign certificates (keyCertSign)`)
  }
}

function checkLeaf(cert, where) {
  const name = cert.subjectText
  if (cert.basicConstraints !== null && cert.basicConstraints.ca) {
    throw new AttestationError(Reason.CERT_CONSTRAINTS, `${where} [basic-constraints]: leaf ${name} is a CA`)
  }
  if (cert.keyUsage === null || !cert.keyUsage.digitalSignature) {
    throw new AttestationError(Reason.CERT_CONSTRAINTS, `${where} [key-usage]: leaf ${name} may not sign (digitalSignature)`)
  }
  if (cert.publicKey.kind !== 'ec' || cert.publicKey.curve !== 'P-384') {
    throw new AttestationError(Reason.CERT_CONSTRAINTS, `${where} [leaf-key]: leaf ${name} key is not P-384`)
  }
  return cert.publicKey
}

/**
 * Check the leaf chains to `root` through `cabundle` and every certificate is valid at `atUs` (BigInt
 * microseconds since the epoch). Returns { leafKey, subjects } (subjects root first).
 */
export async function verifyChain(certificate, cabundle, root, atUs) {
  if (cabundle.length === 0 || !bytesEqual(cabundle[0], root.der)) {
    throw new AttestationError(Reason.ROOT_NOT_TRUSTED, `cabundle[0] [pinned-root]: is not the pinned root (${root.label})`)
  }
  const ders = [...cabundle, certificate]
  const places = [...cabundle.map((_, i) => `cabundle[${i}]`), 'certificate']
  const path = ders.map((der, i) => load(i < cabundle.length ? 'cabundle' : 'certificate', places[i], der))
  for (let i = 1; i < path.length; i++) checkLink(path[i], places[i], path[i - 1], places[i - 1])
  for (let i = 1; i < path.length; i++) {
    const problem = await signedBy(path[i], path[i - 1])
    if (problem !== null) {
      throw new AttestationError(
        Reason.CHAIN_BROKEN,
        `${places[i]} [issued-by]: ${path[i].subjectText} was not issued by ${places[i - 1]} (${path[i - 1].subjectText}): ${problem}`,
      )
    }
  }
  path.forEach((cert, i) => checkValidity(cert, places[i], atUs))
  path.slice(0, -1).forEach((cert, i) => checkCa(cert, places[i], path.length - 2 - i))
  const leafKey = checkLeaf(path[path.length - 1], places[places.length - 1])
  return { leafKey, subjects: path.map((cert) => cert.subjectText) }
}

/** Why cryptography's load_der_x509_certificate would refuse `der` (for pinned roots), or null. */
export function loadable(der) {
  try {
    loadCertificate(der)
    return null
  } catch (exc) {
    return String(exc?.message ?? exc)
  }
}
