// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {IInferenceConsumer} from "../IInferenceConsumer.sol";
import {InferenceVerifier} from "../InferenceVerifier.sol";
import {RefundableConsumer} from "./RefundableConsumer.sol";
import {TensorCodec} from "../TensorCodec.sol";

/// @title TextCompletionConsumer
/// @notice Example consumer of an LLM: asks for a greedy text completion of a prompt and stores the verified
///         answer. The request input is the exact HTTP body the enclave hashes (protocol/llm.py input_hash),
///         `{"model":"<name>","prompt":"<JSON-escaped prompt>","max_tokens":N,"temperature":0}`, and the
///         output the completion's canonical tensors: text uint8[n], finish_reason uint8[1] (1 stop,
///         2 length), usage uint32[2] (prompt tokens, completion tokens).
/// @dev The callback gas asked for grows with maxTokens (the answer is written to storage, about 700 gas
///      a byte), so the fee a relay expects grows with it too.
contract TextCompletionConsumer is RefundableConsumer {
    struct Answer {
        bool answered;
        uint8 finishReason;
        uint32 completionTokens;
        string text;
    }

    uint8 internal constant UINT32 = 12;

    bytes32 public immutable modelHash;
    uint32 public immutable maxTokensLimit;
    uint32 public immutable callbackGasBase;
    uint32 public immutable callbackGasPerToken;
    uint64 public immutable timeout;
    /// The model name the enclave serves `modelHash` as (the request body's "model").
    string public modelName;

    mapping(bytes32 requestId => Answer) private _answers;
    bytes32 public lastRequestId;

    error InvalidMaxTokens(uint32 maxTokens, uint32 limit);
    error CallbackGasOverLimit(uint256 needed, uint256 limit);
    error MalformedCompletion();

    event CompletionRequested(bytes32 indexed requestId, address indexed asker, uint32 maxTokens);
    event CompletionAnswered(bytes32 indexed requestId, uint8 finishReason, uint32 completionTokens, string text);

    constructor(
        InferenceVerifier verifier_,
        bytes32 modelHash_,
        string memory modelName_,
        uint32 maxTokensLimit_,
        uint32 callbackGasBase_,
        uint32 callbackGasPerToken_,
        uint64 timeout_
    ) RefundableConsumer(verifier_) {
        uint256 most = uint256(callbackGasBase_) + uint256(callbackGasPerToken_) * maxTokensLimit_;
        if (most > verifier_.MAX_CALLBACK_GAS()) revert CallbackGasOverLimit(most, verifier_.MAX_CALLBACK_GAS());
        modelHash = modelHash_;
        modelName = modelName_;
        maxTokensLimit = maxTokensLimit_;
        callbackGasBase = callbackGasBase_;
        callbackGasPerToken = callbackGasPerToken_;
        timeout = timeout_;
    }

    /// @notice The exact request body `ask` sends: compact JSON, keys in this order, the prompt escaped as
    ///         Python's json.dumps(ensure_ascii=False) does (OpenZeppelin Strings.escapeJSON).
    function requestBody(string calldata prompt, uint32 maxTokens) public view returns (bytes memory) {
        return bytes(
            string.concat(
                '{"model":"',
                Strings.escapeJSON(modelName),
                '","prompt":"',
                Strings.escapeJSON(prompt),
                '","max_tokens":',
                Strings.toString(maxTokens),
                ',"temperature":0}'
            )
        );
    }

    /// @notice The callback gas a request for `maxTokens` asks the verifier for.
    function callbackGas(uint32 maxTokens) public view returns (uint32) {
        return callbackGasBase + callbackGasPerToken * maxTokens;
    }

    /// @notice Asks for a greedy completion of `prompt` of at most `maxTokens` tokens; msg.value is the fee.
    function ask(string calldata prompt, uint32 maxTokens) external payable returns (bytes32 requestId) {
        if (maxTokens == 0 || maxTokens > maxTokensLimit) revert InvalidMaxTokens(maxTokens, maxTokensLimit);
        requestId = verifier.requestInference{value: msg.value}(
            modelHash, requestBody(prompt, maxTokens), callbackGas(maxTokens), timeout
        );
        lastRequestId = requestId;
        askers[requestId] = msg.sender;
        emit CompletionRequested(requestId, msg.sender, maxTokens);
    }

    /// @inheritdoc IInferenceConsumer
    /// @dev The verifier has checked the output's layout (names, dtypes, order); the element counts are
    ///      checked here. The text is copied from calldata straight to storage.
    function onInferenceResult(bytes32 requestId, bytes calldata output) external onlyVerifier {
        bytes memory encoded = output;
        TensorCodec.Tensor[] memory tensors = TensorCodec.decode(encoded);
        if (tensors.length != 3) revert MalformedCompletion();
        TensorCodec.Tensor memory text = tensors[0];
        TensorCodec.Tensor memory finish = tensors[1];
        TensorCodec.Tensor memory usage = tensors[2];
        if (
            text.dtype != TensorCodec.UINT8 || finish.dtype != TensorCodec.UINT8 || finish.elements != 1
                || usage.dtype != UINT32 || usage.elements != 2
        ) revert MalformedCompletion();
        uint8 finishReason = uint8(TensorCodec.element(encoded, finish, 0));
        uint32 completionTokens = uint32(TensorCodec.element(encoded, usage, 1));
        string calldata answerText = string(output[text.dataOffset:text.dataOffset + text.elements]);
        _answers[requestId] = Answer(true, finishReason, completionTokens, answerText);
        delete askers[requestId];
        emit CompletionAnswered(requestId, finishReason, completionTokens, answerText);
    }

    /// @notice The verified answer to `requestId` (answered false while there is none).
    function answer(bytes32 requestId)
        external
        view
        returns (bool answered, string memory text, uint8 finishReason, uint32 completionTokens)
    {
        Answer storage stored = _answers[requestId];
        return (stored.answered, stored.text, stored.finishReason, stored.completionTokens);
    }

}
