// Sealed requests (PROTOCOL.md section 10): the salted commitments a sealed request's receipt carries,
// and the attested encryption key and the OHTTP key configurations that must name it.
//
//   inputHash  = keccak256("verinfer.sealed.input.v1"  || 0x00 || salt (32) || plainInputHash (32))
//   outputHash = keccak256("verinfer.sealed.output.v1" || 0x00 || salt (32) || plainOutputHash (32))
import { concatBytes, keccak256, utf8 } from "./bytes.mjs";

export const SALT_SIZE = 32;
export const INPUT_COMMITMENT_DOMAIN = concatBytes(utf8("verinfer.sealed.input.v1"), Uint8Array.of(0));
export const OUTPUT_COMMITMENT_DOMAIN = concatBytes(utf8("verinfer.sealed.output.v1"), Uint8Array.of(0));
export const KEM_X25519_SHA256 = 0x0020;

export class SealingError extends Error {
  constructor(message) {
    super(message);
    this.name = "SealingError";
  }
}

function word32(value, name) {
  if (value.length !== 32) throw new SealingError(`the ${name} must be 32 bytes, got ${value.length}`);
  return value;
}

/** The receipt's inputHash for a sealed request whose clear inputHash would be `inputHash`. */
export function commitInput(salt, inputHash) {
  return keccak256(concatBytes(INPUT_COMMITMENT_DOMAIN, word32(salt, "salt"), word32(inputHash, "input hash")));
}

/** The receipt's outputHash for a sealed request whose clear outputHash would be `outputHash`. */
export function commitOutput(salt, outputHash) {
  return keccak256(concatBytes(OUTPUT_COMMITMENT_DOMAIN, word32(salt, "salt"), word32(outputHash, "output hash")));
}

/** A document's user_data split (section 4): {manifestDigest, encryptionKey (null: binds none)}. */
export function splitUserData(userData) {
  if (userData && userData.length === 64) return { manifestDigest: userData.slice(0, 32), encryptionKey: userData.slice(32) };
  if (userData && userData.length === 32) return { manifestDigest: userData.slice(), encryptionKey: null };
  const size = userData ? `${userData.length} bytes of` : "no";
  throw new SealingError(
    `the document has ${size} user_data; expected the manifest digest (32 bytes), optionally followed by the X25519 encryption key (32 bytes)`,
  );
}

// Npk of the KEMs of RFC 9180 section 7.1, so that a configuration for another KEM is still delimited.
const KEM_PUBLIC_KEY_SIZES = new Map([
  [0x0010, 65],
  [0x0011, 97],
  [0x0012, 133],
  [0x0020, 32],
  [0x0021, 56],
]);

function publicKeySize(kemId, config) {
  const known = KEM_PUBLIC_KEY_SIZES.get(kemId);
  if (known !== undefined) return known;
  const view = new DataView(config.buffer, config.byteOffset, config.byteLength);
  const candidates = [];
  for (let npk = 0; npk < config.length - 3 - 2 - 4 + 1; npk++) {
    if (view.getUint16(3 + npk) === config.length - 5 - npk) candidates.push(npk);
  }
  if (candidates.length !== 1) {
    throw new SealingError(`cannot delimit the public key of unknown KEM 0x${kemId.toString(16).padStart(4, "0")}`);
  }
  return candidates[0];
}

function decodeKeyConfig(config) {
  if (config.length < 3 + 2 + 4) throw new SealingError("a key configuration is too short");
  const view = new DataView(config.buffer, config.byteOffset, config.byteLength);
  const keyId = config[0];
  const kemId = view.getUint16(1);
  const npk = publicKeySize(kemId, config);
  if (config.length < 3 + npk + 2) throw new SealingError("a key configuration's public key is truncated");
  const publicKey = config.slice(3, 3 + npk);
  const length = view.getUint16(3 + npk);
  const algorithms = config.subarray(3 + npk + 2);
  if (length !== algorithms.length || length < 4 || length % 4) {
    throw new SealingError("a key configuration's symmetric algorithms length is wrong");
  }
  const suites = [];
  for (let i = 0; i < length; i += 4) suites.push([view.getUint16(3 + npk + 2 + i), view.getUint16(3 + npk + 4 + i)]);
  return { keyId, kemId, publicKey, suites };
}

/** Every configuration in an application/ohttp-keys body (RFC 9458 section 3.2), strictly. */
export function decodeKeyConfigs(data) {
  if (!data.length) throw new SealingError("an application/ohttp-keys body is empty");
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const configs = [];
  let pos = 0;
  while (pos < data.length) {
    if (pos + 2 > data.length) throw new SealingError("a key configuration length is truncated");
    const length = view.getUint16(pos);
    pos += 2;
    if (pos + length > data.length) throw new SealingError("a key configuration is truncated");
    configs.push(decodeKeyConfig(data.subarray(pos, pos + length)));
    pos += length;
  }
  return configs;
}
