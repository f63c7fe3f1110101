// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IInferenceConsumer} from "../src/IInferenceConsumer.sol";
import {InferenceVerifier} from "../src/InferenceVerifier.sol";
import {ReceiptLib} from "../src/ReceiptLib.sol";
import {TensorCodec} from "../src/TensorCodec.sol";

/// @notice Exposes the libraries to the Python tests, which feed them the shared vectors in tests/vectors/.
contract CodecHarness {
    function decode(bytes calldata enc)
        external
        pure
        returns (string[] memory names, uint8[] memory dtypes, uint32[][] memory shapes, uint256[][] memory data)
    {
        bytes memory encoded = enc;
        TensorCodec.Tensor[] memory tensors = TensorCodec.decode(encoded);
        names = new string[](tensors.length);
        dtypes = new uint8[](tensors.length);
        shapes = new uint32[][](tensors.length);
        data = new uint256[][](tensors.length);
        for (uint256 i = 0; i < tensors.length; ++i) {
            names[i] = tensors[i].name;
            dtypes[i] = tensors[i].dtype;
            shapes[i] = tensors[i].shape;
            data[i] = new uint256[](tensors[i].elements);
            for (uint256 j = 0; j < tensors[i].elements; ++j) data[i][j] = TensorCodec.element(encoded, tensors[i], j);
        }
    }

    function argmaxFloat32(bytes calldata enc, string calldata name) external pure returns (uint256) {
        bytes memory encoded = enc;
        return TensorCodec.argmaxFloat32(encoded, TensorCodec.find(TensorCodec.decode(encoded), name));
    }

    function receiptDigest(ReceiptLib.Receipt calldata receipt) external pure returns (bytes32) {
        return ReceiptLib.digest(receipt);
    }

    function recover(bytes32 hash, bytes calldata signature) external pure returns (address) {
        return ReceiptLib.recover(hash, signature);
    }

    function verifyProof(bytes32[] calldata proof, bytes32 root, bytes32 leaf) external pure returns (bool) {
        return ReceiptLib.verifyProof(proof, root, leaf);
    }
}

/// @notice A consumer whose callback always reverts, or burns all its gas.
contract RevertingConsumer is IInferenceConsumer {
    bool public burnGas;

    constructor(bool burnGas_) {
        burnGas = burnGas_;
    }

    function ask(InferenceVerifier verifier, bytes32 modelHash, bytes calldata input, uint32 gas, uint64 timeout)
        external
        payable
        returns (bytes32)
    {
        return verifier.requestInference{value: msg.value}(modelHash, input, gas, timeout);
    }

    function onInferenceResult(bytes32, bytes calldata) external view {
        if (burnGas) {
            while (true) {}
        }
        revert("consumer refuses");
    }
}
