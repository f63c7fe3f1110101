// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

/// @title ReceiptLib
/// @notice EIP-712 digests of enclave receipts and receipt batches (docs/PROTOCOL.md, section 2).
/// @dev Receipts live in a constant, chain-independent domain EIP712Domain(string name,string version) with
///      name "verinfer", version "1" (protocol/receipts.py): the enclave signs without knowing which chain or
///      contract will check the receipt, so OpenZeppelin's EIP712 (which binds chainId and verifyingContract)
///      does not apply here; only the final "\x19\x01" hashing is shared, through MessageHashUtils.
library ReceiptLib {
    struct Receipt {
        bytes32 requestId;
        bytes32 modelHash;
        bytes32 inputHash;
        bytes32 outputHash;
        uint64 timestampMs;
    }

    /// keccak256(abi.encode(keccak256("EIP712Domain(string name,string version)"), keccak256("verinfer"), keccak256("1")))
    bytes32 internal constant DOMAIN_SEPARATOR = 0xccd04264d30f2037cab2e516e3560dd950aa8e3630d9ba50c9068bcfce2abcea;
    bytes32 internal constant RECEIPT_TYPEHASH = keccak256(
        "InferenceReceipt(bytes32 requestId,bytes32 modelHash,bytes32 inputHash,bytes32 outputHash,uint64 timestampMs)"
    );
    bytes32 internal constant BATCH_TYPEHASH = keccak256("ReceiptBatch(bytes32 root,uint32 count)");

    function digest(Receipt memory r) internal pure returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(RECEIPT_TYPEHASH, r.requestId, r.modelHash, r.inputHash, r.outputHash, r.timestampMs)
        );
        return MessageHashUtils.toTypedDataHash(DOMAIN_SEPARATOR, structHash);
    }

    function batchDigest(bytes32 root, uint32 count) internal pure returns (bytes32) {
        return MessageHashUtils.toTypedDataHash(DOMAIN_SEPARATOR, keccak256(abi.encode(BATCH_TYPEHASH, root, count)));
    }
}
