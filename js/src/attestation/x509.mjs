// X.509 certificates read the way the Python verifier reads them (pyca/cryptography: rust-asn1 structure at
// load, then the names, validity, signature algorithm, public key and every extension it knows, each checked
// as the corresponding Python object is built). A certificate parses here exactly when attestation/chain.py's
// `_parse` accepts it; what is wrong is reported as an Asn1Error, which the chain check turns into
// `malformed:<field>`.

import { p256, p384, p521 } from '@noble/curves/nist.js'
import { secp256k1 } from '@noble/curves/secp256k1.js'
import {
  Asn1Error,
  T,
  bigIntOf,
  bitString,
  bmpString,
  boolean,
  bytesEqual,
  ctx,
  explicitInner,
  fail,
  fromHex,
  hasBit,
  hex,
  ia5String,
  integerBytes,
  nullValue,
  oid,
  oidDotted,
  oidFromDotted,
  Parser,
  printableString,
  sequenceOf,
  setOf,
  single,
  universalString,
  unsigned,
  utcTime,
  utf8Text,
  x509GeneralizedTime,
} from './der.mjs'

export { Asn1Error }

const O = (dotted) => oidFromDotted(dotted)

export const OID = Object.freeze({
  EC: O('1.2.840.10045.2.1'),
  ECDSA_SHA384: O('1.2.840.10045.4.3.3'),
  P256: O('1.2.840.10045.3.1.7'),
  P384: O('1.3.132.0.34'),
  P521: O('1.3.132.0.35'),
  SECP256K1: O('1.3.132.0.10'),
  BASIC_CONSTRAINTS: O('2.5.29.19'),
  KEY_USAGE: O('2.5.29.15'),
  X500_UNIQUE_IDENTIFIER: O('2.5.4.45'),
})

// AlgorithmIdentifier parameters by OID (cryptography-x509 common.rs AlgorithmParameters).
const OPTIONAL_NULL = new Set(
  [
    '1.3.14.3.2.26', // sha1
    '2.16.840.1.101.3.4.2.4', // sha224
    '2.16.840.1.101.3.4.2.1',
    '2.16.840.1.101.3.4.2.2',
    '2.16.840.1.101.3.4.2.3',
    '1.3.6.1.4.1.37476.3.2.1.99.7.224', // sha3 (cryptography's own arcs)
    '1.3.6.1.4.1.37476.3.2.1.99.7.256',
    '1.3.6.1.4.1.37476.3.2.1.99.7.384',
    '1.3.6.1.4.1.37476.3.2.1.99.7.512',
    '1.2.840.113549.1.1.1', // rsaEncryption
    '1.2.840.10045.4.3.1', // ecdsa-with-SHA224 .. SHA512
    '1.2.840.10045.4.3.2',
    '1.2.840.10045.4.3.3',
    '1.2.840.10045.4.3.4',
    '1.2.840.113549.1.1.5', // sha1WithRSA
    '1.3.14.3.2.29',
    '1.2.840.113549.1.1.14',
    '1.2.840.113549.1.1.11',
    '1.2.840.113549.1.1.12',
    '1.2.840.113549.1.1.13',
    '2.16.840.1.101.3.4.3.13', // RSA with SHA3
    '2.16.840.1.101.3.4.3.14',
    '2.16.840.1.101.3.4.3.15',
    '2.16.840.1.101.3.4.3.16',
    '2.16.840.1.101.3.4.3.1', // DSA with SHA2
    '2.16.840.1.101.3.4.3.2',
    '2.16.840.1.101.3.4.3.3',
    '2.16.840.1.101.3.4.3.4',
    '1.2.840.113549.2.7', // hmacWithSHA1
    '1.2.840.113549.2.9', // hmacWithSHA256
  ].map(O),
)
const NO_PARAMS = new Set(
  [
    '1.3.101.112', // Ed25519
    '1.3.101.113', // Ed448
    '1.3.101.110', // X25519
    '1.3.101.111', // X448
    '2.16.840.1.101.3.4.3.9', // ECDSA with SHA3
    '2.16.840.1.101.3.4.3.10',
    '2.16.840.1.101.3.4.3.11',
    '2.16.840.1.101.3.4.3.12',
  ].map(O),
)
const ALG = Object.freeze({
  RSA: O('1.2.840.113549.1.1.1'),
  RSA_PSS: O('1.2.840.113549.1.1.10'),
  DSA: O('1.2.840.10040.4.1'),
  DH: O('1.2.840.10046.2.1'),
  DH_KEY_AGREEMENT: O('1.2.840.113549.1.3.1'),
  PBES2: O('1.2.840.113549.1.5.13'),
  PBKDF2: O('1.2.840.113549.1.5.12'),
  AES_128_CBC: O('2.16.840.1.101.3.4.1.2'),
  AES_256_CBC: O('2.16.840.1.101.3.4.1.42'),
  PBES1_3DES: O('1.2.840.113549.1.12.1.3'),
  ED25519: O('1.3.101.112'),
  ED448: O('1.3.101.113'),
  X25519: O('1.3.101.110'),
  X448: O('1.3.101.111'),
})
// DEFAULT values of RSASSA-PSS / PBKDF2 parameters, as DER (an encoded default is an error in DER).
const SHA1_NULL_DER = '300906052b0e03021a0500'
const MGF1_SHA1_DER = '301606092a864886f70d010108300906052b0e03021a0500'
const HMAC_SHA1_DER = '300c06082a864886f70d02070500'

