// `verinfer-js verify`: the Python `verinfer verify` command (verinfer/verify_cli.py) in JavaScript, with
// the same options, verdicts, check names, --json output and exit codes (0 VERIFIED, 1 REJECTED or
// UNPINNED, 2 usage or I/O error). Node only (it reads files); the library is src/index.mjs.
import { readFileSync } from "node:fs";
import * as attestation from "./attestation.mjs";
import { base64Decode, fromHexPy } from "./bytes.mjs";
import { JsonError, get, parseJson, pyJsonDumps, pyRepr } from "./json.mjs";
import { isCompletion, isSse, UnexpectedInput } from "./llm.mjs";
import { ManifestError, parseManifest } from "./manifest.mjs";
import { dirname, parseImageId, parsePolicyFile, verifyCompletion, verifyInference } from "./receipts.mjs";
import { pyFloatOfString } from "./tensors.mjs";

export const EXIT_OK = 0;
export const EXIT_REJECTED = 1;
export const EXIT_USAGE = 2;

export class UsageError extends Error {
  constructor(message) {
    super(message);
    this.name = "UsageError";
  }
}

// --- argparse, as far as `verinfer verify` uses it ---

const OPTIONS = [
  { flag: "--attestation", dest: "attestation", value: true, required: true },
  { flag: "--request", dest: "request", value: true },
  { flag: "--manifest", dest: "manifest", value: true },
  { flag: "--model", dest: "model", value: true },
  { flag: "--salt", dest: "salt", value: true },
  { flag: "--image-id", dest: "imageId", value: true, append: true },
  { flag: "--policy", dest: "policy", value: true },
  { flag: "--allow-any-image", dest: "allowAnyImage" },
  { flag: "--root", dest: "root", value: true },
  { flag: "--pcr", dest: "pcr", value: true, append: true },
  { flag: "--allow-debug", dest: "allowDebug" },
  { flag: "--nonce", dest: "nonce", value: true },
  { flag: "--max-age", dest: "maxAge", value: true, float: true },
  { flag: "--at", dest: "at", value: true, group: "when" },
  { flag: "--at-document-time", dest: "atDocumentTime", group: "when" },
  { flag: "--json", dest: "json" },
  { flag: "--help", dest: "help" },
];

export const USAGE =
  "usage: verinfer-js verify [-h] --attestation FILE [--request FILE] [--manifest FILE] [--model NAME]\n" +
  "                          [--salt 0xHEX] [--image-id 0xHEX] [--policy FILE] [--allow-any-image]\n" +
  "                          [--root aws|PEM] [--pcr N=HEX] [--allow-debug] [--nonce HEX]\n" +
  "                          [--max-age SECONDS] [--at ISO8601 | --at-document-time] [--json]\n" +
  "                          response\n";

export const HELP = `${USAGE}
Verify an inference offline: the attestation chains to the pinned root and matches the pinned image, it
binds the key that signed the receipt, the signature recovers, outputHash and inputHash recompute, the
answer is from the model the request names ("model", or --model NAME for a V2 request) and the receipt's
modelHash is that model's sha256 in the attested manifest, and the receipt's requestId is the request's
request_id when the request sets one. A /v1 completion (JSON, or the SSE transcript of a stream) is
checked against the exact request bytes (--request).

The verdict is VERIFIED only when no check fails AND the image is pinned, by PCR0, PCR1 and PCR2 together
(--pcr), by --image-id, or by a --policy file. Without a pin it is UNPINNED (exit 1); --allow-any-image
accepts any image and says so.

Exit codes: 0 VERIFIED, 1 REJECTED or UNPINNED, 2 usage or I/O error.

Policy file (--policy FILE), JSON, every key optional, unknown keys rejected:
  {"root": "aws" or a PEM path (relative to the policy file), "pcrs": {"0": "HEX", ...},
   "image_ids": ["0xHEX"], "allow_debug": false, "max_age_s": 600}
Options given on the command line win over the file's.
`;

class ArgumentError extends Error {}

function looksNegative(arg) {
  return /^-\d+$|^-\d*\.\d+$/.test(arg);
}

