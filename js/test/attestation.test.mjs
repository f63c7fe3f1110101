// The JavaScript attestation verifier against the Python one: every hardware document and every simulated
// case of fixtures/attestation-expected.json (written by fixtures/make_expected.py from `verinfer attest
// verify --json`) must give the same exit code, verdict, reason code and report, through the command
// (attestCommand) and through the library (verifyAttestation).

import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import {
  AttestationError,
  AWS_ROOT_SHA256,
  TrustedRoot,
  decodeDocument,
  imageId,
  readDocumentBytes,
  setEcdsaBackend,
  sigStructure,
  toHex,
  verifyAttestation,
} from '../src/attestation.mjs'
import { AWS_NITRO_ROOT_G1_PEM } from '../src/roots/aws_nitro_root_g1.mjs'
import { attestCommand, parseIsoTime, pyJson } from '../bin/attest.mjs'

const HERE = dirname(fileURLToPath(import.meta.url))
const REPO = join(HERE, '..', '..')
const EXPECTED = JSON.parse(readFileSync(join(HERE, 'fixtures', 'attestation-expected.json'), 'utf8'))
const HARDWARE = join(REPO, 'tests', 'fixtures', 'attestation')

// Case arguments are relative to the repository root, as make_expected.py ran them (the root label of a
// PEM root is the path as given, so it must be the same string).
process.chdir(REPO)

async function run(args) {
  const out = []
  const err = []
  const code = await attestCommand(args, { out: (line) => out.push(line), err: (line) => err.push(line) })
  return { code, out: out.join('\n'), err: err.join('\n') }
}

function compare(result, expected) {
  assert.equal(result.code, expected.exit, result.err)
  const output = JSON.parse(result.out)
  if (expected.output.verified) {
    assert.deepEqual(output, expected.output)
  } else {
    assert.equal(output.verified, false)
    assert.equal(output.reason, expected.output.reason, output.detail)
    assert.equal(typeof output.detail, 'string')
  }
}

describe('attest verify matches verinfer attest verify', () => {
  for (const expected of EXPECTED.cases) {
    it(expected.name, async () => compare(await run(expected.args), expected))
  }
})

/** The library call a case's command line stands for. */
function policyOf(args) {
  const policy = { expectedPcrs: new Map() }
  let at
  let file
  let atDocumentTime = false
  for (let i = 1; i < args.length; i++) {
    const arg = args[i]
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, null]
    const value = () => inline ?? args[++i]
    if (flag === '--root') {
      const spec = value()
      policy.root = spec === 'aws' ? TrustedRoot.aws() : TrustedRoot.fromPem(readFileSync(spec), spec)
    } else if (flag === '--pcr') {
      const [index, hex] = value().split('=')
      policy.expectedPcrs.set(Number(index), Uint8Array.from(Buffer.from(hex, 'hex')))
    } else if (flag === '--nonce') policy.expectedNonce = value()
    else if (flag === '--public-key') policy.expectedPublicKey = value()
    else if (flag === '--user-data') policy.expectedUserData = value()
    else if (flag === '--max-age') policy.maxAgeS = Number(value())
    else if (flag === '--allow-debug') policy.allowDebug = true
    else if (flag === '--at') at = parseIsoTime(value())
    else if (flag === '--at-document-time') atDocumentTime = true
    else if (flag === '--json') continue
    else file = arg
  }
  const data = readDocumentBytes(readFileSync(file))
  if (atDocumentTime) {
    try {
      at = BigInt(decodeDocument(data).document.timestampMs) * 1000n
    } catch {
      at = undefined
    }
  }
  return { data, policy, at }
}

async function verdict(args) {
  const { data, policy, at } = policyOf(args)
  try {
    const result = await verifyAttestation(data, policy, at)
    return { ok: true, result }
  } catch (exc) {
    assert.ok(exc instanceof AttestationError, String(exc))
    return { ok: false, code: exc.code }
  }
}

