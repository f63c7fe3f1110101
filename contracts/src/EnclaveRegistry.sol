// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable, Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

/// @title EnclaveRegistry
/// @notice Which enclave keys may sign receipts: keys attested (off-chain, by a trusted attestation-verifier
///         key) to run an approved image. Verifying the P-384 Nitro document on-chain would cost tens of
///         millions of gas, so a verifier checks it and signs an EIP-712 EnclaveRegistration instead.
/// @dev The admin is an Ownable2Step owner: a mistyped new admin cannot take the registry, because the new
///      owner must accept; renouncing is disabled because an ownerless registry could never revoke anything.
abstract contract EnclaveRegistry is Ownable2Step, EIP712 {
    struct Enclave {
        bytes32 imageId; // keccak256(PCR0 || PCR1 || PCR2); zero when not registered
        uint64 expiresAt; // seconds
        uint64 imageEpoch; // the image's approval epoch at registration: live only while it is still current
        bytes32 userDataHash; // keccak256 of the attested user_data (manifest digest [|| encryption key])
        bytes32 encryptionKey; // the attested X25519 key inputs are sealed to; zero when the enclave has none
    }

    /// Approval of one image measurement. `epoch` counts revocations: an enclave registered under an
    /// older epoch stays dead even if the image is approved again (it must re-register with a fresh attestation).
    struct Image {
        bool approved;
        uint64 epoch;
    }

    bytes32 public constant REGISTRATION_TYPEHASH = keccak256(
        "EnclaveRegistration(bytes publicKey,bytes32 imageId,uint64 attestationTimestampMs,bytes32 userDataHash,bytes32 encryptionKey)"
    );

    uint64 public maxAttestationAgeMs;
    uint64 public enclaveTtl;
    mapping(bytes32 imageId => Image) public images;
    /// keccak256 of the model's output layout (protocol/onchain.py output_layout); zero = not approved.
    mapping(bytes32 modelHash => bytes32 layout) public modelLayouts;
    mapping(address verifier => bool) public attestationVerifiers;
    mapping(address enclave => Enclave) public enclaves;
    /// Registration digests already accepted: a verifier's signature registers a key once.
    mapping(bytes32 digest => bool) public usedRegistrations;
    /// Keys removed by the admin: never accepted again, whatever a verifier signs.
    mapping(address enclave => bool) public bannedEnclaves;

    error ZeroAddress();
    error InvalidSignature();
    error RenounceDisabled();
    error ZeroOutputLayout(bytes32 modelHash);
    error ImageNotApproved(bytes32 imageId);
    error UntrustedVerifier(address signer);
    error StaleAttestation(uint64 attestationTimestampMs, uint256 nowMs);
    error AttestationFromTheFuture(uint64 attestationTimestampMs, uint256 nowMs);
    error InvalidPublicKey(uint256 length);
    error RegistrationReplayed(bytes32 digest);
    error EnclaveBanned(address enclave);
    error UnknownEnclave(address signer);
    error EnclaveExpired(address enclave, uint64 expiredAt);
    error EnclaveImageRevoked(address enclave, bytes32 imageId);
    error ModelNotApproved(bytes32 modelHash);

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
        bytes32 encryptionKey,
        uint64 expiresAt
    );
    event EnclaveRemoved(address indexed enclave);

    constructor(address admin_, uint64 maxAttestationAgeMs_, uint64 enclaveTtl_)
        Ownable(admin_)
        EIP712("verinfer-registry", "1")
    {
        maxAttestationAgeMs = maxAttestationAgeMs_;
        enclaveTtl = enclaveTtl_;
        emit ParametersChanged(maxAttestationAgeMs_, enclaveTtl_);
    }

    /// @notice Always reverts: without an owner nothing could ever be revoked again.
    function renounceOwnership() public view override onlyOwner {
        revert RenounceDisabled();
    }

    /// @notice The EIP-712 domain of registrations: bound to this chain and this contract.
    function registrationDomainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The digest an attestation verifier signs to register `publicKey`.
    function registrationDigest(
        bytes calldata publicKey,
        bytes32 imageId,
        uint64 attestationTimestampMs,
        bytes32 userDataHash,
        bytes32 encryptionKey
    ) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    REGISTRATION_TYPEHASH, keccak256(publicKey), imageId, attestationTimestampMs, userDataHash, encryptionKey
                )
            )
        );
    }

    /// @notice The X25519 public key `enclave` attested for sealed requests (docs/PROTOCOL.md): zero when it is
    ///         not registered or registered without one. Liveness is a separate question (requireLiveEnclave).
    function encryptionKeyOf(address enclave) external view returns (bytes32) {
        return enclaves[enclave].encryptionKey;
    }

    /// @notice Whether `imageId` is approved now.
    function approvedImages(bytes32 imageId) external view returns (bool) {
        return images[imageId].approved;
    }

    /// @notice Whether `modelHash` is approved now (it has an output layout).
    function approvedModels(bytes32 modelHash) external view returns (bool) {
        return modelLayouts[modelHash] != bytes32(0);
    }

    /// @notice Registers (or refreshes, with a newer attestation) an enclave key attested to run `imageId`.
    /// @dev Each signed registration is accepted once (its digest is recorded), and a key the admin removed
    ///      is refused for good: otherwise the same verifier signature would put a removed key straight back.
    /// @param publicKey The enclave's uncompressed secp256k1 key X || Y (64 bytes), as in the attestation.
    /// @param imageId keccak256(PCR0 || PCR1 || PCR2) of the attested image.
    /// @param attestationTimestampMs The attestation document's timestamp.
    /// @param userDataHash keccak256 of the document's user_data (the model manifest digest, then the encryption
    ///        key if any). Covered by the verifier's signature and kept in the record as evidence of which model
    ///        set the enclave attested.
    /// @param encryptionKey The X25519 key the document binds (user_data[32:64]) for sealed requests; zero
    ///        when its user_data is only the manifest digest. Covered by the verifier's signature.
    /// @param verifierSignature 65-byte signature of registrationDigest(...) by a trusted attestation verifier.
    /// @return enclave The enclave's address, which signs receipts.
    function registerEnclave(
        bytes calldata publicKey,
        bytes32 imageId,
        uint64 attestationTimestampMs,
        bytes32 userDataHash,
        bytes32 encryptionKey,
        bytes calldata verifierSignature
    ) external returns (address enclave) {
        if (publicKey.length != 64) revert InvalidPublicKey(publicKey.length);
        bytes32 digest = registrationDigest(publicKey, imageId, attestationTimestampMs, userDataHash, encryptionKey);
        address verifier = _recover(digest, verifierSignature);
        if (!attestationVerifiers[verifier]) revert UntrustedVerifier(verifier);
        if (usedRegistrations[digest]) revert RegistrationReplayed(digest);
        enclave = address(uint160(uint256(keccak256(publicKey))));
        if (bannedEnclaves[enclave]) revert EnclaveBanned(enclave);
        Image memory image = images[imageId];
        if (!image.approved) revert ImageNotApproved(imageId);
        uint256 nowMs = block.timestamp * 1000;
        if (attestationTimestampMs > nowMs + 300_000) revert AttestationFromTheFuture(attestationTimestampMs, nowMs);
        if (attestationTimestampMs + maxAttestationAgeMs < nowMs) revert StaleAttestation(attestationTimestampMs, nowMs);
        usedRegistrations[digest] = true;
        uint64 expiresAt = uint64(block.timestamp) + enclaveTtl;
        enclaves[enclave] = Enclave(imageId, expiresAt, image.epoch, userDataHash, encryptionKey);
        emit EnclaveRegistered(enclave, imageId, verifier, attestationTimestampMs, userDataHash, encryptionKey, expiresAt);
    }

    /// @notice Reverts unless `enclave` is registered, unexpired, and its image is still approved in the
    ///         approval epoch it registered under.
    function requireLiveEnclave(address enclave) public view {
        Enclave storage e = enclaves[enclave];
        bytes32 imageId = e.imageId;
        if (imageId == bytes32(0)) revert UnknownEnclave(enclave);
        uint64 expiresAt = e.expiresAt;
        if (block.timestamp > expiresAt) revert EnclaveExpired(enclave, expiresAt);
        Image memory image = images[imageId];
        if (!image.approved || image.epoch != e.imageEpoch) revert EnclaveImageRevoked(enclave, imageId);
    }

    /// @notice Approves an image measurement; its attested enclaves may then register.
    function approveImage(bytes32 imageId) external onlyOwner {
        images[imageId].approved = true;
        emit ImageApproved(imageId);
    }

    /// @notice Revokes an image: every enclave registered with it stops being accepted at once, and stays
    ///         dead if the image is approved again (the epoch moves on; they must re-register).
    function revokeImage(bytes32 imageId) external onlyOwner {
        Image storage image = images[imageId];
        image.approved = false;
        ++image.epoch;
        emit ImageRevoked(imageId);
    }

    /// @notice Approves a model (sha256 of its ONNX file) for receipts and requests, with its complete
    ///         output layout: fulfil refuses outputs of any other shape (a receipt over a subset of them).
    /// @param outputLayout protocol/onchain.py output_layout of the model's outputs, in declared order.
    function approveModel(bytes32 modelHash, bytes32 outputLayout) external onlyOwner {
        if (outputLayout == bytes32(0)) revert ZeroOutputLayout(modelHash);
        modelLayouts[modelHash] = outputLayout;
        emit ModelApproved(modelHash);
    }

    /// @notice Revokes a model: its receipts stop verifying and it can no longer be requested.
    function revokeModel(bytes32 modelHash) external onlyOwner {
        delete modelLayouts[modelHash];
        emit ModelRevoked(modelHash);
    }

    /// @notice Trusts `verifier` to sign enclave registrations.
    function addVerifier(address verifier) external onlyOwner {
        if (verifier == address(0)) revert ZeroAddress();
        attestationVerifiers[verifier] = true;
        emit VerifierAdded(verifier);
    }

    /// @notice Stops trusting `verifier`; enclaves it registered stay until they expire or are removed.
    function removeVerifier(address verifier) external onlyOwner {
        attestationVerifiers[verifier] = false;
        emit VerifierRemoved(verifier);
    }

    /// @notice Removes one enclave key immediately and bans it: no registration can bring it back.
    function removeEnclave(address enclave) external onlyOwner {
        delete enclaves[enclave];
        bannedEnclaves[enclave] = true;
        emit EnclaveRemoved(enclave);
    }

    /// @notice Sets how old an attestation may be at registration and how long a registration lasts.
    function setParameters(uint64 maxAttestationAgeMs_, uint64 enclaveTtl_) external onlyOwner {
        maxAttestationAgeMs = maxAttestationAgeMs_;
        enclaveTtl = enclaveTtl_;
        emit ParametersChanged(maxAttestationAgeMs_, enclaveTtl_);
    }

    /// @dev The signer of `digest`; reverts InvalidSignature for a malformed or malleable (high-s) signature.
    function _recover(bytes32 digest, bytes calldata signature) internal pure returns (address signer) {
        ECDSA.RecoverError err;
        (signer, err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err != ECDSA.RecoverError.NoError) revert InvalidSignature();
    }

    /// @dev Reverts unless `enclave` is live and `modelHash` approved: the one check behind every receipt.
    function _requireValid(address enclave, bytes32 modelHash) internal view {
        requireLiveEnclave(enclave);
        if (modelLayouts[modelHash] == bytes32(0)) revert ModelNotApproved(modelHash);
    }
}
