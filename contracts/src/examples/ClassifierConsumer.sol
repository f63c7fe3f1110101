// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IInferenceConsumer} from "../IInferenceConsumer.sol";
import {InferenceVerifier} from "../InferenceVerifier.sol";
import {RefundableConsumer} from "./RefundableConsumer.sol";
import {TensorCodec} from "../TensorCodec.sol";

/// @title ClassifierConsumer
/// @notice Example consumer: asks a classifier (mnist-lenet for a digit, iris-mlp for a species) and stores
///         the class the verified output names. The label tensor is an int64 output such as "digit" or "label".
contract ClassifierConsumer is RefundableConsumer {
    bytes32 public immutable modelHash;
    string public labelTensor;

    mapping(bytes32 requestId => int64) public labels;
    mapping(bytes32 requestId => bool) public answered;
    bytes32 public lastRequestId;


    event ClassificationRequested(bytes32 indexed requestId, bytes32 inputHash);
    event Classified(bytes32 indexed requestId, int64 label);

    constructor(InferenceVerifier verifier_, bytes32 modelHash_, string memory labelTensor_)
        RefundableConsumer(verifier_)
    {
        modelHash = modelHash_;
        labelTensor = labelTensor_;
    }

    /// @notice Requests a classification of `input` (canonical tensor encoding); msg.value is the relay fee.
    function classify(bytes calldata input, uint32 callbackGasLimit, uint64 timeout)
        external
        payable
        returns (bytes32 requestId)
    {
        requestId = verifier.requestInference{value: msg.value}(modelHash, input, callbackGasLimit, timeout);
        lastRequestId = requestId;
        askers[requestId] = msg.sender;
        emit ClassificationRequested(requestId, keccak256(input));
    }

    /// @inheritdoc IInferenceConsumer
    function onInferenceResult(bytes32 requestId, bytes calldata output) external onlyVerifier {
        bytes memory encoded = output;
        TensorCodec.Tensor memory label = TensorCodec.find(TensorCodec.decode(encoded), labelTensor);
        int64 value = TensorCodec.int64At(encoded, label, 0);
        labels[requestId] = value;
        answered[requestId] = true;
        emit Classified(requestId, value);
    }

}
