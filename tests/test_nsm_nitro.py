"""The /dev/nsm transport: ioctl packing, response handling and error mapping, against a fake driver.

The fake driver does what the kernel does: reads the request from the address in the struct, writes the
response to the response address, and stores its length back into the struct.
"""

from __future__ import annotations

import ctypes
import errno
import struct

import cbor2
import pytest

from attestation import Policy, verify
from attestation.nsm import NsmClient, NsmError, NsmUnavailableError, open_nsm
from attestation.nsm.client import MAX_REQUEST, MAX_RESPONSE, decode_response
from attestation.nsm.nitro import NSM_IOCTL_RAW, NitroTransport, pack_raw, response_length
from attestation.nsm.simulator import SimulatedNsmDevice
from attestation.sim_pki import SimulatorPki


class FakeDriver:
    def __init__(
        self,
        device: SimulatedNsmDevice | None = None,
        *,
        fail_errno: int | None = None,
        claim_length: int | None = None,
    ) -> None:
        self.device = device
        self.fail_errno = fail_errno
        self.claim_length = claim_length
        self.calls: list[tuple[int, int]] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        assert request == NSM_IOCTL_RAW == 0xC0200A00
        assert len(arg) == 32
        req_addr, req_len, resp_addr, resp_cap = struct.unpack("=QQQQ", arg)
        self.calls.append((req_len, resp_cap))
        if self.fail_errno is not None:
            raise OSError(self.fail_errno, "fake driver failure")
        request_bytes = ctypes.string_at(req_addr, req_len)
        assert self.device is not None
        response = self.device(request_bytes)
        assert len(response) <= resp_cap
        ctypes.memmove(resp_addr, response, len(response))
        arg[:] = struct.pack("=QQQQ", req_addr, req_len, resp_addr, self.claim_length or len(response))
        return 0


@pytest.fixture
def device_file(tmp_path):
    path = tmp_path / "nsm"
    path.write_bytes(b"")
    return str(path)


def test_pack_layout() -> None:
    raw = pack_raw(1, 2, 3, 4)
    assert bytes(raw) == struct.pack("<QQQQ", 1, 2, 3, 4)
    assert response_length(raw) == 4


def test_full_attestation_through_the_ioctl_path(device_file: str, sim_pki: SimulatorPki) -> None:
    driver = FakeDriver(SimulatedNsmDevice(sim_pki, {0: b"\x09" * 48}))
    nsm = NsmClient(NitroTransport(device_file, ioctl=driver), simulated=False)
    document = nsm.attestation(public_key=b"p" * 64, nonce=b"n")
    assert verify(document, Policy(root=sim_pki.root, expected_nonce=b"n")).public_key == b"p" * 64
    assert driver.calls and driver.calls[0][1] == MAX_RESPONSE
    assert len(nsm.get_random()) == 256


@pytest.mark.parametrize(
    ("number", "code"),
    [
        (errno.EINVAL, "InvalidArgument"),
        (errno.EMSGSIZE, "InputTooLarge"),
        (errno.ENOMEM, "BufferTooSmall"),
        (errno.EIO, "InternalError"),
    ],
)
def test_ioctl_errors_map_to_nsm_codes(device_file: str, number: int, code: str) -> None:
    transport = NitroTransport(device_file, ioctl=FakeDriver(fail_errno=number))
    with pytest.raises(NsmError) as info:
        NsmClient(transport, simulated=False).describe()
    assert info.value.code == code


def test_oversized_request_never_reaches_the_driver(device_file: str) -> None:
    driver = FakeDriver(fail_errno=errno.EIO)
    with pytest.raises(NsmError) as info:
        NitroTransport(device_file, ioctl=driver)(b"\x00" * (MAX_REQUEST + 1))
    assert info.value.code == "InputTooLarge"
    assert driver.calls == []


def test_response_length_beyond_the_buffer(device_file: str, sim_pki: SimulatorPki) -> None:
    driver = FakeDriver(SimulatedNsmDevice(sim_pki), claim_length=MAX_RESPONSE + 1)
    with pytest.raises(NsmError) as info:
        NsmClient(NitroTransport(device_file, ioctl=driver), simulated=False).describe()
    assert info.value.code == "BufferTooSmall"


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ({"Error": "InvalidIndex"}, "InvalidIndex"),
        ({"Error": "Mystery"}, "InternalError"),
        ({"GetRandom": {"random": b"x"}}, "InvalidResponse"),
        ("LockPCR", "InvalidResponse"),
        (["Attestation"], "InvalidResponse"),
    ],
)
def test_response_decoding_errors(response: object, code: str) -> None:
    with pytest.raises(NsmError) as info:
        decode_response(cbor2.dumps(response), "Attestation")
    assert info.value.code == code


def test_non_cbor_response() -> None:
    with pytest.raises(NsmError) as info:
        decode_response(b"\xff", "Attestation")
    assert info.value.code == "InvalidResponse"


def test_attestation_response_without_a_document() -> None:
    nsm = NsmClient(lambda _req: cbor2.dumps({"Attestation": {"document": "text"}}), simulated=False)
    with pytest.raises(NsmError) as info:
        nsm.attestation()
    assert info.value.code == "InvalidResponse"


def test_request_encoding_matches_the_nsm_api() -> None:
    seen: list[object] = []

    def transport(request: bytes) -> bytes:
        seen.append(cbor2.loads(request))
        return cbor2.dumps("LockPCRs")

    NsmClient(transport, simulated=False).lock_pcrs(16)
    assert seen == [{"LockPCRs": {"range": 16}}]


def test_nitro_backend_refuses_without_the_device(tmp_path) -> None:
    with pytest.raises(NsmUnavailableError, match="does not exist"):
        open_nsm("nitro", device=str(tmp_path / "missing"))


def test_unknown_backend() -> None:
    with pytest.raises(NsmUnavailableError):
        open_nsm("tpm")  # type: ignore[arg-type]


def test_sim_backend_is_labelled(tmp_path) -> None:
    nsm = open_nsm("sim", pki_dir=tmp_path)
    assert nsm.simulated
    assert nsm.describe().module_id.startswith("i-sim")
