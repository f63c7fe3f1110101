"""Image measurement: deterministic, sensitive to every measured byte, blind to caches."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from attestation.measure import ZERO_PCR, MeasuredFile, extend, measure_files, measure_tree
from protocol.images import image_id


def make_tree(root: Path) -> None:
    (root / "app" / "pkg").mkdir(parents=True)
    (root / "app" / "pkg" / "code.py").write_text("print('hi')\n")
    (root / "app" / "model.onnx").write_bytes(b"\x08\x01weights")
    (root / "boot.txt").write_text("runtime\n")


def test_pcr_definition_matches_nitro_cli_style() -> None:
    files = [MeasuredFile("a", b"1")]
    stream = b"\x00\x00\x00\x01a\x00" + (1).to_bytes(8, "big") + b"1"
    expected = hashlib.sha384(ZERO_PCR + hashlib.sha384(stream).digest()).digest()
    measurement = measure_files([], files)
    assert measurement.pcr2 == expected == extend(ZERO_PCR, hashlib.sha384(stream).digest())
    assert measurement.pcr0 == expected  # empty boot part
    assert measurement.pcr1 == extend(ZERO_PCR, hashlib.sha384(b"").digest())


def test_deterministic_and_order_independent(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first = measure_tree(tmp_path, app=["app"], boot=["boot.txt"])
    second = measure_files(
        reversed([MeasuredFile("boot.txt", b"runtime\n")]),
        [
            MeasuredFile("app/pkg/code.py", b"print('hi')\n"),
            MeasuredFile("app/model.onnx", b"\x08\x01weights"),
        ],
    )
    assert first.pcrs == second.pcrs
    assert first.files == ("boot.txt", "app/model.onnx", "app/pkg/code.py")


def test_a_changed_byte_changes_the_pcrs(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = measure_tree(tmp_path, app=["app"], boot=["boot.txt"])
    (tmp_path / "app" / "model.onnx").write_bytes(b"\x08\x01weighTs")
    after_model = measure_tree(tmp_path, app=["app"], boot=["boot.txt"])
    assert after_model.pcr0 != before.pcr0 and after_model.pcr2 != before.pcr2
    assert after_model.pcr1 == before.pcr1
    (tmp_path / "boot.txt").write_text("runtime 2\n")
    after_boot = measure_tree(tmp_path, app=["app"], boot=["boot.txt"])
    assert after_boot.pcr1 != after_model.pcr1 and after_boot.pcr0 != after_model.pcr0
    assert after_boot.pcr2 == after_model.pcr2


def test_renames_and_modes_are_measured(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = measure_tree(tmp_path, app=["app"])
    os.chmod(tmp_path / "app" / "pkg" / "code.py", 0o755)
    assert measure_tree(tmp_path, app=["app"]).pcr2 != before.pcr2
    os.chmod(tmp_path / "app" / "pkg" / "code.py", 0o644)
    (tmp_path / "app" / "pkg" / "code.py").rename(tmp_path / "app" / "pkg" / "code2.py")
    assert measure_tree(tmp_path, app=["app"]).pcr2 != before.pcr2


def test_caches_are_not_measured(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = measure_tree(tmp_path, app=["app"])
    (tmp_path / "app" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "app" / "pkg" / "__pycache__" / "code.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "app" / "stray.pyc").write_bytes(b"junk")
    assert measure_tree(tmp_path, app=["app"]).pcrs == before.pcrs


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(FileNotFoundError):
        measure_tree(tmp_path, app=["nope"])


def test_simulated_document_carries_the_measurement(tmp_path: Path, sim_pki) -> None:
    from attestation import Policy, verify
    from attestation.nsm import NsmClient
    from attestation.nsm.simulator import SimulatedNsmDevice

    make_tree(tmp_path)
    measurement = measure_tree(tmp_path, app=["app"], boot=["boot.txt"])
    nsm = NsmClient(SimulatedNsmDevice(sim_pki, measurement.pcrs), simulated=True)
    verify(nsm.attestation(), Policy(root=sim_pki.root, expected_pcrs=measurement.pcrs))
    (tmp_path / "app" / "model.onnx").write_bytes(b"changed")
    changed = measure_tree(tmp_path, app=["app"], boot=["boot.txt"])
    changed_nsm = NsmClient(SimulatedNsmDevice(sim_pki, changed.pcrs), simulated=True)
    import pytest

    from attestation import AttestationError

    with pytest.raises(AttestationError) as info:
        verify(changed_nsm.attestation(), Policy(root=sim_pki.root, expected_pcrs=measurement.pcrs))
    assert info.value.code == "pcr_mismatch"


def test_image_id_refuses_pcrs_that_are_not_48_bytes() -> None:
    """(32, 64, 48) and (48, 48, 48) concatenate to the same 144 bytes: only SHA384 PCRs make an image id."""
    blob = bytes(range(144))
    assert len(image_id({0: blob[:48], 1: blob[48:96], 2: blob[96:]})) == 32
    with pytest.raises(ValueError, match="48 bytes"):
        image_id({0: blob[:32], 1: blob[32:96], 2: blob[96:]})
