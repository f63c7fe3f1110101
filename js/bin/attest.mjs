// `verinfer-js attest verify|inspect`: the JavaScript twin of `verinfer attest verify|inspect`
// (attestation/cli.py), with the same options, verdicts, reason codes, exit codes and --json output.
//
// Exit codes: 0 verified (or done), 1 rejected (reason printed), 2 usage or I/O error.

import { readFileSync } from 'node:fs'
import {
  AttestationError,
  DocumentFormatError,
  TrustedRoot,
  decodeDocument,
  fromHex,
  readDocumentBytes,
  toHex,
  verifyAttestation,
} from '../src/attestation.mjs'
import { civilFromDays } from '../src/attestation/x509.mjs'

export const EXIT_OK = 0
export const EXIT_REJECTED = 1
export const EXIT_USAGE = 2

const PROG = 'verinfer-js'

class UsageError extends Error {}

/** argparse's own error: usage line plus message, exit 2. */
class ArgumentError extends Error {}

const DOCUMENT_FORMS = 'raw COSE bytes, hex, base64, or the JSON of GET /attestation'

const VERIFY_USAGE = `usage: ${PROG} attest verify [-h] [--root aws|PEM] [--pcr N=HEX]
                              [--allow-debug] [--nonce HEX]
                              [--max-age SECONDS]
                              [--at ISO8601 | --at-document-time] [--json]
                              [--public-key HEX] [--user-data HEX]
                              file`

const VERIFY_HELP = `${VERIFY_USAGE}

positional arguments:
  file                document file: raw COSE bytes, hex, base64, or the JSON
                      of GET /attestation; - for stdin

options:
  -h, --help          show this help message and exit
  --json              machine-readable output
  --public-key HEX    expected public key
  --user-data HEX     expected user data

attestation policy:
  --root aws|PEM      trusted root: 'aws' (default: the packaged AWS Nitro
                      root G1) or a PEM path (the simulator's root.pem)
  --pcr N=HEX         expected PCR value (repeatable)
  --allow-debug       accept debug-mode enclaves (all-zero PCR0-2)
  --nonce HEX         the document must carry this nonce (yours)
  --max-age SECONDS   reject documents older than this
  --at ISO8601        verification time (default: now)
  --at-document-time  verify at the document's own timestamp`

const INSPECT_USAGE = `usage: ${PROG} attest inspect [-h] [--json] file`

const INSPECT_HELP = `${INSPECT_USAGE}

positional arguments:
  file        document file: ${DOCUMENT_FORMS}; - for stdin

options:
  -h, --help  show this help message and exit
  --json      machine-readable output`

const ATTEST_HELP = `usage: ${PROG} attest [-h] {inspect,verify} ...

Inspect and verify AWS Nitro attestation documents. A document file may be
${DOCUMENT_FORMS}.

positional arguments:
  {inspect,verify}
    inspect       decode a document and show its fields (no verification)
    verify        verify a document against a pinned root and a policy

options:
  -h, --help      show this help message and exit`

// ---- output: Python's print() and json.dumps ----

function pyString(s) {
  let out = '"'
  for (const ch of s) {
    const cp = ch.codePointAt(0)
    if (ch === '"') out += '\\"'
    else if (ch === '\\') out += '\\\\'
    else if (ch === '\n') out += '\\n'
    else if (ch === '\r') out += '\\r'
    else if (ch === '\t') out += '\\t'
    else if (ch === '\b') out += '\\b'
    else if (ch === '\f') out += '\\f'
    else if (cp < 0x20 || cp > 0x7e) {
      // ensure_ascii: \uXXXX, astral characters as a surrogate pair (0x7f stays as it is)
      if (cp === 0x7f) out += ch
      else for (const unit of ch.length === 2 ? [ch.charCodeAt(0), ch.charCodeAt(1)] : [cp]) out += `\\u${unit.toString(16).padStart(4, '0')}`
    } else out += ch
  }
  return `${out}"`
}

/** json.dumps(value) (indent null: one line, ", " and ": ") or json.dumps(value, indent=2). */
export function pyJson(value, indent = null, level = 0) {
  if (value === null || value === undefined) return 'null'
  if (value === true) return 'true'
  if (value === false) return 'false'
  if (typeof value === 'number' || typeof value === 'bigint') return String(value)
  if (typeof value === 'string') return pyString(value)
  const isArray = Array.isArray(value)
  const items = isArray ? value.map((v) => pyJson(v, indent, level + 1)) : Object.entries(value).map(([k, v]) => `${pyString(k)}: ${pyJson(v, indent, level + 1)}`)
  const [open, close] = isArray ? ['[', ']'] : ['{', '}']
  if (items.length === 0) return open + close
  if (indent === null) return open + items.join(', ') + close
  const pad = ' '.repeat(indent * (level + 1))
  return `${open}\n${pad}${items.join(`,\n${pad}`)}\n${' '.repeat(indent * level)}${close}`
}