describe('verifyAttestation gives the same verdicts', () => {
  for (const backend of ['webcrypto', 'noble']) {
    it(`every case, ECDSA by ${backend}`, async () => {
      const previous = setEcdsaBackend(backend)
      try {
        for (const expected of EXPECTED.cases) {
          const got = await verdict(expected.args)
          if (expected.output.verified) {
            assert.ok(got.ok, `${expected.name}: ${got.code}`)
            assert.equal(got.result.moduleId, expected.output.module_id)
            assert.equal(got.result.timestampMs, expected.output.timestamp_ms)
            assert.equal(got.result.simulated, expected.output.simulated)
            assert.equal(got.result.debug, expected.output.debug_mode)
            assert.deepEqual(got.result.chainSubjects, expected.output.chain_subjects)
          } else {
            assert.equal(got.code, expected.output.reason, expected.name)
          }
        }
      } finally {
        setEcdsaBackend(previous)
      }
    })
  }

  it('covers every reason the simulated cases exercise', () => {
    const reasons = new Set(EXPECTED.cases.map((c) => c.output.reason ?? 'verified'))
    for (const reason of [
      'verified',
      'debug_mode',
      'root_not_trusted',
      'pcr_mismatch',
      'nonce_mismatch',
      'public_key_mismatch',
      'user_data_mismatch',
      'cert_expired',
      'cert_not_yet_valid',
      'stale',
      'timestamp_in_future',
      'malformed:cose',
      'malformed:timestamp',
    ]) {
      assert.ok(reasons.has(reason), reason)
    }
  })
})

describe('documents and roots', () => {
  const sample = readFileSync(join(HARDWARE, 'valid', 'marlin_oyster__verifier_test_attestation.bin'))

  it('the embedded AWS root is the packaged PEM, pinned by its SHA-256', () => {
    assert.equal(AWS_NITRO_ROOT_G1_PEM, readFileSync(join(REPO, 'js', 'src', 'roots', 'aws_nitro_root_g1.pem'), 'utf8'))
    assert.equal(AWS_NITRO_ROOT_G1_PEM, readFileSync(join(REPO, 'attestation', 'roots', 'aws_nitro_root_g1.pem'), 'utf8'))
    const root = TrustedRoot.aws()
    assert.equal(root.sha256, AWS_ROOT_SHA256)
    assert.ok(root.isAws)
    assert.equal(root.label, 'AWS Nitro Enclaves root G1')
    const sim = TrustedRoot.fromPem(readFileSync(join(HERE, 'fixtures', 'simulated', 'root.pem')), 'sim')
    assert.ok(!sim.isAws)
  })

  it('reads raw, hex, 0x-hex, base64, URL-safe base64 and the JSON of GET /attestation alike', () => {
    const raw = new Uint8Array(sample)
    const b64 = Buffer.from(raw).toString('base64')
    const forms = [
      raw,
      toHex(raw),
      `0x${toHex(raw).toUpperCase()}\n`,
      b64,
      b64.replace(/=+$/, ''),
      Buffer.from(raw).toString('base64url'),
      JSON.stringify({ document: `${b64.slice(0, 50)}\n${b64.slice(50)}`, format: 'cbor' }),
    ]
    for (const form of forms) assert.deepEqual(readDocumentBytes(form), raw)
    assert.throws(() => readDocumentBytes('{"nothing": 1}'), /no base64 'document'/)
    assert.deepEqual(readDocumentBytes('not a document!'), new TextEncoder().encode('not a document!'))
  })

  it('tag 18 is accepted, other tags and trailing bytes are malformed:cose', async () => {
    const raw = new Uint8Array(sample)
    const at = decodeDocument(raw).document.timestampMs
    await verifyAttestation(Uint8Array.of(0xd2, ...raw), {}, at)
    for (const bad of [Uint8Array.of(0xd1, ...raw), Uint8Array.of(...raw, 0x00)]) {
      await assert.rejects(verifyAttestation(bad, {}, at), (e) => e.code === 'malformed:cose')
    }
  })

  it('a flipped payload or signature byte is a bad signature; a flipped algorithm is unsupported', async () => {
    const raw = new Uint8Array(sample)
    const { cose, document } = decodeDocument(raw)
    const at = document.timestampMs
    const flip = (offset) => raw.map((b, i) => (i === offset ? b ^ 1 : b))
    const pcr0 = raw.indexOf(document.pcrs.get(0)[0], raw.indexOf(0x58))
    await assert.rejects(verifyAttestation(flip(raw.length - 5), {}, at), (e) => e.code === 'bad_signature')
    await assert.rejects(verifyAttestation(flip(5), {}, at), (e) => e.code === 'unsupported_algorithm')
    await assert.rejects(verifyAttestation(flip(2), {}, at), (e) => e.code === 'malformed:protected')
    assert.ok(pcr0 > 0)
    assert.equal(sigStructure(cose.protected, cose.payload)[0], 0x84)
  })

  it('refuses documents over 16 KiB before parsing', async () => {
    await assert.rejects(verifyAttestation(new Uint8Array(16 * 1024 + 1)), (e) => e.code === 'malformed:cose')
  })

  it('imageId is keccak256(PCR0 || PCR1 || PCR2), as protocol/images.py computes it', () => {
    const data = readDocumentBytes(readFileSync(join(REPO, EXPECTED.image_id.file)))
    const { pcrs } = decodeDocument(data).document
    assert.equal(toHex(imageId(pcrs)), EXPECTED.image_id.image_id)
    assert.equal(toHex(imageId({ 0: pcrs.get(0), 1: pcrs.get(1), 2: pcrs.get(2) })), EXPECTED.image_id.image_id)
    assert.throws(() => imageId(new Map([[0, new Uint8Array(48)], [1, new Uint8Array(48)], [2, new Uint8Array(32)]])), RangeError)
    assert.throws(() => imageId(new Map([[0, new Uint8Array(48)]])), RangeError)
  })

  it('every hardware sample decodes (the invalid ones with their Python reason)', () => {
    for (const dir of ['valid', 'invalid']) {
      for (const name of readdirSync(join(HARDWARE, dir))) {
        const data = readDocumentBytes(readFileSync(join(HARDWARE, dir, name)))
        if (dir === 'valid') assert.equal(decodeDocument(data).document.digest, 'SHA384')
        else if (!name.includes('custom')) assert.throws(() => decodeDocument(data), AttestationError)
      }
    }
  })
})

