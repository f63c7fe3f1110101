// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

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

    function layoutHash(bytes calldata enc) external pure returns (bytes32) {
        return TensorCodec.layoutHash(enc);
    }

    function receiptDigest(ReceiptLib.Receipt calldata receipt) external pure returns (bytes32) {
        return ReceiptLib.digest(receipt);
    }

    /// @return signer The recovered address, or address(0) for a malformed or malleable (high-s) signature.
    function recover(bytes32 hash, bytes calldata signature) external pure returns (address signer) {
        (signer,,) = ECDSA.tryRecoverCalldata(hash, signature);
    }

    function verifyProof(bytes32[] calldata proof, bytes32 root, bytes32 leaf) external pure returns (bool) {
        return MerkleProof.verifyCalldata(proof, root, leaf);
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

/// @notice A consumer that checks it was given the gas it asked for: it records gasleft() at entry, reverts
///         if that is short of its request (less the few hundred gas of dispatch before the first statement),
///         then burns what is left, so the fulfil must also finish on the verifier's own reserve.
contract GasRecordingConsumer is IInferenceConsumer {
    /// Gas the function dispatch and calldata decoding use before gasleft() is read: an upper bound.
    uint256 public constant DISPATCH_GAS = 1_000;
    uint32 public askedGas;
    uint256 public gasAtEntry;

    error Starved(uint256 gasAtEntry, uint256 asked);

    function ask(InferenceVerifier verifier, bytes32 modelHash, bytes calldata input, uint32 gas, uint64 timeout)
        external
        payable
        returns (bytes32)
    {
        askedGas = gas;
        return verifier.requestInference{value: msg.value}(modelHash, input, gas, timeout);
    }

    function onInferenceResult(bytes32, bytes calldata) external {
        uint256 entry = gasleft();
        if (entry + DISPATCH_GAS < askedGas) revert Starved(entry, askedGas);
        gasAtEntry = entry;
        while (gasleft() > 2_000) {}
    }
}

/// @notice A requester contract without receive() or fallback: refunds must be credited to it, then withdrawn.
contract NoReceiveRequester {
    function ask(InferenceVerifier verifier, bytes32 modelHash, bytes calldata input, uint64 timeout)
        external
        payable
        returns (bytes32)
    {
        return verifier.requestInference{value: msg.value}(modelHash, input, 0, timeout);
    }

    function cancel(InferenceVerifier verifier, bytes32 requestId) external {
        verifier.cancel(requestId);
    }

    function withdraw(InferenceVerifier verifier, address payable to) external {
        verifier.withdraw(to);
    }
}

/// @notice A fulfiller contract that takes no ether: its receive() burns the whole payment stipend and
///         reverts, the worst case for the gas fulfil needs after the callback (the fee is then credited).
contract ContractRelay {
    function fulfill(
        InferenceVerifier verifier,
        bytes32 requestId,
        bytes calldata output,
        uint64 timestampMs,
        address enclave,
        bytes calldata signature
    ) external {
        verifier.fulfill(requestId, output, timestampMs, enclave, signature);
    }

    function withdraw(InferenceVerifier verifier, address payable to) external {
        verifier.withdraw(to);
    }

    receive() external payable {
        while (true) {}
    }
}
