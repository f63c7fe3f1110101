// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IInferenceConsumer} from "../IInferenceConsumer.sol";
import {InferenceVerifier} from "../InferenceVerifier.sol";
import {TensorCodec} from "../TensorCodec.sol";

/// @title ClassifierConsumer
/// @notice Example consumer: asks a classifier (mnist-lenet for a digit, iris-mlp for a species) and stores
///         the class the verified output names. The label tensor is an int64 output such as "digit" or "label".
contract ClassifierConsumer is IInferenceConsumer {
    InferenceVerifier public immutable verifier;
    bytes32 public immutable modelHash;
    string public labelTensor;

    mapping(bytes32 requestId => int64) public labels;
    mapping(bytes32 requestId => bool) public answered;
    /// Who asked for each pending request: the only one who may cancel it and take its refund.
    mapping(bytes32 requestId => address asker) public askers;
    bytes32 public lastRequestId;

    error OnlyVerifier(address caller);
    error NotAsker(bytes32 requestId, address caller);
    error RefundFailed(address to, uint256 amount);

    event ClassificationRequested(bytes32 indexed requestId, bytes32 inputHash);
    event Classified(bytes32 indexed requestId, int64 label);

    constructor(InferenceVerifier verifier_, bytes32 modelHash_, string memory labelTensor_) {
        verifier = verifier_;
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
    function onInferenceResult(bytes32 requestId, bytes calldata output) external {
        if (msg.sender != address(verifier)) revert OnlyVerifier(msg.sender);
        bytes memory encoded = output;
        TensorCodec.Tensor memory label = TensorCodec.find(TensorCodec.decode(encoded), labelTensor);
        int64 value = TensorCodec.int64At(encoded, label, 0);
        labels[requestId] = value;
        answered[requestId] = true;
        emit Classified(requestId, value);
    }

    /// @notice Cancels a timed-out request of the caller's and passes that request's refund (only) back.
    /// @dev The verifier refunds this contract, the requester; the refund is measured as the balance change
    ///      across the cancel, so ether held for other requests never leaves. If the verifier had to credit
    ///      the refund instead of sending it (InferenceVerifier.owed), nothing arrives and nothing is passed on.
    function cancel(bytes32 requestId) external {
        if (askers[requestId] != msg.sender) revert NotAsker(requestId, msg.sender);
        delete askers[requestId];
        uint256 before = address(this).balance;
        verifier.cancel(requestId);
        uint256 refund = address(this).balance - before;
        if (refund > 0) {
            (bool paid,) = msg.sender.call{value: refund}("");
            if (!paid) revert RefundFailed(msg.sender, refund);
        }
    }

    /// @notice Takes verifier refunds (InferenceVerifier pays with a bounded stipend; this needs none).
    receive() external payable {}
}
