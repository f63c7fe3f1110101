// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IInferenceConsumer} from "../IInferenceConsumer.sol";
import {InferenceVerifier} from "../InferenceVerifier.sol";
import {RefundableConsumer} from "./RefundableConsumer.sol";

/// @title SealedInferenceConsumer
/// @notice Example consumer of sealed requests: a user seals an input off-chain to an enclave's attested key
///         (InferenceVerifier.encryptionKeyOf; protocol/sealing.py seal_input), asks through this contract and
///         reads the answer stored here. With an output key the answer is sealed to the user, who opens it
///         off-chain (open_output): this contract, the relay and the chain hold ciphertext only.
contract SealedInferenceConsumer is RefundableConsumer {
    bytes32 public immutable modelHash;

    /// The output posted for each answered request: ciphertext when it was asked with an output key.
    mapping(bytes32 requestId => bytes output) public outputs;
    mapping(bytes32 requestId => bool) public answered;


    event SealedRequestSent(bytes32 indexed requestId, address indexed asker, address indexed enclave);
    event SealedRequestAnswered(bytes32 indexed requestId, bytes32 outputHash);

    constructor(InferenceVerifier verifier_, bytes32 modelHash_) RefundableConsumer(verifier_) {
        modelHash = modelHash_;
    }

    /// @notice Asks `enclave` to run the model on `sealedInput`; msg.value is the relay fee.
    /// @param outputKey The asker's X25519 key to seal the answer to, or zero for an answer in clear.
    function ask(address enclave, bytes calldata sealedInput, bytes32 outputKey, uint32 callbackGasLimit, uint64 timeout)
        external
        payable
        returns (bytes32 requestId)
    {
        requestId = verifier.requestSealedInference{value: msg.value}(
            modelHash, enclave, sealedInput, outputKey, callbackGasLimit, timeout
        );
        askers[requestId] = msg.sender;
        emit SealedRequestSent(requestId, msg.sender, enclave);
    }

    /// @inheritdoc IInferenceConsumer
    /// @dev Stores the output as posted (about 700 gas a byte): callbackGasLimit must cover its size.
    function onInferenceResult(bytes32 requestId, bytes calldata output) external onlyVerifier {
        outputs[requestId] = output;
        answered[requestId] = true;
        delete askers[requestId];
        emit SealedRequestAnswered(requestId, keccak256(output));
    }

}