function algorithmIdentifier(p) {
  const tlv = p.read(T.SEQUENCE)
  const q = tlv.contents()
  const oidBytes = oid(q.read(T.OID))
  const key = hex(oidBytes)
  let curve = null
  if (OPTIONAL_NULL.has(key)) {
    const n = q.optional(T.NULL)
    if (n) nullValue(n)
  } else if (NO_PARAMS.has(key)) {
    // no parameters
  } else if (key === OID.EC) {
    curve = ecParameters(q.readTlv())
  } else if (key === ALG.RSA_PSS) {
    if (q.peekIs(T.SEQUENCE)) rsaPssParameters(q.read(T.SEQUENCE))
  } else if (key === ALG.DSA) {
    bigUints(q.read(T.SEQUENCE), 3)
  } else if (key === ALG.DH) {
    const s = q.read(T.SEQUENCE).contents()
    for (let i = 0; i < 3; i++) integerBytes(s.read(T.INTEGER), false)
    const j = s.optional(T.INTEGER)
    if (j) integerBytes(j, false)
    s.optional(T.SEQUENCE)
    s.finish()
  } else if (key === ALG.DH_KEY_AGREEMENT) {
    const s = q.read(T.SEQUENCE).contents()
    for (let i = 0; i < 2; i++) integerBytes(s.read(T.INTEGER), false)
    const len = s.optional(T.INTEGER)
    if (len) unsigned(len, 4)
    s.finish()
  } else if (key === ALG.PBES2) {
    const s = q.read(T.SEQUENCE).contents()
    algorithmIdentifier(s)
    algorithmIdentifier(s)
    s.finish()
  } else if (key === ALG.PBKDF2) {
    const s = q.read(T.SEQUENCE).contents()
    s.read(T.OCTET_STRING)
    unsigned(s.read(T.INTEGER), 8)
    const len = s.optional(T.INTEGER)
    if (len) unsigned(len, 8)
    if (s.peekIs(T.SEQUENCE)) {
      const prf = algorithmIdentifier(s)
      if (hex(prf.raw) === HMAC_SHA1_DER) fail('DEFAULT value was explicitly encoded')
    }
    s.finish()
  } else if (key === ALG.AES_128_CBC || key === ALG.AES_256_CBC) {
    if (q.read(T.OCTET_STRING).data.length !== 16) fail('AES IV must be 16 bytes')
  } else if (key === ALG.PBES1_3DES) {
    const s = q.read(T.SEQUENCE).contents()
    if (s.read(T.OCTET_STRING).data.length !== 8) fail('PBES1 salt must be 8 bytes')
    unsigned(s.read(T.INTEGER), 8)
    s.finish()
  } else if (!q.isEmpty()) {
    q.readTlv() // any other algorithm: one optional parameter of any type
  }
  q.finish()
  return { oid: oidBytes, oidHex: key, raw: tlv.full, curve }
}

function bigUints(tlv, count) {
  const s = tlv.contents()
  for (let i = 0; i < count; i++) integerBytes(s.read(T.INTEGER), false)
  s.finish()
}

function rsaPssParameters(tlv) {
  const s = tlv.contents()
  const hash = s.optional(ctx(0, true))
  if (hash) {
    const inner = new Parser(explicitInner(hash).full)
    const alg = algorithmIdentifier(inner)
    inner.finish()
    if (hex(alg.raw) === SHA1_NULL_DER) fail('DEFAULT value was explicitly encoded')
  }
  const mgf = s.optional(ctx(1, true))
  if (mgf) {
    const inner = explicitInner(mgf)
    if (!inner.tag.is(T.SEQUENCE)) fail('MaskGenAlgorithm must be a SEQUENCE')
    const m = inner.contents()
    oid(m.read(T.OID))
    algorithmIdentifier(m)
    m.finish()
    if (hex(inner.full) === MGF1_SHA1_DER) fail('DEFAULT value was explicitly encoded')
  }
  const salt = s.optional(ctx(2, true))
  if (salt) {
    const inner = explicitInner(salt)
    if (!inner.tag.is(T.INTEGER)) fail('salt length must be an INTEGER')
    if (unsigned(inner, 2) === 20n) fail('DEFAULT value was explicitly encoded')
  }
  const trailer = s.optional(ctx(3, true))
  if (trailer) {
    const inner = explicitInner(trailer)
    if (!inner.tag.is(T.INTEGER)) fail('trailer field must be an INTEGER')
    unsigned(inner, 1)
  }
  s.finish()
}

/** ECParameters CHOICE: a named curve OID, NULL (implicit) or a SEQUENCE (specified curve). */
function ecParameters(tlv) {
  if (tlv.tag.is(T.OID)) return { named: hex(oid(tlv)) }
  if (tlv.tag.is(T.NULL)) {
    nullValue(tlv)
    return { implicit: true }
  }
  if (tlv.tag.is(T.SEQUENCE)) return { specified: true }
  return fail('invalid ECParameters')
}

// ---- names ----

