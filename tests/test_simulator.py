"""The simulator: documents shaped exactly like hardware's, verifiable only against its own root."""

from __future__ import annotations

import pytest

from attestation import AttestationError, Policy, cbor, decode, verify
from attestation.cose import ES384_PROTECTED
from attestation.document import FIELD_ORDER
from attestation.nsm import NsmClient, NsmError
from attestation.nsm.simulator import SimulatedNsmDevice
from attestation.sim_pki import SimulatorPki

from .conftest import BASE_SAMPLE


def client(device: SimulatedNsmDevice) -> NsmClient:
    return NsmClient(device, simulated=True)


def test_round_trip_against_the_simulator_root(sim_pki: SimulatorPki, sim_device: SimulatedNsmDevice) -> None:
    document = client(sim_device).attestation(user_data=b"u" * 32, nonce=b"n" * 16, public_key=b"k" * 64)
    policy = Policy(
        root=sim_pki.root,
        expected_pcrs={0: b"\x01" * 48, 2: b"\x03" * 48},
        expected_nonce=b"n" * 16,
        expected_public_key=b"k" * 64,
        expected_user_data=b"u" * 32,
        max_age_s=60,
    )
    result = verify(document, policy)
    assert result.simulated
    assert result.public_key == b"k" * 64
    assert "SIMULATED" in result.chain_subjects[0]


def test_simulated_document_never_passes_the_aws_root(sim_device: SimulatedNsmDevice) -> None:
    document = client(sim_device).attestation(public_key=b"k" * 64)
    with pytest.raises(AttestationError) as info:
        verify(document, Policy())
    assert info.value.code == "root_not_trusted"


def test_layout_matches_hardware(sim_device: SimulatedNsmDevice) -> None:
    document = client(sim_device).attestation(public_key=b"k" * 64)
    hardware = BASE_SAMPLE.read_bytes()
    # Same envelope prefix: untagged array(4), the same protected header bytes, empty unprotected map.
    assert document[:7] == hardware[:7] == b"\x84\x44" + ES384_PROTECTED + b"\xa0"
    signed, real = decode(document), decode(hardware)
    fields = cbor.loads(signed.cose.payload)
    assert list(fields) == list(FIELD_ORDER) == list(cbor.loads(real.cose.payload))
    assert sorted(signed.document.pcrs) == sorted(real.document.pcrs) == list(range(16))
    assert {len(v) for v in signed.document.pcrs.values()} == {48}
    assert fields["user_data"] is None and fields["nonce"] is None
    assert len(signed.document.cabundle) == len(real.document.cabundle) == 4
    assert signed.cose.payload[0] == real.cose.payload[0] == 0xA9  # definite-length map of nine


def test_indefinite_length_payload_verifies(sim_pki: SimulatorPki) -> None:
    device = SimulatedNsmDevice(sim_pki, {0: b"\x05" * 48}, indefinite_payload=True)
    document = client(device).attestation(nonce=b"abc")
    assert decode(document).cose.payload[0] == 0xBF
    assert verify(document, Policy(root=sim_pki.root, expected_nonce=b"abc")).nonce == b"abc"


def test_pki_persists_and_is_reused(tmp_path) -> None:
    first = SimulatorPki(tmp_path)
    second = SimulatorPki(tmp_path)
    assert first.cabundle() == second.cabundle()
    assert (tmp_path / "root.key.pem").stat().st_mode & 0o077 == 0


def test_leaf_is_reused_then_rotated(sim_pki: SimulatorPki) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    _, first = sim_pki.leaf("m", now)
    _, again = sim_pki.leaf("m", now + timedelta(hours=1))
    _, rotated = sim_pki.leaf("m", now + timedelta(hours=3))
    assert first == again != rotated


def test_describe_and_random(sim_device: SimulatedNsmDevice) -> None:
    nsm = client(sim_device)
    description = nsm.describe()
    assert description.digest == "SHA384"
    assert description.max_pcrs == 32
    assert description.locked_pcrs == tuple(range(16))
    assert description.module_id == sim_device.module_id
    assert len(nsm.get_random()) == 256
    assert nsm.get_random() != nsm.get_random()


def test_pcr_extend_and_lock(sim_pki: SimulatorPki, sim_device: SimulatedNsmDevice) -> None:
    from attestation.measure import ZERO_PCR, extend

    nsm = client(sim_device)
    assert nsm.describe_pcr(16).data == ZERO_PCR
    value = nsm.extend_pcr(16, b"config")
    assert value == extend(ZERO_PCR, b"config") == nsm.describe_pcr(16).data
    nsm.lock_pcr(16)
    assert nsm.describe_pcr(16).locked
    with pytest.raises(NsmError) as info:
        nsm.extend_pcr(16, b"more")
    assert info.value.code == "ReadOnlyIndex"
    # A locked PCR above 15 appears in documents, as on hardware.
    document = decode(nsm.attestation())
    assert document.document.pcrs[16] == value
    nsm.lock_pcrs(20)
    assert set(nsm.describe().locked_pcrs) >= set(range(20))


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda n: n.extend_pcr(3, b"x"), "ReadOnlyIndex"),
        (lambda n: n.describe_pcr(32), "InvalidIndex"),
        (lambda n: n.extend_pcr(17, b"x" * 1025), "InputTooLarge"),
        (lambda n: n.attestation(user_data=b"x" * 1025), "InputTooLarge"),
        (lambda n: n.lock_pcrs(33), "InvalidArgument"),
    ],
)
def test_nsm_errors(sim_device: SimulatedNsmDevice, call, code: str) -> None:
    with pytest.raises(NsmError) as info:
        call(client(sim_device))
    assert info.value.code == code


def test_device_answers_garbage_with_an_error(sim_device: SimulatedNsmDevice) -> None:
    import cbor2

    assert cbor.loads(sim_device(b"\xff\xff")) == {"Error": "InvalidArgument"}
    assert cbor.loads(sim_device(cbor2.dumps("Reboot"))) == {"Error": "InvalidOperation"}
    assert cbor.loads(sim_device(cbor2.dumps({"Attestation": {"bogus": 1}}))) == {"Error": "InvalidArgument"}


def test_boot_pcrs_must_be_lockable_measurements(sim_pki: SimulatorPki) -> None:
    with pytest.raises(ValueError, match="48 bytes"):
        SimulatedNsmDevice(sim_pki, {16: b"\x00" * 48})
    with pytest.raises(ValueError, match="48 bytes"):
        SimulatedNsmDevice(sim_pki, {0: b"\x00" * 32})