// ---- argument parsing (argparse's rules, for the options these commands have) ----

const NEGATIVE_NUMBER = /^-\d+$|^-\d*\.\d+$/

function parseArgs(argv, spec) {
  const values = { positional: [] }
  for (const [name, kind] of Object.entries(spec.options)) values[name] = kind === 'append' ? [] : kind === 'flag' ? false : null
  const longNames = Object.keys(spec.options)
  let onlyPositional = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (onlyPositional || arg === '-' || !arg.startsWith('-') || NEGATIVE_NUMBER.test(arg)) {
      values.positional.push(arg)
      continue
    }
    if (arg === '--') {
      onlyPositional = true
      continue
    }
    if (arg === '-h') return { help: true }
    if (!arg.startsWith('--')) throw new ArgumentError(`unrecognized arguments: ${arg}`)
    const eq = arg.indexOf('=')
    const given = eq >= 0 ? arg.slice(0, eq) : arg
    const allNames = [...longNames, 'help']
    let name = allNames.find((n) => `--${n}` === given)
    if (!name) {
      const matches = allNames.filter((n) => `--${n}`.startsWith(given))
      if (matches.length > 1) {
        throw new ArgumentError(`ambiguous option: ${given} could match ${matches.map((n) => `--${n}`).join(', ')}`)
      }
      if (matches.length === 0) throw new ArgumentError(`unrecognized arguments: ${arg}`)
      name = matches[0]
    }
    if (name === 'help') return { help: true }
    const kind = spec.options[name]
    if (kind === 'flag') {
      if (eq >= 0) throw new ArgumentError(`argument --${name}: ignored explicit argument '${arg.slice(eq + 1)}'`)
      values[name] = true
    } else {
      let value
      if (eq >= 0) {
        value = arg.slice(eq + 1)
      } else {
        const next = argv[i + 1]
        if (next === undefined || (next.startsWith('-') && next !== '-' && !NEGATIVE_NUMBER.test(next))) {
          throw new ArgumentError(`argument --${name}: expected one argument`)
        }
        value = next
        i += 1
      }
      if (kind === 'append') values[name].push(value)
      else values[name] = value
    }
    for (const [a, b] of spec.exclusive ?? []) {
      if ((name === a && values[b] !== null && values[b] !== false) || (name === b && values[a] !== null && values[a] !== false)) {
        throw new ArgumentError(`argument --${name}: not allowed with argument --${name === a ? b : a}`)
      }
    }
  }
  if (values.positional.length === 0) throw new ArgumentError('the following arguments are required: file')
  if (values.positional.length > 1) throw new ArgumentError(`unrecognized arguments: ${values.positional.slice(1).join(' ')}`)
  values.file = values.positional[0]
  return values
}

/** Python's float() of a command-line string. */
function pyFloat(text) {
  const t = text.trim().toLowerCase()
  if (/^[+-]?(inf|infinity)$/.test(t)) return t.startsWith('-') ? -Infinity : Infinity
  if (/^[+-]?nan$/.test(t)) return Number.NaN
  const digits = '\\d(?:_?\\d)*'
  const re = new RegExp(`^[+-]?(?:${digits}(?:\\.(?:${digits})?)?|\\.${digits})(?:e[+-]?${digits})?$`)
  if (!re.test(t)) return null
  return Number(t.replaceAll('_', ''))
}

// ---- times: datetime.fromisoformat (Python 3.11) and the UTC ISO form of a timestamp ----

function daysFromCivil(y, m, d) {
  y -= m <= 2 ? 1 : 0
  const era = Math.floor(y / 400)
  const yoe = y - era * 400
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy - 719468
}