const ASN1_TYPES = new Set([3, 4, 12, 18, 19, 20, 22, 23, 24, 26, 28, 30])

/** AttributeTypeValue as loaded: OID and a value whose string types rust-asn1 validates at parse. */
function attributeTypeValue(tlv) {
  if (!tlv.tag.is(T.SEQUENCE)) fail('AttributeTypeValue must be a SEQUENCE')
  const p = tlv.contents()
  const type = oid(p.read(T.OID))
  const value = p.readTlv()
  p.finish()
  let text = null
  if (value.tag.is(T.UNIVERSAL_STRING)) text = universalString(value.data)
  else if (value.tag.is(T.BMP_STRING)) text = bmpString(value.data)
  else if (value.tag.is(T.PRINTABLE_STRING)) text = printableString(value.data)
  return { type, value, text }
}

/** The Python NameAttribute of a loaded attribute (cryptography's parse_name_attribute). */
function nameAttribute(atv) {
  const byte = atv.value.tag.byte
  if (byte < 0) fail('long-form tags are not supported in NameAttribute values')
  if (!ASN1_TYPES.has(byte)) fail(`unexpected NameAttribute value tag ${byte}`)
  const oidHex = hex(atv.type)
  if (byte === T.BIT_STRING) {
    if (oidHex !== OID.X500_UNIQUE_IDENTIFIER) fail('oid must be X500_UNIQUE_IDENTIFIER for BitString type')
    return { oidHex, oid: atv.type, bytes: atv.value.data, key: `${oidHex}:b:${hex(atv.value.data)}` }
  }
  const text = atv.text !== null ? atv.text : utf8Text(atv.value.data)
  return { oidHex, oid: atv.type, text, key: `${oidHex}:s:${text}` }
}

/** A Python RelativeDistinguishedName: non-empty, no repeated attribute. */
function rdn(attributes) {
  const list = attributes.map(nameAttribute)
  if (list.length === 0) fail('a relative distinguished name cannot be empty')
  const keys = new Set(list.map((a) => a.key))
  if (keys.size !== list.length) fail('duplicate attributes are not allowed')
  return { attributes: list, keys }
}

/** Name (SEQUENCE OF SET OF AttributeTypeValue) as loaded; `python()` builds the Python view. */
function loadName(tlv) {
  if (!tlv.tag.is(T.SEQUENCE)) fail('Name must be a SEQUENCE')
  const rdns = sequenceOf(tlv, (p) => setOf(p.read(T.SET), attributeTypeValue))
  return { raw: tlv.full, rdns }
}

function pythonName(loaded) {
  return loaded.rdns.map(rdn)
}

/** Python Name equality: RDN by RDN, each compared as a set of (oid, value). */
export function namesEqual(a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) {
    if (a[i].keys.size !== b[i].keys.size) return false
    for (const key of a[i].keys) if (!b[i].keys.has(key)) return false
  }
  return true
}

const SHORT_NAMES = new Map(
  [
    ['2.5.4.3', 'CN'],
    ['2.5.4.7', 'L'],
    ['2.5.4.8', 'ST'],
    ['2.5.4.10', 'O'],
    ['2.5.4.11', 'OU'],
    ['2.5.4.6', 'C'],
    ['2.5.4.9', 'STREET'],
    ['0.9.2342.19200300.100.1.25', 'DC'],
    ['0.9.2342.19200300.100.1.1', 'UID'],
  ].map(([dotted, name]) => [O(dotted), name]),
)

function escapeDnValue(attr) {
  if (attr.bytes !== undefined) return attr.bytes.length ? `#${hex(attr.bytes)}` : ''
  let val = attr.text
  if (!val) return ''
  val = val
    .replaceAll('\\', '\\\\')
    .replaceAll('"', '\\"')
    .replaceAll('+', '\\+')
    .replaceAll(',', '\\,')
    .replaceAll(';', '\\;')
    .replaceAll('<', '\\<')
    .replaceAll('>', '\\>')
    .replaceAll('\0', '\\00')
  if (val[0] === '#' || (val[0] === ' ' && val.length > 1)) val = `\\${val}`
  if (val.endsWith(' ')) val = `${val.slice(0, -1)}\\ `
  return val
}

/** Name.rfc4514_string(): RDNs in reverse, attributes joined by '+'. */
export function rfc4514(name) {
  return [...name]
    .reverse()
    .map((r) =>
      r.attributes.map((a) => `${SHORT_NAMES.get(a.oidHex) ?? oidDotted(a.oid)}=${escapeDnValue(a)}`).join('+'),
    )
    .join(',')
}

// ---- general names ----

function generalName(tlv) {
  const byte = tlv.tag.byte
  switch (byte) {
    case ctx(0, true): {
      // OtherName: type-id and an [0] EXPLICIT value of any type
      const p = tlv.contents()
      oid(p.read(T.OID))
      explicitInner(p.read(ctx(0, true)))
      p.finish()
      return { kind: 'other' }
    }
    case ctx(1, false):
    case ctx(2, false):
    case ctx(6, false): {
      const text = utf8Text(tlv.data)
      return { kind: byte === ctx(2, false) ? 'dns' : 'text', text }
    }
    case ctx(3, true):
    case ctx(5, true):
      return fail('x400Address/EDIPartyName are not supported types')
    case ctx(4, true): {
      const inner = explicitInner(tlv)
      pythonName(loadName(inner))
      return { kind: 'directory' }
    }
    case ctx(7, false):
      return ipAddress(tlv.data)
    case ctx(8, false):
      oid(tlv)
      return { kind: 'registered' }
    default:
      return fail('unexpected GeneralName tag')
  }
}

