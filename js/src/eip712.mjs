// Receipts (PROTOCOL.md section 2): EIP-712 typed data signed by the enclave's secp256k1 key, and the
// receipt-domain digests of section 7 (receipt batches, Merkle trees, fulfilment ids, output layouts).
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { bytesToBigInt, concatBytes, fromHexPy, hex0x, keccak256, toHex, utf8, word } from "./bytes.mjs";
import { has, internal, isObject, makeObject } from "./json.mjs";
import { BY_NAME } from "./tensors.mjs";

const text = (s) => utf8(s);

export const DOMAIN_NAME = "verinfer";
export const DOMAIN_VERSION = "1";
export const DOMAIN_TYPEHASH = keccak256(text("EIP712Domain(string name,string version)"));
export const DOMAIN_SEPARATOR = keccak256(
  concatBytes(DOMAIN_TYPEHASH, keccak256(text(DOMAIN_NAME)), keccak256(text(DOMAIN_VERSION))),
);
export const RECEIPT_TYPE =
  "InferenceReceipt(bytes32 requestId,bytes32 modelHash,bytes32 inputHash,bytes32 outputHash,uint64 timestampMs)";
export const RECEIPT_TYPEHASH = keccak256(text(RECEIPT_TYPE));
export const BATCH_TYPEHASH = keccak256(text("ReceiptBatch(bytes32 root,uint32 count)"));
export const SECP256K1_N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
export const SECP256K1_HALF_N = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0n;
const PREFIX = concatBytes(Uint8Array.of(0x19, 0x01), DOMAIN_SEPARATOR);

export class ReceiptError extends Error {
  constructor(message) {
    super(message);
    this.name = "ReceiptError";
  }
}

/** keccak256(RECEIPT_TYPEHASH || requestId || modelHash || inputHash || outputHash || uint256 timestampMs). */
export function structHash(receipt) {
  return keccak256(
    concatBytes(
      RECEIPT_TYPEHASH,
      receipt.requestId,
      receipt.modelHash,
      receipt.inputHash,
      receipt.outputHash,
      word(BigInt(receipt.timestampMs)),
    ),
  );
}

/** The EIP-712 digest the enclave signs: keccak256(0x19 0x01 || DOMAIN_SEPARATOR || structHash). */
export function receiptDigest(receipt) {
  return keccak256(concatBytes(PREFIX, structHash(receipt)));
}

/** The digest an enclave signs for a Merkle root over `count` of its receipts. */
export function batchDigest(root, count) {
  return keccak256(concatBytes(PREFIX, keccak256(concatBytes(BATCH_TYPEHASH, root, word(BigInt(count))))));
}

/** Ethereum address of a 64-byte uncompressed public key X || Y. */
export function addressOf(publicKey64) {
  if (publicKey64.length !== 64) throw new Error("public key must be the 64-byte uncompressed X || Y");
  return keccak256(publicKey64).slice(12);
}

/** EIP-55 mixed-case hex of a 20-byte address. */
export function checksumAddress(address) {
  const plain = toHex(address);
  const digest = toHex(keccak256(text(plain)));
  let out = "0x";
  for (let i = 0; i < plain.length; i++) out += parseInt(digest[i], 16) >= 8 ? plain[i].toUpperCase() : plain[i];
  return out;
}

/** The address whose key signed the 32-byte `digest` (65-byte r || s || v, low-s, v in {27, 28}). */
export function recoverAddress(digest, signature) {
  if (signature.length !== 65 || (signature[64] !== 27 && signature[64] !== 28)) {
    throw new ReceiptError("signature must be 65 bytes r || s || v with v in {27, 28}");
  }
  const r = bytesToBigInt(signature.subarray(0, 32));
  const s = bytesToBigInt(signature.subarray(32, 64));
  if (s > SECP256K1_HALF_N) throw new ReceiptError("signature s is not in the lower half of the curve order");
  let point;
  try {
    point = new secp256k1.Signature(r, s, signature[64] - 27).recoverPublicKey(digest);
  } catch (error) {
    throw new ReceiptError(`signature does not recover: ${error.message}`);
  }
  return addressOf(point.toBytes(false).subarray(1));
}

export function recoverSigner(receipt, signature) {
  return recoverAddress(receiptDigest(receipt), signature);
}

function hexField(data, name, length) {
  if (!has(data, name)) throw new ReceiptError(`receipt field '${name}' is missing`);
  const raw = fromHexPy(data[name]);
  if (raw === null || raw.length !== length) throw new ReceiptError(`${name} must be 0x-hex of ${length} bytes`);
  return raw;
}

