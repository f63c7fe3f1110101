// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {EnclaveRegistry} from "./EnclaveRegistry.sol";
import {IInferenceConsumer} from "./IInferenceConsumer.sol";
import {ReceiptLib} from "./ReceiptLib.sol";
import {TensorCodec} from "./TensorCodec.sol";

/// @title InferenceVerifier
/// @notice Verifies enclave-signed inference receipts, anchors them (singly or as Merkle batches), and
///         serves inference requests from contracts: a relay fulfils them with an attested enclave's signed
///         output and the requester is called back. Relays are trusted for liveness only: every fulfilment
///         is checked against a registered enclave of an approved image and model, the receipt names the
///         fulfiller (fulfilmentId), and the output must be the model's complete output layout.
///         A sealed request carries its input HPKE-sealed to one enclave's attested encryption key
///         (docs/PROTOCOL.md): only that enclave can answer it, and its output may be sealed to the requester.
contract InferenceVerifier is EnclaveRegistry, ReentrancyGuardTransient {
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
        address sealedTo; // the enclave a sealed request's input is sealed to; zero for a clear request
        bytes32 modelHash;
        bytes32 inputHash; // keccak256 of the input (of the ciphertext, for a sealed request)
        uint256 fee;
        bytes32 outputKey; // X25519 key the output is sealed to (sealed requests only; zero = clear output)
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
    /// Gas a plain payment may use: enough for a smart wallet's receive() that emits an event, too little to
    /// do harm. A payee that needs more is credited instead and withdraws (pull payment).
    uint256 public constant PAYMENT_GAS = 10_000;
    /// Gas spent between the gas check and the callback's first instruction: the opcodes from gasleft() to
    /// the CALL (measured: 60) and the warm CALL itself (100), with margin.
    uint256 public constant CALLBACK_OVERHEAD = 1_000;
    /// Gas fulfil needs after the callback returns, in its worst case: the callback burnt all its gas, the
    /// fee payment burnt all of PAYMENT_GAS and failed, so the fee is credited to a fresh `owed` slot and two
    /// events are emitted. Measured with a trace at 46,084 (tests/test_contract_attacks.py), rounded up.
    uint256 public constant AFTER_CALLBACK_RESERVE = 60_000;

    uint256 public requestCount;
    mapping(bytes32 requestId => Request) public requests;
    mapping(bytes32 receiptDigest => address enclave) public anchoredReceipts;
    mapping(bytes32 root => Batch) public batches;
    /// Payments that could not be pushed (the payee refused or needed more than PAYMENT_GAS): see withdraw.
    mapping(address payee => uint256 amount) public owed;

    error ReceiptSignerMismatch(address expected, address recovered);
    error IncompleteOutput(bytes32 expected, bytes32 actual);
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
    error NothingOwed(address payee);
    error TransferFailed(address to, uint256 amount);
    error NoEncryptionKey(address enclave);
    error SealedToAnotherEnclave(address expected, address actual);

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
    /// Emitted with InferenceRequested for a sealed request: its input is sealed to `enclave`, and its output
    /// will be sealed to `outputKey` (zero: the output is posted in clear).
    event InferenceSealed(bytes32 indexed requestId, address indexed enclave, bytes32 outputKey);
    event InferenceCancelled(bytes32 indexed requestId, address indexed requester, uint256 refund);
    event PaymentDeferred(address indexed payee, uint256 amount);
    event Withdrawn(address indexed payee, address indexed to, uint256 amount);

    constructor(address admin_, uint64 maxAttestationAgeMs_, uint64 enclaveTtl_)
        EnclaveRegistry(admin_, maxAttestationAgeMs_, enclaveTtl_)
    {}

    /// @notice The EIP-712 digest an enclave signs for `receipt` (docs/PROTOCOL.md, section 2).
    function receiptDigest(ReceiptLib.Receipt calldata receipt) external pure returns (bytes32) {
        return receipt.digest();
    }

    /// @notice The request id a receipt must carry for `fulfiller` to fulfil on-chain request `requestId`:
    ///         keccak256(abi.encode(requestId, fulfiller)) (protocol/onchain.py fulfilment_id). Binding the
    ///         fulfiller into what the enclave signs makes a copied pending fulfil worthless to anyone else.
    function fulfilmentId(bytes32 requestId, address fulfiller) public pure returns (bytes32) {
        return keccak256(abi.encode(requestId, fulfiller));
    }

    /// @notice The request `requestId` (status None if there is none).
    function getRequest(bytes32 requestId) external view returns (Request memory) {
        return requests[requestId];
    }

    /// @notice Checks a receipt: signed by a live registered enclave of an approved image, for an approved model.
    /// @return enclave The signing enclave. Reverts with the reason otherwise.
    function verifyReceipt(ReceiptLib.Receipt calldata receipt, bytes calldata signature)
        public
        view
        returns (address enclave)
    {
        enclave = _recover(receipt.digest(), signature);
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
    /// @dev Leaves are receipt digests; parents are keccak256 of the sorted pair (OpenZeppelin MerkleProof).
    function anchorBatch(bytes32 root, uint32 count, bytes calldata signature) external {
        if (count == 0) revert EmptyBatch();
        if (batches[root].enclave != address(0)) revert AlreadyAnchored(root);
        address enclave = _recover(ReceiptLib.batchDigest(root, count), signature);
        requireLiveEnclave(enclave);
        batches[root] = Batch(enclave, count, uint64(block.timestamp));
        emit BatchAnchored(root, enclave, count);
    }

    /// @notice Proves `receipt` belongs to the anchored batch `root`, with the same checks as verifyReceipt:
    ///         the batch's enclave must be live now (a batch anchored before a revocation proves nothing
    ///         after it) and the model approved.
    /// @return enclave The enclave that signed the batch.
    function proveReceipt(ReceiptLib.Receipt calldata receipt, bytes32 root, bytes32[] calldata proof)
        external
        view
        returns (address enclave)
    {
        enclave = batches[root].enclave;
        if (enclave == address(0)) revert UnknownBatch(root);
        bytes32 leaf = receipt.digest();
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof(root, leaf);
        _requireValid(enclave, receipt.modelHash);
    }

    /// @notice Asks for an inference of `modelHash` on `input`; the fee (msg.value) pays the fulfiller.
    /// @param input The canonical tensor encoding of the model's inputs, in its declared order.
    /// @param callbackGasLimit Gas for onInferenceResult (if the requester is a contract; 0 = no callback).
    /// @param timeout Seconds after which the requester may cancel for a refund.
    function requestInference(bytes32 modelHash, bytes calldata input, uint32 callbackGasLimit, uint64 timeout)
        external
        payable
        returns (bytes32 requestId)
    {
        return _request(modelHash, input, callbackGasLimit, timeout, address(0));
    }

    /// @notice Asks `enclave` for an inference of `modelHash` on an input only it can read; the fee
    ///         (msg.value) pays the fulfiller. Relays and chain observers see the ciphertext alone.
    /// @dev The receipt is the ordinary one, over inputHash = keccak256(sealedInput) and outputHash =
    ///      keccak256(the output posted); only `enclave` may sign it. The enclave checks the output layout
    ///      before sealing it, so fulfil skips that check for a sealed output.
    /// @param enclave A live registered enclave with an encryption key (encryptionKeyOf).
    /// @param sealedInput 0x01 || u16 aeadId || enc || HPKE-Seal(encryptionKeyOf(enclave), "verinfer.sealed.request.v1"
    ///        || 0x00 || modelHash, the canonical tensor encoding of the inputs) (docs/PROTOCOL.md).
    /// @param outputKey The requester's X25519 key for a sealed output; zero for an output in clear.
    /// @param callbackGasLimit Gas for onInferenceResult (if the requester is a contract; 0 = no callback).
    /// @param timeout Seconds after which the requester may cancel for a refund.
    function requestSealedInference(
        bytes32 modelHash,
        address enclave,
        bytes calldata sealedInput,
        bytes32 outputKey,
        uint32 callbackGasLimit,
        uint64 timeout
    ) external payable returns (bytes32 requestId) {
        requireLiveEnclave(enclave);
        if (enclaves[enclave].encryptionKey == bytes32(0)) revert NoEncryptionKey(enclave);
        requestId = _request(modelHash, sealedInput, callbackGasLimit, timeout, enclave);
        if (outputKey != bytes32(0)) requests[requestId].outputKey = outputKey;
        emit InferenceSealed(requestId, enclave, outputKey);
    }

    /// @dev Checks and records a request (sealed to `sealedTo`, or clear when it is zero).
    function _request(
        bytes32 modelHash,
        bytes calldata input,
        uint32 callbackGasLimit,
        uint64 timeout,
        address sealedTo
    ) private returns (bytes32 requestId) {
        if (modelLayouts[modelHash] == bytes32(0)) revert ModelNotApproved(modelHash);
        if (callbackGasLimit > MAX_CALLBACK_GAS) revert CallbackGasTooHigh(callbackGasLimit, MAX_CALLBACK_GAS);
        if (timeout < MIN_TIMEOUT || timeout > MAX_TIMEOUT) revert InvalidTimeout(timeout);
        if (input.length > MAX_INPUT_BYTES) revert InputTooLarge(input.length);
        requestId = keccak256(abi.encode(block.chainid, address(this), msg.sender, ++requestCount));
        uint64 deadline = uint64(block.timestamp) + timeout;
        bytes32 inputHash = keccak256(input);
        Request storage request = requests[requestId];
        // Field by field rather than a struct literal: a literal would also write the zero outputKey of a
        // clear request (a cold SSTORE, 2,200 gas for nothing).
        request.requester = msg.sender;
        request.deadline = deadline;
        request.callbackGasLimit = callbackGasLimit;
        request.status = Status.Pending;
        request.sealedTo = sealedTo;
        request.modelHash = modelHash;
        request.inputHash = inputHash;
        request.fee = msg.value;
        emit InferenceRequested(requestId, msg.sender, modelHash, inputHash, input, callbackGasLimit, msg.value, deadline);
    }

    /// @notice Fulfils a pending request with an enclave's output and receipt signature, calls the requester
    ///         back and pays the caller the fee. A reverting callback does not undo the fulfilment, but a
    ///         callback that could not be given its full gas reverts the whole fulfil.
    /// @dev The receipt must be over Receipt(fulfilmentId(requestId, msg.sender), modelHash, inputHash,
    ///      keccak256(output), timestampMs), and `output` must have exactly the model's approved layout (unless
    ///      it is sealed to the requester's outputKey). A sealed request takes only its enclave's receipt.
    /// @param enclave The enclave the relay claims signed (so a mismatch is reported as such).
    function fulfill(bytes32 requestId, bytes calldata output, uint64 timestampMs, address enclave, bytes calldata signature)
        external
        nonReentrant
    {
        bytes32 outputHash = keccak256(output);
        (address requester, uint256 fee, uint256 callbackGas) =
            _settle(requestId, output, outputHash, timestampMs, enclave, signature);
        bool callbackSucceeded = _callback(requester, callbackGas, requestId, output);
        emit InferenceFulfilled(requestId, enclave, msg.sender, outputHash, timestampMs, callbackSucceeded);
        _pay(msg.sender, fee);
    }

    /// @dev Checks a fulfilment and marks the request fulfilled (before any external call).
    function _settle(
        bytes32 requestId,
        bytes calldata output,
        bytes32 outputHash,
        uint64 timestampMs,
        address enclave,
        bytes calldata signature
    ) private returns (address requester, uint256 fee, uint256 callbackGas) {
        Request storage request = requests[requestId];
        Status status = request.status;
        if (status == Status.None) revert UnknownRequest(requestId);
        if (status != Status.Pending) revert RequestNotPending(requestId, status);
        if (block.timestamp > request.deadline) revert RequestExpired(requestId, request.deadline);
        address sealedTo = request.sealedTo;
        _requireCompleteOutput(request.modelHash, output, sealedTo != address(0) && request.outputKey != bytes32(0));
        address recovered = _fulfilmentSigner(requestId, request, outputHash, timestampMs, signature);
        if (recovered != enclave) revert ReceiptSignerMismatch(enclave, recovered);
        if (sealedTo != address(0) && sealedTo != enclave) revert SealedToAnotherEnclave(sealedTo, enclave);
        requireLiveEnclave(enclave);
        request.status = Status.Fulfilled;
        fee = request.fee;
        request.fee = 0;
        return (request.requester, fee, request.callbackGasLimit);
    }

    /// @dev The signer of the receipt that lets msg.sender fulfil `requestId` with output `outputHash`.
    function _fulfilmentSigner(
        bytes32 requestId,
        Request storage request,
        bytes32 outputHash,
        uint64 timestampMs,
        bytes calldata signature
    ) private view returns (address) {
        ReceiptLib.Receipt memory receipt = ReceiptLib.Receipt(
            fulfilmentId(requestId, msg.sender), request.modelHash, request.inputHash, outputHash, timestampMs
        );
        return _recover(receipt.digest(), signature);
    }

    /// @dev Reverts unless the model is still approved and `output` holds exactly its outputs (names, dtypes,
    ///      order); a sealed output is ciphertext, whose layout the enclave checked before sealing it.
    function _requireCompleteOutput(bytes32 modelHash, bytes calldata output, bool sealedOutput) private view {
        bytes32 expected = modelLayouts[modelHash];
        if (expected == bytes32(0)) revert ModelNotApproved(modelHash);
        if (sealedOutput) return;
        bytes32 actual = TensorCodec.layoutHash(output);
        if (actual != expected) revert IncompleteOutput(expected, actual);
    }

    /// @dev Calls the requester back with exactly the gas it asked for; its failure does not revert the
    ///      fulfilment. The calldata is built first, so its memory expansion (large for a large output) is
    ///      paid before the check; then EIP-150's rule (a CALL forwards at most 63/64 of what is left) is
    ///      applied to what is left. The return data is never copied, so a callback cannot return-bomb us.
    function _callback(address requester, uint256 callbackGas, bytes32 requestId, bytes calldata output)
        private
        returns (bool success)
    {
        if (callbackGas == 0 || requester.code.length == 0) return false;
        bytes memory data = abi.encodeCall(IInferenceConsumer.onInferenceResult, (requestId, output));
        uint256 needed = callbackGas + callbackGas / 63 + 1 + CALLBACK_OVERHEAD + AFTER_CALLBACK_RESERVE;
        uint256 available = gasleft();
        if (available < needed) revert InsufficientGasForCallback(available, needed);
        assembly ("memory-safe") {
            success := call(callbackGas, requester, 0, add(data, 0x20), mload(data), 0, 0)
        }
    }

    /// @dev Pays `amount` to `to` with a bounded stipend and no return-data copy; if the payee refuses (or
    ///      needs more gas), credits it instead, so a payee can never block a fulfilment or a cancel.
    function _pay(address to, uint256 amount) private {
        if (amount == 0) return;
        bool paid;
        uint256 stipend = PAYMENT_GAS;
        assembly ("memory-safe") {
            paid := call(stipend, to, amount, 0, 0, 0, 0)
        }
        if (!paid) {
            owed[to] += amount;
            emit PaymentDeferred(to, amount);
        }
    }

    /// @notice Sends everything credited to the caller (see PaymentDeferred) to `to`, with all gas left.
    function withdraw(address payable to) external nonReentrant {
        uint256 amount = owed[msg.sender];
        if (amount == 0) revert NothingOwed(msg.sender);
        owed[msg.sender] = 0;
        emit Withdrawn(msg.sender, to, amount);
        bool sent;
        assembly ("memory-safe") {
            sent := call(gas(), to, amount, 0, 0, 0, 0)
        }
        if (!sent) revert TransferFailed(to, amount);
    }

    /// @notice Cancels an unfulfilled request after its deadline and refunds its fee to the requester (only).
    function cancel(bytes32 requestId) external nonReentrant {
        Request storage request = requests[requestId];
        Status status = request.status;
        if (status == Status.None) revert UnknownRequest(requestId);
        if (request.requester != msg.sender) revert NotRequester(requestId, msg.sender);
        if (status != Status.Pending) revert RequestNotPending(requestId, status);
        if (block.timestamp <= request.deadline) revert RequestNotExpired(requestId, request.deadline);
        request.status = Status.Cancelled;
        uint256 refund = request.fee;
        request.fee = 0;
        emit InferenceCancelled(requestId, msg.sender, refund);
        _pay(msg.sender, refund);
    }
}