function ipAddress(data) {
  if (data.length === 4 || data.length === 16) return { kind: 'ip', network: false }
  if (data.length !== 8 && data.length !== 32) fail('invalid IPNetwork length')
  const half = data.length / 2
  const bits = BigInt(half * 8)
  const base = bigIntOf(Uint8Array.of(0, ...data.subarray(0, half)))
  const mask = bigIntOf(Uint8Array.of(0, ...data.subarray(half)))
  const all = (1n << bits) - 1n
  // the mask must be ones then zeros
  const inverted = all ^ mask
  if ((inverted & (inverted + 1n)) !== 0n) fail('Invalid netmask')
  if ((base & inverted) !== 0n) fail('IP network has host bits set')
  return { kind: 'ip', network: true }
}

/** GeneralNames as cryptography's parse_general_names reads them (cryptography 50 accepts an empty list). */
function generalNames(tlv) {
  return sequenceOf(tlv, (p) => p.readTlv()).map(generalName)
}

// ---- extensions ----

const EXT = Object.freeze({
  SUBJECT_ALTERNATIVE_NAME: O('2.5.29.17'),
  ISSUER_ALTERNATIVE_NAME: O('2.5.29.18'),
  TLS_FEATURE: O('1.3.6.1.5.5.7.1.24'),
  SUBJECT_KEY_IDENTIFIER: O('2.5.29.14'),
  EXTENDED_KEY_USAGE: O('2.5.29.37'),
  KEY_USAGE: O('2.5.29.15'),
  AUTHORITY_INFORMATION_ACCESS: O('1.3.6.1.5.5.7.1.1'),
  SUBJECT_INFORMATION_ACCESS: O('1.3.6.1.5.5.7.1.11'),
  CERTIFICATE_POLICIES: O('2.5.29.32'),
  POLICY_CONSTRAINTS: O('2.5.29.36'),
  OCSP_NO_CHECK: O('1.3.6.1.5.5.7.48.1.5'),
  INHIBIT_ANY_POLICY: O('2.5.29.54'),
  BASIC_CONSTRAINTS: O('2.5.29.19'),
  AUTHORITY_KEY_IDENTIFIER: O('2.5.29.35'),
  CRL_DISTRIBUTION_POINTS: O('2.5.29.31'),
  FRESHEST_CRL: O('2.5.29.46'),
  NAME_CONSTRAINTS: O('2.5.29.30'),
  MS_CERTIFICATE_TEMPLATE: O('1.3.6.1.4.1.311.21.7'),
  PRECERT_POISON: O('1.3.6.1.4.1.11129.2.4.3'),
  PRECERT_SCTS: O('1.3.6.1.4.1.11129.2.4.2'),
  PRIVATE_KEY_USAGE_PERIOD: O('2.5.29.16'),
  ADMISSIONS: O('1.3.36.8.3.3'),
})
const CPS_URI = O('1.3.6.1.5.5.7.2.1')
const USER_NOTICE = O('1.3.6.1.5.5.7.2.2')
const TLS_FEATURE_TYPES = new Set([5n, 17n])

function displayText(tlv) {
  if (tlv.tag.is(T.IA5_STRING)) return ia5String(tlv.data)
  if (tlv.tag.is(T.UTF8_STRING)) return utf8Text(tlv.data)
  if (tlv.tag.is(T.VISIBLE_STRING)) return utf8Text(tlv.data)
  if (tlv.tag.is(T.BMP_STRING)) return bmpString(tlv.data)
  return fail('invalid DisplayText')
}

function isDisplayText(p) {
  const tag = p.peekTag()
  return tag !== null && [T.IA5_STRING, T.UTF8_STRING, T.VISIBLE_STRING, T.BMP_STRING].includes(tag.byte)
}

function policyQualifier(p) {
  const s = p.read(T.SEQUENCE).contents()
  const id = hex(oid(s.read(T.OID)))
  const q = s.readTlv()
  s.finish()
  if (q.tag.is(T.IA5_STRING)) {
    ia5String(q.data)
    if (id !== CPS_URI) fail('CpsUri ASN.1 structure found but OID did not match')
  } else if (q.tag.is(T.SEQUENCE)) {
    const u = q.contents()
    if (u.peekIs(T.SEQUENCE)) {
      const ref = u.read(T.SEQUENCE).contents()
      displayText(ref.readTlv())
      sequenceOf(ref.read(T.SEQUENCE), (n) => integerBytes(n.read(T.INTEGER), false))
      ref.finish()
    }
    if (isDisplayText(u)) displayText(u.readTlv())
    u.finish()
    if (id !== USER_NOTICE) fail('UserNotice ASN.1 structure found but OID did not match')
  } else {
    fail('invalid policy qualifier')
  }
}

