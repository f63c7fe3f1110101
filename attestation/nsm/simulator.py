"""A simulated NSM device: answers the same CBOR requests as /dev/nsm, signing with the simulator PKI.

Documents are laid out like hardware's: untagged COSE_Sign1, protected header {1: -35}, empty
unprotected map, all nine payload keys in hardware order, PCRs 0-15 (plus any locked higher index),
raw r||s signature. PCR0-2 hold the image measurement; PCRs 0-15 are locked, 16-31 are extendable.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .. import cbor
from ..cose import ES384_PROTECTED, encode_sign1, sig_structure
from ..document import AttestationDocument
from ..measure import ZERO_PCR, extend
from ..sim_pki import SimulatorPki
from .client import MAX_USER_FIELD, NsmErrorCode

NSM_VERSION = (1, 0, 0)
MAX_PCRS = 32
LOCKED_AT_BOOT = 16
RANDOM_BYTES = 256


class _Reject(Exception):
    def __init__(self, code: NsmErrorCode) -> None:
        self.code = code


class SimulatedNsmDevice:
    """Callable as a transport: takes a raw CBOR request, returns a raw CBOR response."""

    def __init__(
        self,
        pki: SimulatorPki,
        pcrs: Mapping[int, bytes] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        indefinite_payload: bool = False,
    ) -> None:
        self.pki = pki
        self.module_id = f"i-sim{secrets.token_hex(7)}-enc{secrets.token_hex(8)}"
        self._clock = clock
        self._indefinite = indefinite_payload
        self._lock = threading.Lock()
        self._pcrs = [ZERO_PCR] * MAX_PCRS
        for index, value in (pcrs or {}).items():
            if not 0 <= index < LOCKED_AT_BOOT or len(value) != len(ZERO_PCR):
                raise ValueError(f"boot PCR{index} must be 48 bytes at an index below {LOCKED_AT_BOOT}")
            self._pcrs[index] = bytes(value)
        self._locked = [index < LOCKED_AT_BOOT for index in range(MAX_PCRS)]

    def __call__(self, request: bytes) -> bytes:
        try:
            message = cbor.loads(request)
            kind, body = (message, None) if isinstance(message, str) else _single(message)
            handler = self._handlers().get(kind)
            if handler is None:
                raise _Reject(NsmErrorCode.INVALID_OPERATION)
            with self._lock:
                answer = handler(body)
        except cbor.CborError:
            return bytes(cbor2.dumps({"Error": NsmErrorCode.INVALID_ARGUMENT.value}))
        except _Reject as reject:
            return bytes(cbor2.dumps({"Error": reject.code.value}))
        return bytes(cbor2.dumps(answer if answer is not None else kind))

    def _handlers(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "Attestation": self._attestation,
            "DescribeNSM": self._describe,
            "GetRandom": lambda _body: {"GetRandom": {"random": os.urandom(RANDOM_BYTES)}},
            "DescribePCR": self._describe_pcr,
            "ExtendPCR": self._extend_pcr,
            "LockPCR": self._lock_pcr,
            "LockPCRs": self._lock_pcrs,
        }

    def _describe(self, _body: Any) -> Any:
        return {
            "DescribeNSM": {
                "version_major": NSM_VERSION[0],
                "version_minor": NSM_VERSION[1],
                "version_patch": NSM_VERSION[2],
                "module_id": self.module_id,
                "max_pcrs": MAX_PCRS,
                "locked_pcrs": [i for i in range(MAX_PCRS) if self._locked[i]],
                "digest": "SHA384",
            }
        }

    def _index(self, body: Any) -> int:
        index = body.get("index") if isinstance(body, dict) else None
        if type(index) is not int:
            raise _Reject(NsmErrorCode.INVALID_ARGUMENT)
        if not 0 <= index < MAX_PCRS:
            raise _Reject(NsmErrorCode.INVALID_INDEX)
        return index

    def _describe_pcr(self, body: Any) -> Any:
        index = self._index(body)
        return {"DescribePCR": {"lock": self._locked[index], "data": self._pcrs[index]}}

    def _extend_pcr(self, body: Any) -> Any:
        index = self._index(body)
        data = body.get("data")
        if not isinstance(data, bytes):
            raise _Reject(NsmErrorCode.INVALID_ARGUMENT)
        if len(data) > MAX_USER_FIELD:
            raise _Reject(NsmErrorCode.INPUT_TOO_LARGE)
        if self._locked[index]:
            raise _Reject(NsmErrorCode.READ_ONLY_INDEX)
        self._pcrs[index] = extend(self._pcrs[index], data)
        return {"ExtendPCR": {"data": self._pcrs[index]}}

    def _lock_pcr(self, body: Any) -> Any:
        self._locked[self._index(body)] = True
        return None

    def _lock_pcrs(self, body: Any) -> Any:
        range_ = body.get("range") if isinstance(body, dict) else None
        if type(range_) is not int or not 0 <= range_ <= MAX_PCRS:
            raise _Reject(NsmErrorCode.INVALID_ARGUMENT)
        for index in range(range_):
            self._locked[index] = True
        return None

    def _attestation(self, body: Any) -> Any:
        if not isinstance(body, dict) or set(body) - {"user_data", "nonce", "public_key"}:
            raise _Reject(NsmErrorCode.INVALID_ARGUMENT)
        fields = {name: body.get(name) for name in ("user_data", "nonce", "public_key")}
        for value in fields.values():
            if value is not None and not isinstance(value, bytes):
                raise _Reject(NsmErrorCode.INVALID_ARGUMENT)
            if value is not None and len(value) > MAX_USER_FIELD:
                raise _Reject(NsmErrorCode.INPUT_TOO_LARGE)
        return {"Attestation": {"document": self.sign_document(**fields)}}

    def sign_document(self, user_data: bytes | None, nonce: bytes | None, public_key: bytes | None) -> bytes:
        now_ms = int(self._clock() * 1000)
        key, leaf_der = self.pki.leaf(self.module_id, datetime.fromtimestamp(now_ms / 1000, UTC))
        document = AttestationDocument(
            module_id=self.module_id,
            digest="SHA384",
            timestamp_ms=now_ms,
            pcrs={i: self._pcrs[i] for i in range(MAX_PCRS) if i < LOCKED_AT_BOOT or self._locked[i]},
            certificate=leaf_der,
            cabundle=self.pki.cabundle(),
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
        )
        payload = document.encode_payload(indefinite=self._indefinite)
        der_signature = key.sign(sig_structure(ES384_PROTECTED, payload), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der_signature)
        return encode_sign1(ES384_PROTECTED, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big"))


def _single(message: Any) -> tuple[str, Any]:
    if isinstance(message, dict) and len(message) == 1:
        ((kind, body),) = message.items()
        if isinstance(kind, str):
            return kind, body
    raise _Reject(NsmErrorCode.INVALID_ARGUMENT)
