// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IInferenceConsumer} from "../IInferenceConsumer.sol";
import {InferenceVerifier} from "../InferenceVerifier.sol";

/// @title RefundableConsumer
/// @notice What every example consumer shares: the verifier it asks, who asked each pending request, the
///         callback's caller check, and `cancel`, which passes a timed-out request's refund to its asker only.
abstract contract RefundableConsumer is IInferenceConsumer {
    InferenceVerifier public immutable verifier;
    /// Who asked for each pending request: the only one who may cancel it and take its refund.
    mapping(bytes32 requestId => address asker) public askers;

    error OnlyVerifier(address caller);
    error NotAsker(bytes32 requestId, address caller);
    error RefundFailed(address to, uint256 amount);

    constructor(InferenceVerifier verifier_) {
        verifier = verifier_;
    }

    /// @dev Callbacks come from the verifier alone: it has checked the receipt and the output's layout.
    modifier onlyVerifier() {
        if (msg.sender != address(verifier)) revert OnlyVerifier(msg.sender);
        _;
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