function distributionPoint(p) {
  const s = p.read(T.SEQUENCE).contents()
  let fullName = null
  let relativeName = null
  let crlIssuer = null
  const dpn = s.optional(ctx(0, true))
  if (dpn) {
    const choice = explicitInner(dpn)
    if (choice.tag.is(ctx(0, true))) fullName = generalNames(choice)
    else if (choice.tag.is(ctx(1, true))) relativeName = rdn(setOf(choice, attributeTypeValue))
    else fail('invalid DistributionPointName')
  }
  const reasons = s.optional(ctx(1, false))
  if (reasons) bitString(reasons)
  const issuer = s.optional(ctx(2, true))
  if (issuer) crlIssuer = generalNames(issuer)
  s.finish()
  // Python truthiness: an empty list of names counts as absent
  if (!fullName?.length && !relativeName && !crlIssuer?.length) fail('Either full_name, relative_name or crl_issuer must be provided.')
}

function generalSubtrees(tlv) {
  const names = sequenceOf(tlv, (p) => {
    const s = p.read(T.SEQUENCE).contents()
    const name = generalName(s.readTlv())
    const min = s.optional(ctx(0, false))
    if (min && unsigned(min, 8) === 0n) fail('DEFAULT value was explicitly encoded')
    const max = s.optional(ctx(1, false))
    if (max) unsigned(max, 8)
    s.finish()
    return name
  })
  if (names.length === 0) fail('name constraint subtrees must be a non-empty list or None')
  for (const name of names) {
    if (name.kind === 'ip' && !name.network) fail('IPAddress name constraints must be an IPv4Network or IPv6Network')
    if (name.kind === 'dns' && name.text.includes('*')) fail("DNSName name constraints must not contain '*'")
  }
}

function pkupTime(tlv) {
  const t = x509GeneralizedTime(tlv.data)
  if (t.year < 1) fail('year 0 is out of range')
  return epochSeconds(t)
}

function scts(bytes) {
  // RFC 6962 SignedCertificateTimestampList (TLS encoding) inside the OCTET STRING
  let pos = 0
  const u = (n) => {
    if (pos + n > bytes.length) fail('truncated SCT list')
    let v = 0
    for (let i = 0; i < n; i++) v = v * 256 + bytes[pos++]
    return v
  }
  const total = u(2)
  if (total !== bytes.length - 2) fail('invalid SCT list length')
  while (pos < bytes.length) {
    const len = u(2)
    const end = pos + len
    if (end > bytes.length) fail('truncated SCT')
    if (u(1) !== 0) fail('invalid SCT version')
    pos += 32 + 8
    if (pos > end) fail('truncated SCT')
    pos += u(2)
    u(1)
    u(1)
    pos += u(2)
    if (pos !== end) fail('invalid SCT length')
  }
}

