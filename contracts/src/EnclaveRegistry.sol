// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ReceiptLib} from "./ReceiptLib.sol";

/// @title EnclaveRegistry
/// @notice Which enclave keys may sign receipts: keys attested (off-chain, by a trusted attestation-verifier
///         key) to run an approved image. Verifying the P-384 Nitro document on-chain would cost tens of
///         millions of gas, so a verifier checks it and signs an EIP-712 EnclaveRegistration instead.
abstract contract EnclaveRegistry {
    struct Enclave {
        bytes32 imageId; // keccak256(PCR0 || PCR1 || PCR2); zero when not registered
        uint64 expiresAt; // seconds
        bytes32 userDataHash; // keccak256 of the attested user_data (the model manifest digest)
    }

    bytes32 public constant REGISTRATION_TYPEHASH = keccak256(
        "EnclaveRegistration(bytes publicKey,bytes32 imageId,uint64 attestationTimestampMs,bytes32 userDataHash)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    address public admin;
    uint64 public maxAttestationAgeMs;
    uint64 public enclaveTtl;
    mapping(bytes32 imageId => bool) public approvedImages;
    mapping(bytes32 modelHash => bool) public approvedModels;
    mapping(address verifier => bool) public attestationVerifiers;
    mapping(address enclave => Enclave) public enclaves;

    error NotAdmin(address caller);
    error ZeroAddress();
    error ImageNotApproved(bytes32 imageId);
    error UntrustedVerifier(address signer);
    error StaleAttestation(uint64 attestationTimestampMs, uint256 nowMs);
    error AttestationFromTheFuture(uint64 attestationTimestampMs, uint256 nowMs);
    error InvalidPublicKey(uint256 length);
    error UnknownEnclave(address signer);
    error EnclaveExpired(address enclave, uint64 expiredAt);
    error EnclaveImageRevoked(address enclave, bytes32 imageId);
    error ModelNotApproved(bytes32 modelHash);

    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);
    event ParametersChanged(uint64 maxAttestationAgeMs, uint64 enclaveTtl);
    event ImageApproved(bytes32 indexed imageId);
    event ImageRevoked(bytes32 indexed imageId);
    event ModelApproved(bytes32 indexed modelHash);
    event ModelRevoked(bytes32 indexed modelHash);
    event VerifierAdded(address indexed verifier);
    event VerifierRemoved(address indexed verifier);
    event EnclaveRegistered(
        address indexed enclave,
        bytes32 indexed imageId,
        address indexed verifier,
        uint64 attestationTimestampMs,
        bytes32 userDataHash,
        uint64 expiresAt
    );
    event EnclaveRemoved(address indexed enclave);

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    constructor(address admin_, uint64 maxAttestationAgeMs_, uint64 enclaveTtl_) {
        if (admin_ == address(0)) revert ZeroAddress();
        admin = admin_;
        maxAttestationAgeMs = maxAttestationAgeMs_;
        enclaveTtl = enclaveTtl_;
        emit AdminTransferred(address(0), admin_);
        emit ParametersChanged(maxAttestationAgeMs_, enclaveTtl_);
    }

    /// @notice The EIP-712 domain of registrations: bound to this chain and this contract.
    function registrationDomainSeparator() public view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("verinfer-registry"), keccak256("1"), block.chainid, address(this))
        );
    }

    /// @notice The digest an attestation verifier signs to register `publicKey`.
    function registrationDigest(bytes calldata publicKey, bytes32 imageId, uint64 attestationTimestampMs, bytes32 userDataHash)
        public
        view
        returns (bytes32)
    {
        bytes32 structHash =
            keccak256(abi.encode(REGISTRATION_TYPEHASH, keccak256(publicKey), imageId, attestationTimestampMs, userDataHash));
        return keccak256(abi.encodePacked(hex"1901", registrationDomainSeparator(), structHash));
    }

    /// @notice Registers (or refreshes) an enclave key attested to run the approved image `imageId`.
    /// @param publicKey The enclave's uncompressed secp256k1 key X || Y (64 bytes), as in the attestation.
    /// @param imageId keccak256(PCR0 || PCR1 || PCR2) of the attested image.
    /// @param attestationTimestampMs The attestation document's timestamp.
    /// @param userDataHash keccak256 of the document's user_data (the model manifest digest).
    /// @param verifierSignature 65-byte signature of registrationDigest(...) by a trusted attestation verifier.
    /// @return enclave The enclave's address, which signs receipts.
    function registerEnclave(
        bytes calldata publicKey,
        bytes32 imageId,
        uint64 attestationTimestampMs,
        bytes32 userDataHash,
        bytes calldata verifierSignature
    ) external returns (address enclave) {
        if (publicKey.length != 64) revert InvalidPublicKey(publicKey.length);
        address verifier = ReceiptLib.recover(
            registrationDigest(publicKey, imageId, attestationTimestampMs, userDataHash), verifierSignature
        );
        if (verifier == address(0) || !attestationVerifiers[verifier]) revert UntrustedVerifier(verifier);
        if (!approvedImages[imageId]) revert ImageNotApproved(imageId);
        uint256 nowMs = block.timestamp * 1000;
        if (attestationTimestampMs > nowMs + 300_000) revert AttestationFromTheFuture(attestationTimestampMs, nowMs);
        if (attestationTimestampMs + maxAttestationAgeMs < nowMs) revert StaleAttestation(attestationTimestampMs, nowMs);
        enclave = address(uint160(uint256(keccak256(publicKey))));
        uint64 expiresAt = uint64(block.timestamp) + enclaveTtl;
        enclaves[enclave] = Enclave(imageId, expiresAt, userDataHash);
        emit EnclaveRegistered(enclave, imageId, verifier, attestationTimestampMs, userDataHash, expiresAt);
    }

    /// @notice Reverts unless `enclave` is registered, unexpired and of a still-approved image.
    function requireLiveEnclave(address enclave) public view {
        Enclave memory e = enclaves[enclave];
        if (e.imageId == bytes32(0)) revert UnknownEnclave(enclave);
        if (block.timestamp > e.expiresAt) revert EnclaveExpired(enclave, e.expiresAt);
        if (!approvedImages[e.imageId]) revert EnclaveImageRevoked(enclave, e.imageId);
    }

    /// @notice Approves an image measurement; its attested enclaves may then register.
    function approveImage(bytes32 imageId) external onlyAdmin {
        approvedImages[imageId] = true;
        emit ImageApproved(imageId);
    }

    /// @notice Revokes an image: every enclave registered with it stops being accepted at once.
    function revokeImage(bytes32 imageId) external onlyAdmin {
        approvedImages[imageId] = false;
        emit ImageRevoked(imageId);
    }

    /// @notice Approves a model (sha256 of its ONNX file) for receipts and requests.
    function approveModel(bytes32 modelHash) external onlyAdmin {
        approvedModels[modelHash] = true;
        emit ModelApproved(modelHash);
    }

    /// @notice Revokes a model: its receipts stop verifying and it can no longer be requested.
    function revokeModel(bytes32 modelHash) external onlyAdmin {
        approvedModels[modelHash] = false;
        emit ModelRevoked(modelHash);
    }

    /// @notice Trusts `verifier` to sign enclave registrations.
    function addVerifier(address verifier) external onlyAdmin {
        if (verifier == address(0)) revert ZeroAddress();
        attestationVerifiers[verifier] = true;
        emit VerifierAdded(verifier);
    }

    /// @notice Stops trusting `verifier`; enclaves it registered stay until they expire or are removed.
    function removeVerifier(address verifier) external onlyAdmin {
        attestationVerifiers[verifier] = false;
        emit VerifierRemoved(verifier);
    }

    /// @notice Removes one enclave key immediately.
    function removeEnclave(address enclave) external onlyAdmin {
        delete enclaves[enclave];
        emit EnclaveRemoved(enclave);
    }

    /// @notice Sets how old an attestation may be at registration and how long a registration lasts.
    function setParameters(uint64 maxAttestationAgeMs_, uint64 enclaveTtl_) external onlyAdmin {
        maxAttestationAgeMs = maxAttestationAgeMs_;
        enclaveTtl = enclaveTtl_;
        emit ParametersChanged(maxAttestationAgeMs_, enclaveTtl_);
    }

    /// @notice Hands the admin role to `newAdmin`.
    function transferAdmin(address newAdmin) external onlyAdmin {
        if (newAdmin == address(0)) revert ZeroAddress();
        emit AdminTransferred(admin, newAdmin);
        admin = newAdmin;
    }
}
