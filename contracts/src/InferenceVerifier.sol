// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {EnclaveRegistry} from "./EnclaveRegistry.sol";
import {IInferenceConsumer} from "./IInferenceConsumer.sol";
import {ReceiptLib} from "./ReceiptLib.sol";

/// @title InferenceVerifier
/// @notice Verifies enclave-signed inference receipts, anchors them (singly or as Merkle batches), and
///         serves inference requests from contracts: a relay fulfils them with an attested enclave's signed
///         output and the requester is called back. Relays are trusted for liveness only: every fulfilment
///         is checked against a registered enclave of an approved image and model.
contract InferenceVerifier is EnclaveRegistry {
    using ReceiptLib for ReceiptLib.Receipt;

    enum Status {
        None,
        Pending,
        Fulfilled,
        Cancelled
    }

    struct Request {
        address requester;
        uint64 deadline; // seconds
        uint32 callbackGasLimit;
        Status status;
        bytes32 modelHash;
        bytes32 inputHash;
        uint256 fee;
    }

    struct Batch {
        address enclave;
        uint32 count;
        uint64 anchoredAt;
    }

    uint32 public constant MAX_CALLBACK_GAS = 2_000_000;
    uint64 public constant MIN_TIMEOUT = 60;
    uint64 public constant MAX_TIMEOUT = 30 days;
    uint256 public constant MAX_INPUT_BYTES = 64 * 1024;
    /// Gas kept back after the callback so fulfil can finish (EIP-150 leaves 1/64 with the caller).
    uint256 private constant CALLBACK_RESERVE = 20_000;

    uint256 public requestCount;
    mapping(bytes32 requestId => Request) public requests;
    mapping(bytes32 receiptDigest => address enclave) public anchoredReceipts;
    mapping(bytes32 root => Batch) public batches;

    error InvalidSignature();
    error ReceiptSignerMismatch(address expected, address recovered);
    error AlreadyAnchored(bytes32 digest);
    error UnknownBatch(bytes32 root);
    error EmptyBatch();
    error InvalidProof(bytes32 root, bytes32 leaf);
    error UnknownRequest(bytes32 requestId);
    error RequestNotPending(bytes32 requestId, Status status);
    error RequestExpired(bytes32 requestId, uint64 deadline);
    error RequestNotExpired(bytes32 requestId, uint64 deadline);
    error NotRequester(bytes32 requestId, address caller);
    error CallbackGasTooHigh(uint32 requested, uint32 maximum);
    error InvalidTimeout(uint64 timeout);
    error InputTooLarge(uint256 length);
    error InsufficientGasForCallback(uint256 available, uint256 needed);
    error TransferFailed(address to, uint256 amount);

    event ReceiptAnchored(
        bytes32 indexed digest,
        bytes32 indexed requestId,
        address indexed enclave,
        bytes32 modelHash,
        bytes32 inputHash,
        bytes32 outputHash,
        uint64 timestampMs
    );
    event BatchAnchored(bytes32 indexed root, address indexed enclave, uint32 count);
    event InferenceRequested(
        bytes32 indexed requestId,
        address indexed requester,
        bytes32 indexed modelHash,
        bytes32 inputHash,
        bytes input,
        uint32 callbackGasLimit,
        uint256 fee,
        uint64 deadline
    );
    event InferenceFulfilled(
        bytes32 indexed requestId,
        address indexed enclave,
        address indexed fulfiller,
        bytes32 outputHash,
        uint64 timestampMs,
        bool callbackSucceeded
    );
    event InferenceCancelled(bytes32 indexed requestId, address indexed requester, uint256 refund);

    constructor(address admin_, uint64 maxAttestationAgeMs_, uint64 enclaveTtl_)
        EnclaveRegistry(admin_, maxAttestationAgeMs_, enclaveTtl_)
    {}

    /// @notice The EIP-712 digest an enclave signs for `receipt` (docs/PROTOCOL.md, section 2).
    function receiptDigest(ReceiptLib.Receipt calldata receipt) external pure returns (bytes32) {
        return receipt.digest();
    }

    /// @notice Checks a receipt: signed by a live registered enclave of an approved image, for an approved model.
    /// @return enclave The signing enclave. Reverts with the reason otherwise.
    function verifyReceipt(ReceiptLib.Receipt calldata receipt, bytes calldata signature)
        public
        view
        returns (address enclave)
    {
        enclave = ReceiptLib.recover(receipt.digest(), signature);
        if (enclave == address(0)) revert InvalidSignature();
        _requireValid(enclave, receipt.modelHash);
    }

    /// @notice Anchors one verified receipt so anyone can later point to it on-chain.
    /// @return digest The receipt's EIP-712 digest, the key of anchoredReceipts.
    function anchorReceipt(ReceiptLib.Receipt calldata receipt, bytes calldata signature)
        external
        returns (bytes32 digest)
    {
        address enclave = verifyReceipt(receipt, signature);
        digest = receipt.digest();
        if (anchoredReceipts[digest] != address(0)) revert AlreadyAnchored(digest);
        anchoredReceipts[digest] = enclave;
        emit ReceiptAnchored(
            digest, receipt.requestId, enclave, receipt.modelHash, receipt.inputHash, receipt.outputHash, receipt.timestampMs
        );
    }

    /// @notice Anchors a Merkle root over `count` receipt digests, signed by the enclave that issued them.
    /// @dev Leaves are receipt digests; parents are keccak256 of the sorted pair (ReceiptLib.verifyProof).
    function anchorBatch(bytes32 root, uint32 count, bytes calldata signature) external {
        if (count == 0) revert EmptyBatch();
        if (batches[root].enclave != address(0)) revert AlreadyAnchored(root);
        address enclave = ReceiptLib.recover(ReceiptLib.batchDigest(root, count), signature);
        if (enclave == address(0)) revert InvalidSignature();
        requireLiveEnclave(enclave);
        batches[root] = Batch(enclave, count, uint64(block.timestamp));
        emit BatchAnchored(root, enclave, count);
    }

    /// @notice Proves `receipt` belongs to the anchored batch `root`, and that its model is approved.
    /// @return enclave The enclave that signed the batch.
    function proveReceipt(ReceiptLib.Receipt calldata receipt, bytes32 root, bytes32[] calldata proof)
        external
        view
        returns (address enclave)
    {
        enclave = batches[root].enclave;
        if (enclave == address(0)) revert UnknownBatch(root);
        bytes32 leaf = receipt.digest();
        if (!ReceiptLib.verifyProof(proof, root, leaf)) revert InvalidProof(root, leaf);
        if (!approvedModels[receipt.modelHash]) revert ModelNotApproved(receipt.modelHash);
    }

    /// @notice Asks for an inference of `modelHash` on `input`; the fee (msg.value) pays the fulfiller.
    /// @param input The canonical tensor encoding of the model's inputs, in its declared order.
    /// @param callbackGasLimit Gas for onInferenceResult (if the requester is a contract).
    /// @param timeout Seconds after which the requester may cancel for a refund.
    function requestInference(bytes32 modelHash, bytes calldata input, uint32 callbackGasLimit, uint64 timeout)
        external
        payable
        returns (bytes32 requestId)
    {
        if (!approvedModels[modelHash]) revert ModelNotApproved(modelHash);
        if (callbackGasLimit > MAX_CALLBACK_GAS) revert CallbackGasTooHigh(callbackGasLimit, MAX_CALLBACK_GAS);
        if (timeout < MIN_TIMEOUT || timeout > MAX_TIMEOUT) revert InvalidTimeout(timeout);
        if (input.length > MAX_INPUT_BYTES) revert InputTooLarge(input.length);
        requestId = keccak256(abi.encode(block.chainid, address(this), msg.sender, ++requestCount));
        uint64 deadline = uint64(block.timestamp) + timeout;
        bytes32 inputHash = keccak256(input);
        requests[requestId] =
            Request(msg.sender, deadline, callbackGasLimit, Status.Pending, modelHash, inputHash, msg.value);
        emit InferenceRequested(requestId, msg.sender, modelHash, inputHash, input, callbackGasLimit, msg.value, deadline);
    }

    /// @notice Fulfils a pending request with an enclave's output and receipt signature, pays the caller
    ///         the fee and calls the requester back. A reverting callback does not undo the fulfilment.
    /// @param enclave The enclave the relay claims signed (so a mismatch is reported as such).
    function fulfill(bytes32 requestId, bytes calldata output, uint64 timestampMs, address enclave, bytes calldata signature)
        external
    {
        bytes32 outputHash = keccak256(output);
        (address requester, uint256 fee, uint256 callbackGas) =
            _settle(requestId, outputHash, timestampMs, enclave, signature);
        bool callbackSucceeded = _callback(requester, callbackGas, requestId, output);
        if (fee > 0) _pay(msg.sender, fee);
        emit InferenceFulfilled(requestId, enclave, msg.sender, outputHash, timestampMs, callbackSucceeded);
    }

    /// @dev Checks the receipt of a fulfilment and marks the request fulfilled (before any external call).
    function _settle(bytes32 requestId, bytes32 outputHash, uint64 timestampMs, address enclave, bytes calldata signature)
        private
        returns (address requester, uint256 fee, uint256 callbackGas)
    {
        Request storage request = requests[requestId];
        if (request.status == Status.None) revert UnknownRequest(requestId);
        if (request.status != Status.Pending) revert RequestNotPending(requestId, request.status);
        if (block.timestamp > request.deadline) revert RequestExpired(requestId, request.deadline);
        ReceiptLib.Receipt memory receipt =
            ReceiptLib.Receipt(requestId, request.modelHash, request.inputHash, outputHash, timestampMs);
        address recovered = ReceiptLib.recover(receipt.digest(), signature);
        if (recovered == address(0)) revert InvalidSignature();
        if (recovered != enclave) revert ReceiptSignerMismatch(enclave, recovered);
        _requireValid(enclave, request.modelHash);
        request.status = Status.Fulfilled;
        fee = request.fee;
        request.fee = 0;
        return (request.requester, fee, request.callbackGasLimit);
    }

    /// @dev Calls the requester back with the gas it asked for; its failure does not revert the fulfilment.
    function _callback(address requester, uint256 callbackGas, bytes32 requestId, bytes calldata output)
        private
        returns (bool)
    {
        if (requester.code.length == 0) return false;
        uint256 needed = callbackGas + callbackGas / 63 + CALLBACK_RESERVE;
        if (gasleft() < needed) revert InsufficientGasForCallback(gasleft(), needed);
        try IInferenceConsumer(requester).onInferenceResult{gas: callbackGas}(requestId, output) {
            return true;
        } catch {
            return false;
        }
    }

    function _pay(address to, uint256 amount) private {
        (bool paid,) = to.call{value: amount}("");
        if (!paid) revert TransferFailed(to, amount);
    }

    /// @notice Cancels an unfulfilled request after its deadline and refunds the fee to the requester.
    function cancel(bytes32 requestId) external {
        Request storage request = requests[requestId];
        if (request.status == Status.None) revert UnknownRequest(requestId);
        if (request.requester != msg.sender) revert NotRequester(requestId, msg.sender);
        if (request.status != Status.Pending) revert RequestNotPending(requestId, request.status);
        if (block.timestamp <= request.deadline) revert RequestNotExpired(requestId, request.deadline);
        request.status = Status.Cancelled;
        uint256 refund = request.fee;
        request.fee = 0;
        _pay(msg.sender, refund);
        emit InferenceCancelled(requestId, msg.sender, refund);
    }

    function _requireValid(address enclave, bytes32 modelHash) private view {
        requireLiveEnclave(enclave);
        if (!approvedModels[modelHash]) revert ModelNotApproved(modelHash);
    }
}
