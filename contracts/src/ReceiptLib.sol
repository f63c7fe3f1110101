// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ReceiptLib
/// @notice EIP-712 digests of enclave receipts and batches, and strict ECDSA recovery (docs/PROTOCOL.md).
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
    uint256 private constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    function digest(Receipt memory r) internal pure returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(RECEIPT_TYPEHASH, r.requestId, r.modelHash, r.inputHash, r.outputHash, r.timestampMs)
        );
        return keccak256(abi.encodePacked(hex"1901", DOMAIN_SEPARATOR, structHash));
    }

    function batchDigest(bytes32 root, uint32 count) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", DOMAIN_SEPARATOR, keccak256(abi.encode(BATCH_TYPEHASH, root, count))));
    }

    /// @return signer The recovered address, or address(0) for a malformed or malleable (high-s) signature.
    function recover(bytes32 hash, bytes memory signature) internal pure returns (address signer) {
        if (signature.length != 65) return address(0);
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := mload(add(signature, 0x20))
            s := mload(add(signature, 0x40))
            v := byte(0, mload(add(signature, 0x60)))
        }
        if (uint256(s) > HALF_ORDER || (v != 27 && v != 28)) return address(0);
        return ecrecover(hash, v, r, s);
    }

    /// @notice Merkle inclusion with sorted-pair hashing: parent = keccak256(min(a, b) || max(a, b)).
    function verifyProof(bytes32[] memory proof, bytes32 root, bytes32 leaf) internal pure returns (bool) {
        bytes32 node = leaf;
        for (uint256 i = 0; i < proof.length; ++i) {
            bytes32 sibling = proof[i];
            node = node < sibling ? keccak256(abi.encodePacked(node, sibling)) : keccak256(abi.encodePacked(sibling, node));
        }
        return node == root;
    }
}