/**
 * A receipt's JSON form ({requestId, modelHash, inputHash, outputHash, timestampMs, enclave, signature})
 * parsed: {receipt: {requestId, modelHash, inputHash, outputHash (Uint8Array), timestampMs (bigint)},
 * enclave (20 bytes), signature (65 bytes)}. Throws ReceiptError, in the order Python checks.
 */
export function parseSignedReceipt(value) {
  const data = isObject(value) ? internal(value) : value;
  if (!isObject(data)) throw new ReceiptError("receipt must be a JSON object");
  const requestId = hexField(data, "requestId", 32);
  const modelHash = hexField(data, "modelHash", 32);
  const inputHash = hexField(data, "inputHash", 32);
  const outputHash = hexField(data, "outputHash", 32);
  if (!has(data, "timestampMs")) throw new ReceiptError("receipt field 'timestampMs' is missing");
  const timestampMs = data.timestampMs;
  if (typeof timestampMs !== "bigint") throw new ReceiptError("timestampMs must be an integer");
  if (timestampMs < 0n || timestampMs >= 2n ** 64n) throw new ReceiptError("timestampMs must fit in uint64");
  const enclave = hexField(data, "enclave", 20);
  const signature = hexField(data, "signature", 65);
  return { receipt: { requestId, modelHash, inputHash, outputHash, timestampMs }, enclave, signature };
}

/** The JSON form of a parsed receipt (enclave EIP-55 checksummed, hex lower-case). */
export function receiptToJson(signed) {
  const r = signed.receipt;
  return makeObject([
    ["requestId", hex0x(r.requestId)],
    ["modelHash", hex0x(r.modelHash)],
    ["inputHash", hex0x(r.inputHash)],
    ["outputHash", hex0x(r.outputHash)],
    ["timestampMs", BigInt(r.timestampMs)],
    ["enclave", checksumAddress(signed.enclave)],
    ["signature", hex0x(signed.signature)],
  ]);
}

// --- section 7: Merkle trees of receipt digests, fulfilment ids, output layouts ---

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function parent(a, b) {
  return keccak256(compareBytes(a, b) < 0 ? concatBytes(a, b) : concatBytes(b, a));
}

/** Every level of the Merkle tree over `leaves` (receipt digests), leaves first. */
export function merkleLevels(leaves) {
  if (!leaves.length) throw new Error("a Merkle tree needs at least one leaf");
  const tree = [[...leaves]];
  while (tree[tree.length - 1].length > 1) {
    const level = tree[tree.length - 1];
    const next = [];
    for (let i = 0; i < level.length; i += 2) next.push(i + 1 < level.length ? parent(level[i], level[i + 1]) : level[i]);
    tree.push(next);
  }
  return tree;
}

export function merkleRoot(leaves) {
  const tree = merkleLevels(leaves);
  return tree[tree.length - 1][0];
}

/** The sibling hashes from leaf `index` to the root. */
export function merkleProof(leaves, index) {
  const siblings = [];
  let i = index;
  for (const level of merkleLevels(leaves).slice(0, -1)) {
    if ((i ^ 1) < level.length) siblings.push(level[i ^ 1]);
    i = Math.floor(i / 2);
  }
  return siblings;
}

export function verifyMerkleProof(proof, root, leaf) {
  let node = leaf;
  for (const sibling of proof) node = parent(node, sibling);
  return compareBytes(node, root) === 0;
}

/** keccak256(abi.encode(bytes32 requestId, address fulfiller)): the request id a fulfilling receipt carries. */
export function fulfilmentId(requestId, fulfiller) {
  const address = typeof fulfiller === "string" ? fromHexPy(fulfiller) : fulfiller;
  if (requestId.length !== 32 || !address || address.length !== 20) {
    throw new Error("a fulfilment id takes a 32-byte request id and a 20-byte address");
  }
  return keccak256(concatBytes(requestId, new Uint8Array(12), address));
}

/** keccak256(u8 count || per output tensor: u8 len(name) || name || u8 dtype code). */
export function outputLayout(outputs) {
  const parts = [Uint8Array.of(outputs.length)];
  for (const { name, dtype } of outputs) {
    const code = typeof dtype === "string" ? BY_NAME.get(dtype)?.code : dtype.code;
    if (code === undefined) throw new Error(`unknown dtype ${dtype}`);
    const raw = utf8(name);
    if (raw.length > 255) throw new Error("tensor name longer than 255 bytes");
    parts.push(Uint8Array.of(raw.length), raw, Uint8Array.of(code));
  }
  return keccak256(concatBytes(...parts));
}