/** One extension's value, parsed as cryptography's parse_cert_ext does; returns what the checks need. */
function parseExtension(oidHex, value) {
  switch (oidHex) {
    case EXT.SUBJECT_ALTERNATIVE_NAME:
    case EXT.ISSUER_ALTERNATIVE_NAME:
      generalNames(single(value, T.SEQUENCE))
      return null
    case EXT.TLS_FEATURE: {
      const features = sequenceOf(single(value, T.SEQUENCE), (p) => unsigned(p.read(T.INTEGER), 8))
      for (const f of features) if (!TLS_FEATURE_TYPES.has(f)) fail('unknown TLS feature')
      if (features.length === 0) fail('TLS features must not be empty')
      return null
    }
    case EXT.SUBJECT_KEY_IDENTIFIER:
      single(value, T.OCTET_STRING)
      return null
    case EXT.EXTENDED_KEY_USAGE:
      sequenceOf(single(value, T.SEQUENCE), (p) => oid(p.read(T.OID)))
      return null
    case EXT.KEY_USAGE: {
      const bits = bitString(single(value, T.BIT_STRING))
      const usage = {
        digitalSignature: hasBit(bits, 0),
        keyAgreement: hasBit(bits, 4),
        keyCertSign: hasBit(bits, 5),
        encipherOnly: hasBit(bits, 7),
        decipherOnly: hasBit(bits, 8),
      }
      if (!usage.keyAgreement && (usage.encipherOnly || usage.decipherOnly)) {
        fail('encipher_only and decipher_only can only be true when key_agreement is true')
      }
      return usage
    }
    case EXT.AUTHORITY_INFORMATION_ACCESS:
    case EXT.SUBJECT_INFORMATION_ACCESS:
      sequenceOf(single(value, T.SEQUENCE), (p) => {
        const s = p.read(T.SEQUENCE).contents()
        oid(s.read(T.OID))
        const name = s.readTlv()
        s.finish()
        return generalName(name)
      })
      return null
    case EXT.CERTIFICATE_POLICIES:
      sequenceOf(single(value, T.SEQUENCE), (p) => {
        const s = p.read(T.SEQUENCE).contents()
        oid(s.read(T.OID))
        if (s.peekIs(T.SEQUENCE)) sequenceOf(s.read(T.SEQUENCE), policyQualifier)
        s.finish()
      })
      return null
    case EXT.POLICY_CONSTRAINTS: {
      const s = single(value, T.SEQUENCE).contents()
      const a = s.optional(ctx(0, false))
      if (a) unsigned(a, 8)
      const b = s.optional(ctx(1, false))
      if (b) unsigned(b, 8)
      s.finish()
      if (!a && !b) fail('At least one of require_explicit_policy and inhibit_policy_mapping must not be None')
      return null
    }
    case EXT.OCSP_NO_CHECK:
    case EXT.PRECERT_POISON:
      nullValue(single(value, T.NULL))
      return null
    case EXT.INHIBIT_ANY_POLICY:
      integerBytes(single(value, T.INTEGER), false)
      return null
    case EXT.BASIC_CONSTRAINTS: {
      const s = single(value, T.SEQUENCE).contents()
      let ca = false
      const caTlv = s.optional(T.BOOLEAN)
      if (caTlv) {
        ca = boolean(caTlv)
        if (!ca) fail('DEFAULT value was explicitly encoded')
      }
      const lenTlv = s.optional(T.INTEGER)
      const pathLength = lenTlv ? unsigned(lenTlv, 8) : null
      s.finish()
      if (pathLength !== null && !ca) fail('path_length must be None when ca is False')
      return { ca, pathLength }
    }
    case EXT.AUTHORITY_KEY_IDENTIFIER: {
      const s = single(value, T.SEQUENCE).contents()
      s.optional(ctx(0, false))
      const issuer = s.optional(ctx(1, true))
      const serial = s.optional(ctx(2, false))
      if (serial) integerBytes(serial, true)
      s.finish()
      if (issuer) generalNames(issuer)
      if (!issuer !== !serial) fail('authority_cert_issuer and authority_cert_serial_number must both be present or both None')
      return null
    }
    case EXT.CRL_DISTRIBUTION_POINTS:
    case EXT.FRESHEST_CRL:
      sequenceOf(single(value, T.SEQUENCE), distributionPoint)
      return null
    case EXT.NAME_CONSTRAINTS: {
      const s = single(value, T.SEQUENCE).contents()
      const permitted = s.optional(ctx(0, true))
      const excluded = s.optional(ctx(1, true))
      s.finish()
      if (permitted) generalSubtrees(permitted)
      if (excluded) generalSubtrees(excluded)
      if (!permitted && !excluded) fail('At least one of permitted_subtrees and excluded_subtrees must not be None')
      return null
    }
    case EXT.MS_CERTIFICATE_TEMPLATE: {
      const s = single(value, T.SEQUENCE).contents()
      oid(s.read(T.OID))
      const major = s.optional(T.INTEGER)
      if (major) unsigned(major, 4)
      const minor = s.optional(T.INTEGER)
      if (minor) unsigned(minor, 4)
      s.finish()
      return null
    }
    case EXT.PRECERT_SCTS:
      scts(single(value, T.OCTET_STRING).data)
      return null
    case EXT.PRIVATE_KEY_USAGE_PERIOD: {
      const s = single(value, T.SEQUENCE).contents()
      const nb = s.optional(ctx(0, false))
      const na = s.optional(ctx(1, false))
      s.finish()
      const before = nb ? pkupTime(nb) : null
      const after = na ? pkupTime(na) : null
      if (before === null && after === null) fail('At least one of not_before and not_after must not be None')
      if (before !== null && after !== null && before > after) fail('not_before must be before not_after')
      return null
    }
    case EXT.ADMISSIONS:
      // Not modelled (no Nitro or simulator certificate carries it): refused rather than guessed.
      return fail('the Admissions extension is not supported by this verifier')
    default:
      return null // UnrecognizedExtension
  }
}

// ---- public keys ----

const CURVES = new Map([
  [OID.P256, { name: 'P-256', curve: p256, bytes: 32 }],
  [OID.P384, { name: 'P-384', curve: p384, bytes: 48 }],
  [OID.P521, { name: 'P-521', curve: p521, bytes: 66 }],
  [OID.SECP256K1, { name: 'secp256k1', curve: secp256k1, bytes: 32 }],
])

/** An EC point as OpenSSL's oct2point accepts it (compressed, uncompressed, hybrid); infinity refused. */
function ecPoint(info, bytes) {
  let encoded = bytes
  if (bytes.length === 1 + 2 * info.bytes && (bytes[0] === 0x06 || bytes[0] === 0x07)) {
    const yOdd = (bytes[bytes.length - 1] & 1) === 1
    if (yOdd !== (bytes[0] === 0x07)) fail('invalid EC point (hybrid parity)')
    encoded = Uint8Array.of(0x04, ...bytes.subarray(1))
  }
  let point
  try {
    point = info.curve.Point.fromBytes(encoded)
    point.assertValidity()
  } catch {
    return fail('invalid EC key')
  }
  if (point.is0()) fail('EC public key is the point at infinity')
  return point.toBytes(false)
}

