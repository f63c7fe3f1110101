// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IInferenceConsumer
/// @notice Implemented by contracts that request inference from an InferenceVerifier.
interface IInferenceConsumer {
    /// @notice Called by the verifier once a request is fulfilled with an attested enclave's signed output.
    /// @param requestId The id returned by requestInference.
    /// @param output The canonical tensor encoding of the model's outputs (docs/PROTOCOL.md, section 1), or,
    ///        for a sealed request with an output key, that encoding HPKE-sealed to the key (sealedOutput).
    function onInferenceResult(bytes32 requestId, bytes calldata output) external;
}