/** The options of `verify` parsed as argparse does (unique prefixes, --opt=value, one positional). */
export function parseVerifyArgs(argv) {
  const args = { imageId: [], pcr: [], allowAnyImage: false, allowDebug: false, atDocumentTime: false, json: false };
  const positionals = [];
  const groups = new Map();
  let onlyPositionals = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (onlyPositionals || !arg.startsWith("-") || arg === "-" || looksNegative(arg)) {
      positionals.push(arg);
      continue;
    }
    if (arg === "--") {
      onlyPositionals = true;
      continue;
    }
    if (arg === "-h") {
      args.help = true;
      continue;
    }
    if (!arg.startsWith("--")) throw new ArgumentError(`unrecognized arguments: ${arg}`);
    const [name, inline] = arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, null];
    let option = OPTIONS.find((o) => o.flag === name);
    if (!option) {
      const matches = OPTIONS.filter((o) => o.flag.startsWith(name));
      if (matches.length > 1) {
        throw new ArgumentError(`ambiguous option: ${name} could match ${matches.map((o) => o.flag).join(", ")}`);
      }
      if (!matches.length) throw new ArgumentError(`unrecognized arguments: ${arg}`);
      option = matches[0];
    }
    if (option.group) {
      const other = groups.get(option.group);
      if (other && other !== option.flag) {
        throw new ArgumentError(`argument ${option.flag}: not allowed with argument ${other}`);
      }
      groups.set(option.group, option.flag);
    }
    let value = true;
    if (option.value) {
      if (inline !== null) value = inline;
      else {
        const next = argv[i + 1];
        if (next === undefined || (next.startsWith("-") && next !== "-" && !looksNegative(next))) {
          throw new ArgumentError(`argument ${option.flag}: expected one argument`);
        }
        value = next;
        i++;
      }
      if (option.float) {
        const number = pyFloatOfString(value);
        if (number === null) throw new ArgumentError(`argument ${option.flag}: invalid float value: ${pyRepr(value)}`);
        value = number;
      }
    } else if (inline !== null) {
      throw new ArgumentError(`argument ${option.flag}: ignored explicit argument ${pyRepr(inline)}`);
    }
    if (option.append) args[option.dest].push(value);
    else args[option.dest] = value;
  }
  if (args.help) return args;
  const missing = [];
  if (!positionals.length) missing.push("response");
  if (args.attestation === undefined) missing.push("--attestation");
  if (missing.length) throw new ArgumentError(`the following arguments are required: ${missing.join(", ")}`);
  if (positionals.length > 1) throw new ArgumentError(`unrecognized arguments: ${positionals.slice(1).join(" ")}`);
  args.response = positionals[0];
  return args;
}

// --- the attestation half's policy, root and document ---

function hexArg(text, what) {
  const raw = fromHexPy(text);
  if (raw === null) throw new UsageError(`${what} must be hex: ${pyRepr(text)}`);
  return raw;
}

function pcrArgs(items) {
  const pcrs = new Map();
  for (const item of items) {
    const at = item.indexOf("=");
    const index = at < 0 ? "" : item.slice(0, at);
    if (at < 0 || !/^[0-9]+$/.test(index)) throw new UsageError(`--pcr takes N=HEX, got ${pyRepr(item)}`);
    pcrs.set(Number(index), hexArg(item.slice(at + 1), `PCR${index}`));
  }
  return pcrs;
}

function rootArg(value, io) {
  const spec = value || "aws";
  try {
    if (spec === "aws") return attestation.TrustedRoot.aws();
    return attestation.TrustedRoot.fromPem(io.read(spec), spec);
  } catch (error) {
    throw new UsageError(`cannot load root ${pyRepr(spec)}: ${error.message}`);
  }
}

function makePolicy(fields) {
  return typeof attestation.Policy === "function" ? new attestation.Policy(fields) : fields;
}