function publicKey(spki) {
  const alg = spki.algorithm
  const bytes = spki.bits.bytes
  if (spki.bits.padding !== 0) fail('Invalid key (the key BIT STRING has unused bits)')
  if (alg.oidHex === OID.EC) {
    const params = alg.curve
    if (!params.named) fail('explicit or implicit EC curves are not supported')
    const info = CURVES.get(params.named)
    // Other named curves OpenSSL knows (P-192, P-224, binary and Brainpool curves) are not modelled.
    if (!info) fail(`unsupported elliptic curve ${oidDotted(fromHex(params.named))}`)
    return { kind: 'ec', curve: info.name, point: ecPoint(info, bytes) }
  }
  if (alg.oidHex === ALG.ED25519 || alg.oidHex === ALG.X25519) {
    if (bytes.length !== 32) fail('invalid key length')
    return { kind: 'other' }
  }
  if (alg.oidHex === ALG.ED448 || alg.oidHex === ALG.X448) {
    if (bytes.length !== (alg.oidHex === ALG.ED448 ? 57 : 56)) fail('invalid key length')
    return { kind: 'other' }
  }
  if (alg.oidHex === ALG.RSA || alg.oidHex === ALG.RSA_PSS) {
    const s = single(bytes, T.SEQUENCE).contents()
    const n = bigIntOf(integerBytes(s.read(T.INTEGER), false))
    const e = bigIntOf(integerBytes(s.read(T.INTEGER), false))
    s.finish()
    // cryptography's RSA public key checks
    if (e < 3n || e >= n) fail('e must be >= 3 and < n.')
    if ((e & 1n) === 0n) fail('e must be odd.')
    return { kind: 'other' }
  }
  if (alg.oidHex === ALG.DSA || alg.oidHex === ALG.DH || alg.oidHex === ALG.DH_KEY_AGREEMENT) {
    integerBytes(single(bytes, T.INTEGER), false)
    return { kind: 'other' }
  }
  return fail(`unsupported public key algorithm ${oidDotted(alg.oid)}`)
}

// ---- time ----

function daysFromCivil(y, m, d) {
  y -= m <= 2 ? 1 : 0
  const era = Math.floor(y / 400)
  const yoe = y - era * 400
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
}

export function epochSeconds(t) {
  return daysFromCivil(t.year, t.month, t.day) * 86400 + t.hour * 3600 + t.minute * 60 + t.second
}

/** Proleptic Gregorian [year, month, day] of a day count since 1970-01-01 (Hinnant's civil_from_days). */
export function civilFromDays(days) {
  const z = days + 719468
  const era = Math.floor(z / 146097)
  const doe = z - era * 146097
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365)
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100))
  const mp = Math.floor((5 * doy + 2) / 153)
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1
  const m = mp < 10 ? mp + 3 : mp - 9
  return [yoe + era * 400 + (m <= 2 ? 1 : 0), m, d]
}

/** Python's isoformat of a UTC datetime at whole seconds, e.g. 2026-12-07T15:29:00+00:00. */
export function isoTime(seconds) {
  const days = Math.floor(seconds / 86400)
  const rest = seconds - days * 86400
  const [y, m, d] = civilFromDays(days)
  const pad = (n, w = 2) => String(n).padStart(w, '0')
  const h = Math.floor(rest / 3600)
  const mi = Math.floor((rest % 3600) / 60)
  const s = rest % 60
  return `${pad(y, 4)}-${pad(m)}-${pad(d)}T${pad(h)}:${pad(mi)}:${pad(s)}+00:00`
}

function time(tlv) {
  let t
  if (tlv.tag.is(T.UTC_TIME)) t = utcTime(tlv.data)
  else if (tlv.tag.is(T.GENERALIZED_TIME)) t = x509GeneralizedTime(tlv.data)
  else fail('Time must be UTCTime or GeneralizedTime')
  return t
}

// ---- the certificate ----

export class CertificateDefect extends Error {
  /** `constraints`: the defect is a critical extension Nitro does not use (cert_constraints), else malformed. */
  constructor(rule, message, constraints = false) {
    super(message)
    this.rule = rule
    this.constraints = constraints
  }
}

const ALLOWED_CRITICAL = new Set([OID.BASIC_CONSTRAINTS, OID.KEY_USAGE])

const EXTENSION_NAMES = new Map([
  [O('2.5.29.14'), 'subjectKeyIdentifier'],
  [O('2.5.29.15'), 'keyUsage'],
  [O('2.5.29.17'), 'subjectAltName'],
  [O('2.5.29.18'), 'issuerAltName'],
  [O('2.5.29.19'), 'basicConstraints'],
  [O('2.5.29.30'), 'nameConstraints'],
  [O('2.5.29.31'), 'cRLDistributionPoints'],
  [O('2.5.29.32'), 'certificatePolicies'],
  [O('2.5.29.35'), 'authorityKeyIdentifier'],
  [O('2.5.29.36'), 'policyConstraints'],
  [O('2.5.29.37'), 'extendedKeyUsage'],
])

export function extensionName(oidBytes) {
  const name = EXTENSION_NAMES.get(hex(oidBytes))
  const dotted = oidDotted(oidBytes)
  return name ? `${name} (${dotted})` : dotted
}

