"""The package graph of the README holds: no upward imports, and only the enclave's tree is measured.

verinfer/ -> relay/, enclave/ -> protocol/ -> attestation/
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from verinfer.processes import VERINFER

REPO = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"attestation", "protocol", "enclave", "relay", "verinfer", "bench", "tests", "models"}
ALLOWED = {
    "attestation": set(),
    "protocol": {"attestation"},
    "enclave": {"attestation", "protocol"},
    "relay": {"attestation", "protocol"},
    "verinfer": {"attestation", "protocol", "enclave", "relay"},
}


def imported_packages(package: str) -> dict[str, set[str]]:
    """First-party top-level packages each module of `package` imports (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = (names & FIRST_PARTY) - {package}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_upward_imports(package: str) -> None:
    offending = {
        module: sorted(names - ALLOWED[package])
        for module, names in imported_packages(package).items()
        if names - ALLOWED[package]
    }
    assert offending == {}


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = REPO / "protocol" / "_probe_upward.py"
    module.write_text("from enclave import signer\n")
    try:
        assert imported_packages("protocol")["protocol/_probe_upward.py"] == {"enclave"}
    finally:
        module.unlink()


def measure(root: Path) -> str:
    out = subprocess.run(
        [VERINFER, "image", "measure", "--json", "--root", str(root)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    image: str = json.loads(out)["imageId"]
    return image


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    for name in ("attestation", "protocol", "enclave", "verinfer", "relay", "models"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Dockerfile.enclave", "requirements-enclave.lock"):
        shutil.copyfile(REPO / name, copy / name)
    return copy


def test_host_tools_are_outside_the_image_id(tree_copy: Path) -> None:
    before = measure(tree_copy)
    assert measure(REPO) == before
    for tool in ("verify.py", "proxy.py", "image.py", "cli.py"):
        with (tree_copy / "verinfer" / tool).open("a") as handle:
            handle.write("# edited host tool\n")
    with (tree_copy / "relay" / "runner.py").open("a") as handle:
        handle.write("# edited relay\n")
    assert measure(tree_copy) == before


@pytest.mark.parametrize("package", ["protocol", "enclave", "attestation"])
def test_measured_packages_change_the_image_id(tree_copy: Path, package: str) -> None:
    before = measure(tree_copy)
    with (tree_copy / package / "__init__.py").open("a") as handle:
        handle.write("# one more byte\n")
    assert measure(tree_copy) != before