function pinning(args, io) {
  let pinned = { root: null, pcrs: new Map(), imageIds: [], allowDebug: false, maxAgeS: null };
  let flagImages;
  try {
    if (args.policy) {
      let data;
      try {
        data = parseJson(io.read(args.policy));
      } catch (error) {
        if (error instanceof JsonError) throw new Error(`policy ${args.policy} is not JSON: ${error.message}`);
        throw error;
      }
      pinned = parsePolicyFile(data, dirname(args.policy));
    }
    flagImages = args.imageId.map(parseImageId);
  } catch (error) {
    throw new UsageError(error.message);
  }
  const root = rootArg(args.root || pinned.root, io);
  const expectedPcrs = new Map([...pinned.pcrs, ...pcrArgs(args.pcr)]);
  const policy = makePolicy({
    root,
    expectedPcrs,
    maxAgeS: args.maxAge !== undefined ? args.maxAge : pinned.maxAgeS,
    expectedNonce: args.nonce ? hexArg(args.nonce, "--nonce") : null,
    allowDebug: args.allowDebug || pinned.allowDebug,
  });
  return [policy, flagImages.length ? flagImages : pinned.imageIds];
}

const ISO = new RegExp(
  "^(\\d{4})-?(\\d{2})-?(\\d{2})" +
    "(?:.(\\d{2})(?::?(\\d{2})(?::?(\\d{2})(?:[.,](\\d{1,6})\\d*)?)?)?" +
    "(Z|[+-]\\d{2}(?::?\\d{2}(?::?\\d{2}(?:\\.\\d{1,6})?)?)?)?)?$",
  "u",
);

/** Python 3.11's datetime.fromisoformat (common forms), naive times read as UTC; a Date, or null. */
export function parseIsoTime(text) {
  const m = ISO.exec(text);
  if (!m) return null;
  const [, y, mo, d, h = "0", mi = "0", s = "0", frac = "", zone = "Z"] = m;
  const ms = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), Number(frac.padEnd(3, "0").slice(0, 3)));
  const check = new Date(ms);
  if (
    Number.isNaN(ms) ||
    check.getUTCFullYear() !== Number(y) ||
    check.getUTCMonth() !== Number(mo) - 1 ||
    check.getUTCDate() !== Number(d) ||
    Number(h) > 23 ||
    Number(mi) > 59 ||
    Number(s) > 59
  ) {
    return null;
  }
  let offset = 0;
  if (zone !== "Z") {
    const z = /^([+-])(\d{2}):?(\d{2})?:?(\d{2})?/.exec(zone);
    offset = (z[1] === "-" ? -1 : 1) * ((Number(z[2]) * 60 + Number(z[3] ?? 0)) * 60 + Number(z[4] ?? 0)) * 1000;
  }
  return new Date(ms - offset);
}

const LAST_MS = 253402300800000; // Python's datetime ends with year 9999

function verificationTime(args, document) {
  if (args.atDocumentTime) {
    let timestampMs;
    try {
      const decoded = attestation.decodeDocument(document);
      const doc = decoded?.document ?? decoded;
      timestampMs = Number(doc.timestampMs ?? doc.timestamp_ms);
    } catch {
      return null; // verification reports the decoding error with its reason
    }
    if (!(timestampMs < LAST_MS)) {
      throw new UsageError(`the document's timestamp (${timestampMs} ms) is past year 9999: give --at`);
    }
    return new Date(timestampMs);
  }
  if (args.at) {
    const when = parseIsoTime(args.at);
    if (when === null) throw new UsageError(`--at must be ISO 8601: ${pyRepr(args.at)}`);
    return when;
  }
  return null;
}

// --- the command ---

function reader(cwd) {
  return {
    read(path) {
      const full = path.startsWith("/") || !cwd ? path : `${cwd}/${path}`;
      return new Uint8Array(readFileSync(full));
    },
  };
}

function readBytes(io, path, what) {
  try {
    return io.read(path);
  } catch (error) {
    throw new UsageError(`cannot read ${what} ${path}: ${error.message}`);
  }
}

function loads(raw, path, what) {
  try {
    return parseJson(raw);
  } catch (error) {
    throw new UsageError(`cannot read ${what} ${path}: ${error.message}`);
  }
}

function evidence(args, io) {
  let document;
  let manifest = null;
  try {
    document = attestation.readDocumentBytes(readBytes(io, args.attestation, "attestation"));
    if (args.manifest) manifest = parseManifest(loads(readBytes(io, args.manifest, "manifest"), args.manifest, "manifest"));
  } catch (error) {
    if (error instanceof UsageError) throw error;
    if (error instanceof ManifestError || error instanceof JsonError || error instanceof attestation.DocumentFormatError) {
      throw new UsageError(error.message);
    }
    throw error;
  }
  return [document, manifest];
}