function structure(der) {
  const certTlv = single(der, T.SEQUENCE)
  const p = certTlv.contents()
  const tbsTlv = p.read(T.SEQUENCE)
  const signatureAlgorithm = algorithmIdentifier(p)
  const signature = bitString(p.read(T.BIT_STRING))
  p.finish()

  const t = tbsTlv.contents()
  let version = 0n
  const versionTlv = t.optional(ctx(0, true))
  if (versionTlv) {
    const inner = explicitInner(versionTlv)
    if (!inner.tag.is(T.INTEGER)) fail('version must be an INTEGER')
    version = unsigned(inner, 1)
    if (version === 0n) throw new CertificateDefect('version', 'DEFAULT version v1 was explicitly encoded')
  }
  const serial = integerBytes(t.read(T.INTEGER), true)
  const tbsSignatureAlgorithm = algorithmIdentifier(t)
  const issuer = loadName(t.readTlv())
  const validity = t.read(T.SEQUENCE).contents()
  const notBefore = time(validity.readTlv())
  const notAfter = time(validity.readTlv())
  validity.finish()
  const subject = loadName(t.readTlv())
  const spkiTlv = t.read(T.SEQUENCE)
  const s = spkiTlv.contents()
  const spki = { algorithm: algorithmIdentifier(s), bits: bitString(s.read(T.BIT_STRING)) }
  s.finish()
  const issuerUid = t.optional(ctx(1, false))
  if (issuerUid) bitString(issuerUid)
  const subjectUid = t.optional(ctx(2, false))
  if (subjectUid) bitString(subjectUid)
  let extensions = []
  const extTlv = t.optional(ctx(3, true))
  if (extTlv) {
    extensions = sequenceOf(single(explicitInner(extTlv).full, T.SEQUENCE), (q) => {
      const e = q.read(T.SEQUENCE).contents()
      const extOid = oid(e.read(T.OID))
      let critical = false
      const crit = e.optional(T.BOOLEAN)
      if (crit) {
        critical = boolean(crit)
        if (!critical) fail('DEFAULT critical=FALSE was explicitly encoded')
      }
      const value = e.read(T.OCTET_STRING).data
      e.finish()
      return { oid: extOid, oidHex: hex(extOid), critical, value }
    })
  }
  t.finish()
  return {
    version,
    serial,
    tbs: tbsTlv.full,
    tbsSignatureAlgorithm,
    signatureAlgorithm,
    signature,
    issuer,
    subject,
    notBefore,
    notAfter,
    spki,
    extensions,
  }
}

/** What cryptography checks when it loads a certificate: structure and a version of v1 or v3. */
export function loadCertificate(der) {
  const raw = structure(der)
  if (raw.version !== 0n && raw.version !== 2n) fail(`${raw.version} is not a valid X509 version`)
  return raw
}

/**
 * Parse a DER certificate and check its structure as attestation/chain.py's `_parse` does. Throws a
 * CertificateDefect: `constraints` true for a critical extension Nitro does not use, else malformed.
 */
export function parseCertificate(der) {
  let raw
  try {
    raw = structure(der)
  } catch (exc) {
    if (exc instanceof CertificateDefect) throw exc
    throw new CertificateDefect('der', `not a DER X.509 certificate: ${exc.message}`)
  }
  if (raw.version !== 0n && raw.version !== 2n) {
    throw new CertificateDefect('version', `not an X.509 v3 certificate: ${raw.version} is not a valid X509 version`)
  }
  if (raw.version !== 2n) throw new CertificateDefect('version', 'is X.509 v1, must be v3')
  let issuer, subject, notBefore, notAfter, key
  try {
    issuer = pythonName(raw.issuer)
    subject = pythonName(raw.subject)
    if (raw.notBefore.year < 1 || raw.notAfter.year < 1) fail('year 0 is out of range')
    notBefore = epochSeconds(raw.notBefore)
    notAfter = epochSeconds(raw.notAfter)
    key = publicKey(raw.spki)
  } catch (exc) {
    throw new CertificateDefect('der', `a field does not parse: ${exc.message}`)
  }
  const seen = new Set()
  for (const ext of raw.extensions) {
    if (seen.has(ext.oidHex)) {
      throw new CertificateDefect('duplicate-extension', `extension ${extensionName(ext.oid)} appears more than once`)
    }
    seen.add(ext.oidHex)
  }
  let basicConstraints = null
  let keyUsage = null
  for (const ext of raw.extensions) {
    let parsed
    try {
      parsed = parseExtension(ext.oidHex, ext.value)
    } catch (exc) {
      throw new CertificateDefect('extensions', `extensions do not parse: ${extensionName(ext.oid)}: ${exc.message}`)
    }
    if (ext.oidHex === OID.BASIC_CONSTRAINTS) basicConstraints = parsed
    if (ext.oidHex === OID.KEY_USAGE) keyUsage = parsed
  }
  for (const ext of raw.extensions) {
    if (ext.critical && !ALLOWED_CRITICAL.has(ext.oidHex)) {
      throw new CertificateDefect(
        'critical-extension',
        `critical extension ${extensionName(ext.oid)} is not one Nitro uses ` +
          '(only basicConstraints and keyUsage may be critical)',
        true,
      )
    }
  }
  return {
    der,
    tbs: raw.tbs,
    tbsSignatureAlgorithm: raw.tbsSignatureAlgorithm,
    signatureAlgorithm: raw.signatureAlgorithm,
    signature: raw.signature.bytes,
    issuerRaw: raw.issuer.raw,
    subjectRaw: raw.subject.raw,
    issuer,
    subject,
    subjectText: rfc4514(subject),
    issuerText: rfc4514(issuer),
    notBefore,
    notAfter,
    publicKey: key,
    basicConstraints,
    keyUsage,
  }
}

export { bytesEqual, hex }
