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

    /// @notice Index of the largest of a float32 tensor's finite elements (IEEE order via sign-magnitude).
    function argmaxFloat32(bytes memory enc, Tensor memory t) internal pure returns (uint256 best) {
        int256 bestKey = type(int256).min;
        for (uint256 i = 0; i < t.elements; ++i) {
            uint32 bits = float32BitsAt(enc, t, i);
            int256 key = bits & 0x80000000 != 0 ? -int256(uint256(bits & 0x7fffffff)) : int256(uint256(bits));
            if (key > bestKey) {
                bestKey = key;
                best = i;
            }
        }
    }
}
