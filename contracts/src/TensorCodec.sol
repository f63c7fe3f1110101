// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title TensorCodec
/// @notice Decoder for verinfer's canonical tensor encoding (docs/PROTOCOL.md, section 1):
///         u8 version (1) || u8 count || per tensor: u8 nameLength || name || u8 dtype || u8 rank
///         || u32 BE dims || data (row-major, little-endian elements).
library TensorCodec {
    error InvalidTensorEncoding(uint256 offset);
    error TensorNotFound(string name);
    error TensorIndexOutOfRange(uint256 index, uint256 length);
    error WrongTensorDtype(uint8 expected, uint8 actual);
    error NonFiniteElement(uint256 index);

    uint8 internal constant FLOAT32 = 1;
    uint8 internal constant UINT8 = 2;
    uint8 internal constant INT64 = 7;

    struct Tensor {
        string name;
        uint8 dtype;
        uint32[] shape;
        uint256 dataOffset; // offset of the first element in the encoding
        uint256 elements;
    }

    /// @notice Size in bytes of one element of an ONNX dtype code; 0 for unknown codes.
    function elementSize(uint8 dtype) internal pure returns (uint256) {
        if (dtype == 2 || dtype == 3 || dtype == 9) return 1;
        if (dtype == 4 || dtype == 5 || dtype == 10) return 2;
        if (dtype == 1 || dtype == 6 || dtype == 12) return 4;
        if (dtype == 7 || dtype == 11 || dtype == 13) return 8;
        return 0;
    }

    /// @notice Decodes every tensor header; reverts unless `enc` is exactly one valid encoding.
    function decode(bytes memory enc) internal pure returns (Tensor[] memory tensors) {
        if (enc.length < 2 || uint8(enc[0]) != 1) revert InvalidTensorEncoding(0);
        tensors = new Tensor[](uint8(enc[1]));
        uint256 p = 2;
        for (uint256 t = 0; t < tensors.length; ++t) {
            (tensors[t], p) = _decodeOne(enc, p);
        }
        if (p != enc.length) revert InvalidTensorEncoding(p);
    }

    function _decodeOne(bytes memory enc, uint256 p) private pure returns (Tensor memory t, uint256 next) {
        if (p >= enc.length) revert InvalidTensorEncoding(p);
        uint256 nameLength = uint8(enc[p]);
        if (p + 3 + nameLength > enc.length) revert InvalidTensorEncoding(p);
        bytes memory name = new bytes(nameLength);
        for (uint256 i = 0; i < nameLength; ++i) name[i] = enc[p + 1 + i];
        p += 1 + nameLength;
        t.name = string(name);
        t.dtype = uint8(enc[p]);
        uint256 rank = uint8(enc[p + 1]);
        p += 2;
        uint256 size = elementSize(t.dtype);
        if (size == 0 || p + 4 * rank > enc.length) revert InvalidTensorEncoding(p);
        t.shape = new uint32[](rank);
        t.elements = 1;
        for (uint256 d = 0; d < rank; ++d) {
            t.shape[d] = uint32(readBE32(enc, p));
            t.elements *= t.shape[d];
            p += 4;
        }
        t.dataOffset = p;
        next = p + t.elements * size;
        if (next > enc.length) revert InvalidTensorEncoding(p);
    }

    function readBE32(bytes memory enc, uint256 p) internal pure returns (uint256) {
        return uint256(uint8(enc[p])) << 24 | uint256(uint8(enc[p + 1])) << 16 | uint256(uint8(enc[p + 2])) << 8
            | uint256(uint8(enc[p + 3]));
    }

    function find(Tensor[] memory tensors, string memory name) internal pure returns (Tensor memory) {
        bytes32 wanted = keccak256(bytes(name));
        for (uint256 i = 0; i < tensors.length; ++i) {
            if (keccak256(bytes(tensors[i].name)) == wanted) return tensors[i];
        }
        revert TensorNotFound(name);
    }

    /// @notice Little-endian unsigned integer of `size` bytes at `offset`.
    function readLE(bytes memory enc, uint256 offset, uint256 size) internal pure returns (uint256 value) {
        for (uint256 i = 0; i < size; ++i) value |= uint256(uint8(enc[offset + i])) << (8 * i);
    }

    function element(bytes memory enc, Tensor memory t, uint256 index) internal pure returns (uint256) {
        if (index >= t.elements) revert TensorIndexOutOfRange(index, t.elements);
        uint256 size = elementSize(t.dtype);
        return readLE(enc, t.dataOffset + index * size, size);
    }

    function int64At(bytes memory enc, Tensor memory t, uint256 index) internal pure returns (int64) {
        if (t.dtype != INT64) revert WrongTensorDtype(INT64, t.dtype);
        return int64(uint64(element(enc, t, index)));
    }

    /// @notice The raw IEEE 754 binary32 bits of a float32 element.
    function float32BitsAt(bytes memory enc, Tensor memory t, uint256 index) internal pure returns (uint32) {
        if (t.dtype != FLOAT32) revert WrongTensorDtype(FLOAT32, t.dtype);
        return uint32(element(enc, t, index));
    }

    /// @notice Index of the largest element of a float32 tensor (IEEE order via sign-magnitude; the first
    ///         of equal maxima, and -0 equals +0).
    /// @dev Reverts NonFiniteElement on a NaN or an infinity rather than skipping it: a classifier whose
    ///      scores are not finite has misbehaved, and a class picked from the remaining elements would look
    ///      like a genuine answer. (Unchecked, NaN's bit pattern sorts above every finite number.)
    function argmaxFloat32(bytes memory enc, Tensor memory t) internal pure returns (uint256 best) {
        int256 bestKey = type(int256).min;
        for (uint256 i = 0; i < t.elements; ++i) {
            uint32 bits = float32BitsAt(enc, t, i);
            if (bits & 0x7f800000 == 0x7f800000) revert NonFiniteElement(i);
            int256 key = bits & 0x80000000 != 0 ? -int256(uint256(bits & 0x7fffffff)) : int256(uint256(bits));
            if (key > bestKey) {
                bestKey = key;
                best = i;
            }
        }
    }

    /// @notice keccak256 of the output layout of a whole encoding, checking the encoding on the way:
    ///         u8 count || per tensor, in order: u8 nameLength || name || u8 dtype (protocol/onchain.py
    ///         output_layout). Equal to a model's approved layout only if `enc` holds exactly its outputs.
    /// @dev Reads calldata in place and touches only the headers, so a large output costs no memory copy:
    ///      fulfil runs this on every output. Reverts InvalidTensorEncoding unless `enc` is exactly one valid
    ///      encoding (as decode does). The layout is written to newly allocated memory of at most
    ///      1 + 255 * 257 bytes; only the bytes written are paid for, and the allocation shrinks to them.
    function layoutHash(bytes calldata enc) internal pure returns (bytes32 result) {
        uint256 length = enc.length;
        if (length < 2 || _byteAt(enc, 0) != 1) revert InvalidTensorEncoding(0);
        uint256 count = _byteAt(enc, 1);
        uint256 start;
        assembly ("memory-safe") {
            start := mload(0x40)
            mstore(0x40, add(start, 65536)) // reserve the most a layout can take while it is written
            mstore8(start, count)
        }
        uint256 q = start + 1;
        uint256 p = 2;
        // Unchecked: every offset is below calldata size plus 2^16, and `elements` below 2^32 * (length + 2).
        unchecked {
            for (uint256 t = 0; t < count; ++t) {
                if (p >= length) revert InvalidTensorEncoding(p);
                uint256 nameLength = _byteAt(enc, p);
                if (p + 3 + nameLength > length) revert InvalidTensorEncoding(p);
                assembly ("memory-safe") {
                    calldatacopy(q, add(enc.offset, p), add(nameLength, 2)) // nameLength || name || dtype
                }
                q += nameLength + 2;
                p += 1 + nameLength;
                uint256 size = elementSize(uint8(_byteAt(enc, p)));
                uint256 rank = _byteAt(enc, p + 1);
                p += 2;
                if (size == 0 || p + 4 * rank > length) revert InvalidTensorEncoding(p);
                // Saturates at length + 1 (more elements than bytes cannot fit), so hostile dimensions cannot
                // overflow, while a zero dimension still makes an empty tensor.
                uint256 elements = 1;
                for (uint256 d = 0; d < rank; ++d) {
                    elements *= _be32At(enc, p);
                    if (elements > length) elements = length + 1;
                    p += 4;
                }
                uint256 next = p + elements * size;
                if (next > length) revert InvalidTensorEncoding(p);
                p = next;
            }
        }
        if (p != length) revert InvalidTensorEncoding(p);
        assembly ("memory-safe") {
            result := keccak256(start, sub(q, start))
            mstore(0x40, and(add(q, 31), not(31))) // keep only what was written
        }
    }

    /// @dev The byte at `p` of `enc`; the caller has checked p < enc.length.
    function _byteAt(bytes calldata enc, uint256 p) private pure returns (uint256 value) {
        assembly ("memory-safe") {
            value := byte(0, calldataload(add(enc.offset, p)))
        }
    }

    /// @dev The big-endian u32 at `p` of `enc`; the caller has checked p + 4 <= enc.length.
    function _be32At(bytes calldata enc, uint256 p) private pure returns (uint256 value) {
        assembly ("memory-safe") {
            value := shr(224, calldataload(add(enc.offset, p)))
        }
    }
}