function daysInMonth(y, m) {
  const leap = (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0
  return [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m - 1]
}

function isoWeekDate(year, week, day) {
  const jan4 = daysFromCivil(year, 1, 4)
  const weekday = (((jan4 + 3) % 7) + 7) % 7 // Monday 0 (1970-01-01 was a Thursday)
  const week1Monday = jan4 - weekday
  const dec28 = daysFromCivil(year, 12, 28)
  const lastWeek = Math.floor((dec28 - week1Monday) / 7) + 1
  if (week < 1 || week > lastWeek || day < 1 || day > 7) return null
  return week1Monday + (week - 1) * 7 + (day - 1)
}

function parseTimeFields(text) {
  // HH[:MM[:SS[.f+]]] or HHMM[SS[.f+]], fraction separator . or ,
  const m = /^(\d{2})(?:(:?)(\d{2})(?:\2(\d{2})(?:[.,](\d+))?)?)?$/.exec(text)
  if (!m) return null
  const [, hh, , mm = '0', ss = '0', frac = ''] = m
  const h = Number(hh)
  const mi = Number(mm)
  const s = Number(ss)
  if (h > 23 || mi > 59 || s > 59) return null
  const us = Number(frac.slice(0, 6).padEnd(6, '0'))
  return BigInt(h * 3600 + mi * 60 + s) * 1000000n + BigInt(us)
}

/** Microseconds since the epoch of an ISO 8601 string, as datetime.fromisoformat reads it (naive = UTC). */
export function parseIsoTime(text) {
  let days = null
  let rest = ''
  const tries = [
    [/^(\d{4})-(\d{2})-(\d{2})/, 'cal'],
    [/^(\d{4})-W(\d{2})-(\d)/, 'week'],
    [/^(\d{4})-W(\d{2})/, 'week'],
    [/^(\d{4})W(\d{2})(\d)/, 'week'],
    [/^(\d{4})W(\d{2})/, 'week'],
    [/^(\d{4})(\d{2})(\d{2})/, 'cal'],
  ]
  for (const [re, kind] of tries) {
    const m = re.exec(text)
    if (!m) continue
    const year = Number(m[1])
    if (year < 1) return null
    if (kind === 'cal') {
      const month = Number(m[2])
      const day = Number(m[3])
      if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return null
      days = daysFromCivil(year, month, day)
    } else {
      days = isoWeekDate(year, Number(m[2]), m[3] === undefined ? 1 : Number(m[3]))
      if (days === null) return null
    }
    rest = text.slice(m[0].length)
    break
  }
  if (days === null) return null
  let us = BigInt(days) * 86400000000n
  if (rest === '') return us
  rest = [...rest].slice(1).join('') // any single character separates date and time
  const tz = /([Zz]|[+-].*)$/.exec(rest)
  let timePart = rest
  let offsetUs = 0n
  if (tz && rest.indexOf(tz[0]) > 0) {
    timePart = rest.slice(0, rest.length - tz[0].length)
    if (tz[0] === 'Z') {
      offsetUs = 0n
    } else if (tz[0] === 'z') {
      return null
    } else {
      const off = parseTimeFields(tz[0].slice(1))
      if (off === null || off >= 86400000000n) return null
      offsetUs = tz[0][0] === '-' ? -off : off
    }
  }
  const t = parseTimeFields(timePart)
  if (t === null) return null
  us += t - offsetUs
  return us
}

function isoFromMillis(ms) {
  const days = Math.floor(ms / 86400000)
  const rest = ms - days * 86400000
  const [y, m, d] = civilFromDays(days)
  const pad = (n, w = 2) => String(n).padStart(w, '0')
  const seconds = Math.floor(rest / 1000)
  const millis = rest % 1000
  const frac = millis ? `.${pad(millis * 1000, 6)}` : ''
  return `${pad(y, 4)}-${pad(m)}-${pad(d)}T${pad(Math.floor(seconds / 3600))}:${pad(Math.floor((seconds % 3600) / 60))}:${pad(seconds % 60)}${frac}+00:00`
}

// The last millisecond datetime can hold (9999-12-31T23:59:59.999).
const MAX_DATETIME_MS = 253402300799999

function timestampText(ms) {
  return typeof ms === 'number' && ms <= MAX_DATETIME_MS ? isoFromMillis(ms) : null
}

// ---- the commands ----

function hexArg(text, what) {
  try {
    return fromHex(text)
  } catch {
    throw new UsageError(`${what} must be hex: '${text}'`)
  }
}

function pcrArgs(items) {
  const pcrs = new Map()
  for (const item of items) {
    const eq = item.indexOf('=')
    const index = eq >= 0 ? item.slice(0, eq) : item
    if (eq < 0 || !/^[0-9]+$/.test(index)) throw new UsageError(`--pcr takes N=HEX, got '${item}'`)
    pcrs.set(Number(BigInt(index)), hexArg(item.slice(eq + 1), `PCR${index}`))
  }
  return pcrs
}

/** str(Path(spec)) for the root label, as Python shows it. */
function pathLabel(spec) {
  const lead = spec.startsWith('//') && !spec.startsWith('///') ? '//' : spec.startsWith('/') ? '/' : ''
  const parts = spec.split('/').filter((p) => p !== '' && p !== '.')
  const body = parts.join('/')
  return lead + body || '.'
}

function rootArg(value) {
  if (!value || value === 'aws') return TrustedRoot.aws()
  let pem
  try {
    pem = readFileSync(value)
  } catch (exc) {
    throw new UsageError(`cannot load root '${value}': ${exc.message}`)
  }
  try {
    return TrustedRoot.fromPem(pem, pathLabel(value))
  } catch (exc) {
    throw new UsageError(`cannot load root '${value}': ${exc.message}`)
  }
}

function readDocument(path) {
  let raw
  try {
    raw = new Uint8Array(readFileSync(path === '-' ? 0 : path))
  } catch (exc) {
    throw new UsageError(`cannot read ${path}: ${exc.message}`)
  }
  try {
    return readDocumentBytes(raw)
  } catch (exc) {
    if (exc instanceof DocumentFormatError) throw new UsageError(`${path}: ${exc.message}`)
    throw exc
  }
}

function verificationTime(args, data) {
  if (args['at-document-time']) {
    let ms
    try {
      ms = decodeDocument(data).document.timestampMs
    } catch (exc) {
      if (exc instanceof AttestationError) return undefined // verification reports the decoding error
      throw exc
    }
    if (typeof ms !== 'number' || ms > MAX_DATETIME_MS) {
      throw new UsageError(`the document's timestamp (${ms} ms) is past year 9999: give --at`)
    }
    return BigInt(ms) * 1000n
  }
  if (args.at) {
    const us = parseIsoTime(args.at)
    if (us === null) throw new UsageError(`--at must be ISO 8601: '${args.at}'`)
    return us
  }
  return undefined
}

const AWS_ORIGIN = 'AWS Nitro hardware (cabundle[0] is the AWS Nitro root G1)'
const OTHER_ORIGIN = 'SIMULATED or unknown PKI (cabundle[0] is NOT the AWS Nitro root)'

const hexOrNull = (v) => (v === null ? null : toHex(v))

function sortedPcrs(pcrs) {
  return Object.fromEntries([...pcrs.entries()].sort((a, b) => a[0] - b[0]).map(([i, v]) => [String(i), toHex(v)]))
}

function documentSummary(doc) {
  const aws = TrustedRoot.aws().der
  const first = doc.cabundle[0]
  const fromAws = first.length === aws.length && first.every((b, i) => b === aws[i])
  return {
    module_id: doc.moduleId,
    timestamp_ms: doc.timestampMs,
    timestamp: timestampText(doc.timestampMs),
    digest: doc.digest,
    pcrs: sortedPcrs(doc.pcrs),
    debug_mode: doc.isDebug,
    public_key: hexOrNull(doc.publicKey),
    user_data: hexOrNull(doc.userData),
    nonce: hexOrNull(doc.nonce),
    cabundle_length: doc.cabundle.length,
    origin: fromAws ? AWS_ORIGIN : OTHER_ORIGIN,
    simulated: !fromAws,
  }
}

function printSummary(out, summary) {
  if (summary.simulated) out.push('*** SIMULATED: not produced by AWS Nitro hardware ***')
  out.push(`origin:     ${summary.origin}`)
  out.push(`module_id:  ${summary.module_id}`)
  out.push(`timestamp:  ${summary.timestamp ?? 'OUT OF RANGE (past year 9999)'} (${summary.timestamp_ms} ms)`)
  out.push(`debug mode: ${summary.debug_mode ? 'yes (PCR0-2 all zero)' : 'no'}`)
  for (const [index, value] of Object.entries(summary.pcrs)) {
    if (Number(index) < 3 || /[^0]/.test(value)) out.push(`PCR${index.padEnd(2)}      ${value}`)
  }
  for (const name of ['public_key', 'user_data', 'nonce']) {
    const value = summary[name]
    out.push(`${`${name}:`.padEnd(11)} ${value === null ? '(none)' : value}`)
  }
}

async function cmdVerify(args, io) {
  let maxAgeS = null
  if (args['max-age'] !== null) {
    maxAgeS = pyFloat(args['max-age'])
    if (maxAgeS === null) throw new ArgumentError(`argument --max-age: invalid float value: '${args['max-age']}'`)
  }
  const data = readDocument(args.file)
  const expectedPublicKey = args['public-key'] ? hexArg(args['public-key'], '--public-key') : null
  const expectedUserData = args['user-data'] ? hexArg(args['user-data'], '--user-data') : null
  const root = rootArg(args.root)
  const expectedPcrs = pcrArgs(args.pcr)
  const expectedNonce = args.nonce ? hexArg(args.nonce, '--nonce') : null
  const policy = { root, expectedPcrs, maxAgeS, expectedNonce, expectedPublicKey, expectedUserData, allowDebug: args['allow-debug'] }
  const at = verificationTime(args, data)
  let result
  try {
    result = await verifyAttestation(data, policy, at)
  } catch (exc) {
    if (!(exc instanceof AttestationError)) throw exc
    if (args.json) io.out(pyJson({ verified: false, reason: exc.code, detail: exc.detail }))
    else io.out(`REJECTED ${exc.code}: ${exc.detail}`)
    return EXIT_REJECTED
  }
  const report = {
    verified: true,
    simulated: result.simulated,
    root: result.rootLabel,
    module_id: result.moduleId,
    timestamp_ms: result.timestampMs,
    debug_mode: result.debug,
    pcrs: sortedPcrs(result.pcrs),
    public_key: hexOrNull(result.publicKey),
    user_data: hexOrNull(result.userData),
    nonce: hexOrNull(result.nonce),
    chain_subjects: result.chainSubjects,
  }
  if (args.json) {
    io.out(pyJson(report, 2))
  } else {
    const lines = [`VERIFIED against ${result.rootLabel}${result.simulated ? ' [SIMULATED]' : ''}`]
    printSummary(lines, documentSummary(decodeDocument(data).document))
    lines.push(`chain:      ${result.chainSubjects.join('\n            ')}`)
    io.out(lines.join('\n'))
  }
  return EXIT_OK
}

function cmdInspect(args, io) {
  let doc
  try {
    doc = decodeDocument(readDocument(args.file)).document
  } catch (exc) {
    if (!(exc instanceof AttestationError)) throw exc
    io.err(`REJECTED ${exc.code}: ${exc.detail}`)
    return EXIT_REJECTED
  }
  const summary = documentSummary(doc)
  if (args.json) {
    io.out(pyJson(summary, 2))
  } else {
    const lines = []
    printSummary(lines, summary)
    io.out(lines.join('\n'))
  }
  return EXIT_OK
}

const VERIFY_SPEC = {
  options: {
    root: 'value',
    pcr: 'append',
    'allow-debug': 'flag',
    nonce: 'value',
    'max-age': 'value',
    at: 'value',
    'at-document-time': 'flag',
    json: 'flag',
    'public-key': 'value',
    'user-data': 'value',
  },
  exclusive: [['at', 'at-document-time']],
}
const INSPECT_SPEC = { options: { json: 'flag' } }

/**
 * Run `attest <subcommand> ...`. `argv` is what follows `attest` on the command line (a leading 'attest' is
 * skipped too). Resolves to the exit code; output goes to process.stdout / process.stderr unless `io`
 * ({ out(line), err(line) }) is given.
 */
export async function attestCommand(argv, io = undefined) {
  const sink = io ?? {
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
  }
  let args = [...argv]
  if (args[0] === 'attest') args = args.slice(1)
  const [sub, ...rest] = args
  if (sub === undefined) {
    sink.out(ATTEST_HELP)
    return EXIT_USAGE
  }
  if (sub === '-h' || sub === '--help') {
    sink.out(ATTEST_HELP)
    return EXIT_OK
  }
  const commands = {
    verify: [VERIFY_SPEC, VERIFY_USAGE, VERIFY_HELP, cmdVerify],
    inspect: [INSPECT_SPEC, INSPECT_USAGE, INSPECT_HELP, cmdInspect],
  }
  if (!(sub in commands)) {
    sink.err(`usage: ${PROG} attest [-h] {inspect,verify} ...`)
    sink.err(`${PROG} attest: error: argument attest_command: invalid choice: '${sub}' (choose from inspect, verify)`)
    return EXIT_USAGE
  }
  const [spec, usage, help, run] = commands[sub]
  try {
    const parsed = parseArgs(rest, spec)
    if (parsed.help) {
      sink.out(help)
      return EXIT_OK
    }
    return await run(parsed, sink)
  } catch (exc) {
    if (exc instanceof ArgumentError) {
      sink.err(usage)
      sink.err(`${PROG} attest ${sub}: error: ${exc.message}`)
      return EXIT_USAGE
    }
    if (exc instanceof UsageError) {
      sink.err(`${PROG}: error: ${exc.message}`)
      return EXIT_USAGE
    }
    throw exc
  }
}

// Run directly: `node js/bin/attest.mjs verify FILE ...` (the package's command is bin/verinfer-js.mjs).
if (import.meta.url === `file://${process.argv[1]}`) {
  process.exitCode = await attestCommand(process.argv.slice(2))
}