function saltArg(args) {
  if (args.salt === undefined) return null;
  const salt = fromHexPy(args.salt);
  if (salt === null) throw new UsageError(`--salt is not hex: non-hexadecimal number found in fromhex() arg`);
  if (salt.length !== 32) throw new UsageError("--salt is 32 bytes (64 hex digits)");
  return salt;
}

function keyConfigsArg(args, io) {
  const raw = readBytes(io, args.attestation, "attestation");
  let start = 0;
  while (start < raw.length && [0x20, 0x09, 0x0a, 0x0d, 0x0b, 0x0c].includes(raw[start])) start++;
  if (raw[start] !== 0x7b) return null;
  const value = get(loads(raw, args.attestation, "attestation"), "ohttpKeys");
  if (typeof value !== "string") return null;
  try {
    return base64Decode(value);
  } catch (error) {
    throw new UsageError(`ohttpKeys in ${args.attestation} is not base64: ${error.message}`);
  }
}

/** Report lines, as the Python command prints them. */
export function formatReport(report, json) {
  if (json) return pyJsonDumps(report.toJson(), { indent: 2 }) + "\n";
  const lines = report.checks.map((c) => `[${c.status.toUpperCase().padStart(7)}] ${c.name.padEnd(12)} ${c.detail}`);
  lines.push(report.verdictLine);
  return lines.join("\n") + "\n";
}

async function verifyReport(args, io) {
  const rawResponse = readBytes(io, args.response, "response");
  const sse = isSse(rawResponse);
  const response = sse ? undefined : loads(rawResponse, args.response, "response");
  if (sse || isCompletion(response)) {
    const request = args.request ? readBytes(io, args.request, "request") : null;
    const [document, manifest] = evidence(args, io);
    const [policy, imageIds] = pinning(args, io);
    return verifyCompletion(request, rawResponse, document, {
      policy,
      at: verificationTime(args, document),
      manifest,
      imageIds,
      allowAnyImage: args.allowAnyImage,
      salt: saltArg(args),
      keyConfigs: keyConfigsArg(args, io),
    });
  }
  const request = args.request ? loads(readBytes(io, args.request, "request"), args.request, "request") : null;
  const [document, manifest] = evidence(args, io);
  const [policy, imageIds] = pinning(args, io);
  return verifyInference(response, document, {
    policy,
    at: verificationTime(args, document),
    request,
    manifest,
    model: args.model ?? null,
    imageIds,
    allowAnyImage: args.allowAnyImage,
    salt: saltArg(args),
    keyConfigs: keyConfigsArg(args, io),
  });
}

/**
 * Run `verify` with `argv` (the arguments after "verify"): {code, stdout, stderr}, nothing printed.
 * `cwd` resolves relative paths (default: the process's); `io` ({read(path) -> Uint8Array}) replaces the
 * file system. Where the Python command would crash on its input, this throws (UnexpectedInput).
 */
export async function runVerify(argv, { cwd = null, io = null } = {}) {
  let args;
  try {
    args = parseVerifyArgs(argv);
  } catch (error) {
    if (!(error instanceof ArgumentError)) throw error;
    return { code: EXIT_USAGE, stdout: "", stderr: `${USAGE}verinfer-js verify: error: ${error.message}\n` };
  }
  if (args.help) return { code: EXIT_OK, stdout: HELP, stderr: "" };
  io ??= reader(cwd);
  try {
    const report = await verifyReport(args, io);
    return { code: report.verified ? EXIT_OK : EXIT_REJECTED, stdout: formatReport(report, args.json), stderr: "", report };
  } catch (error) {
    if (error instanceof UsageError) return { code: EXIT_USAGE, stdout: "", stderr: `verinfer-js: error: ${error.message}\n` };
    throw error;
  }
}

/** The command line entry: prints, and returns the exit code. */
export async function verifyCommand(argv) {
  let result;
  try {
    result = await runVerify(argv);
  } catch (error) {
    if (!(error instanceof UnexpectedInput)) throw error;
    process.stderr.write(`verinfer-js: unexpected input: ${error.message}\n`);
    return EXIT_REJECTED;
  }
  process.stdout.write(result.stdout);
  process.stderr.write(result.stderr);
  return result.code;
}

