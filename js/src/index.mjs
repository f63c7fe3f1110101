// @verinfer/verify: verify verinfer enclaves in browsers and Node >= 20, from docs/PROTOCOL.md.
//
// The attestation half (Nitro documents against a pinned root and policy) is ./attestation.mjs; the receipt
// half (tensor hashes, EIP-712 receipts, the manifest, LLM completions, sealed commitments and the full
// verdict of an inference or a completion) is below.
export * from "./attestation.mjs";

export {
  IMAGE_PCRS,
  MAX_UNORDERED_INPUTS,
  VerificationReport,
  attestationInput,
  checkKeyBinding,
  isPinned,
  parseImageId,
  parsePolicyFile,
  receiptOf,
  requestIdOf,
  responseModel,
  selfDescribing,
  verifyCompletion,
  verifyInference,
} from "./receipts.mjs";
export {
  BY_CODE as DTYPE_BY_CODE,
  BY_NAME as DTYPE_BY_NAME,
  BY_V2 as DTYPE_BY_V2,
  DTYPES,
  ENCODING_VERSION,
  TensorEncodingError,
  decodeTensors,
  encodeTensors,
  makeTensor,
  outputHash,
  tensorsFromJson,
  tensorsHash,
  unpackElements,
} from "./tensors.mjs";
export { MAX_BATCH_ELEMENTS, RequestError, parseInputs } from "./inputs.mjs";
export { ManifestError, bundleHash, manifestDigest, parseManifest } from "./manifest.mjs";
export {
  BATCH_TYPEHASH,
  DOMAIN_SEPARATOR,
  DOMAIN_TYPEHASH,
  RECEIPT_TYPE,
  RECEIPT_TYPEHASH,
  ReceiptError,
  addressOf,
  batchDigest,
  checksumAddress,
  fulfilmentId,
  merkleProof,
  merkleRoot,
  outputLayout,
  parseSignedReceipt,
  receiptDigest,
  receiptToJson,
  recoverAddress,
  recoverSigner,
  structHash,
  verifyMerkleProof,
} from "./eip712.mjs";
export {
  CompletionError,
  FINISH_CODES,
  chainNext,
  checkpointHash,
  completionInputHash,
  completionOutputEncoding,
  completionOutputHash,
  isCompletion,
  isSse,
  personalMessageDigest,
  readCompletion,
  readStream,
  signatureText,
  verifiedText,
} from "./llm.mjs";
export { commitInput, commitOutput, decodeKeyConfigs, splitUserData } from "./sealing.mjs";
export { JsonError, canonicalJson, parseJson, pyJsonDumps } from "./json.mjs";
export { hex0x, hexToBytes, keccak256, sha256 } from "./bytes.mjs";
