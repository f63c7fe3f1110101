// Differential runner for tests/test_js_attestation_differential.py: verifies every document of a directory
// with the JavaScript verifier and prints one JSON list of { file, ok, code } on stdout.
//
//   node js/test/differential_attest.mjs DIR
//
// DIR/manifest.json (written by the Python test) says, per file, which root to pin ("aws" or a PEM file in
// DIR), the verification time in microseconds since the epoch and the policy. Without a manifest every file
// in DIR (in any form `verinfer attest verify` reads) is verified against the AWS root at its own timestamp. Run with no argument (as `node --test test/`
// does), it does nothing.

import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import {
  AttestationError,
  TrustedRoot,
  decodeDocument,
  fromHex,
  readDocumentBytes,
  verifyAttestation,
} from '../src/attestation.mjs'

async function main(dir) {
  const manifestPath = join(dir, 'manifest.json')
  const listed = existsSync(manifestPath)
  const manifest = listed
    ? JSON.parse(readFileSync(manifestPath, 'utf8'))
    : { cases: readdirSync(dir).sort().map((file) => ({ file, root: 'aws' })) }
  const roots = new Map([['aws', TrustedRoot.aws()]])
  const rootFor = (name) => {
    if (!roots.has(name)) roots.set(name, TrustedRoot.fromPem(readFileSync(join(dir, name)), join(dir, name)))
    return roots.get(name)
  }
  const results = []
  for (const c of manifest.cases) {
    // Listed files are raw COSE bytes, verified as they are (as Python's verify() takes them); a bare
    // directory may hold any form `verinfer attest verify` reads.
    const raw = new Uint8Array(readFileSync(join(dir, c.file)))
    const data = listed ? raw : readDocumentBytes(raw)
    const p = c.policy ?? {}
    const policy = {
      root: rootFor(c.root ?? 'aws'),
      expectedPcrs: new Map(Object.entries(p.pcrs ?? {}).map(([i, v]) => [Number(i), fromHex(v)])),
      maxAgeS: p.max_age_s ?? null,
      expectedNonce: p.nonce == null ? null : fromHex(p.nonce),
      expectedPublicKey: p.public_key == null ? null : fromHex(p.public_key),
      expectedUserData: p.user_data == null ? null : fromHex(p.user_data),
      allowDebug: Boolean(p.allow_debug),
    }
    let at
    if (c.at_us !== undefined) {
      at = BigInt(c.at_us)
    } else {
      try {
        at = BigInt(decodeDocument(data).document.timestampMs) * 1000n
      } catch {
        at = undefined
      }
    }
    try {
      await verifyAttestation(data, policy, at)
      results.push({ file: c.file, ok: true, code: null })
    } catch (exc) {
      if (!(exc instanceof AttestationError)) {
        results.push({ file: c.file, ok: false, code: `crash:${exc?.name}:${exc?.message}` })
      } else {
        results.push({ file: c.file, ok: false, code: exc.code })
      }
    }
  }
  process.stdout.write(`${JSON.stringify(results)}\n`)
}

if (process.argv[2]) await main(process.argv[2])