describe('the command line', () => {
  const file = 'tests/fixtures/attestation/valid/marlin_oyster__verifier_test_attestation.bin'

  for (const text of EXPECTED.texts) {
    it(`prints what Python prints: ${text.args.join(' ')}`, async () => {
      const { code, out } = await run(text.args)
      assert.equal(code, text.exit)
      assert.equal(`${out}\n`, text.stdout)
    })
  }

  it('rejections exit 1, usage and I/O errors exit 2, help exits 0', async () => {
    assert.equal((await run(['verify', file])).code, 1) // now: the chain expired long ago
    for (const args of [
      ['verify'],
      ['verify', 'does/not/exist'],
      ['verify', file, '--at', 'yesterday'],
      ['verify', file, '--at', '2024-01-01', '--at-document-time'],
      ['verify', file, '--pcr', '0=xyz'],
      ['verify', file, '--pcr', 'zero=00'],
      ['verify', file, '--nonce', 'q'],
      ['verify', file, '--max-age', 'soon'],
      ['verify', file, '--root', 'does/not/exist.pem'],
      ['verify', file, '--bogus'],
      ['verify', file, file],
      ['frobnicate'],
      [],
    ]) {
      assert.equal((await run(args)).code, 2, args.join(' '))
    }
    assert.equal((await run(['verify', '--help'])).code, 0)
    assert.equal((await run(['attest', 'verify', file, '--at-doc', '--js'])).code, 0) // argparse abbreviations
  })

  it('parses ISO 8601 as datetime.fromisoformat does', () => {
    const us = (s) => parseIsoTime(s)
    assert.equal(us('1970-01-01'), 0n)
    assert.equal(us('1970-01-01T00:00:01.5Z'), 1500000n)
    assert.equal(us('1970-01-01T02:00+02:00'), 0n)
    assert.equal(us('19700101T000001'), 1000000n)
    assert.equal(us('1970-W01-4'), 0n)
    assert.equal(us('1970-01-01T24:00'), null)
    assert.equal(us('1970-1-1'), null)
    assert.equal(us('1970-01-01T00:00:00z'), null)
  })

  it('writes JSON as Python json.dumps does', () => {
    assert.equal(pyJson({ a: [1, 'é'], b: null, c: {} }), '{"a": [1, "\\u00e9"], "b": null, "c": {}}')
    assert.equal(pyJson({ a: [true] }, 2), '{\n  "a": [\n    true\n  ]\n}')
  })
})
