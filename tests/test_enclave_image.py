"""Dockerfile.enclave built and run for real: buildah on a debootstrap'd bookworm base, no registry.

Slow (a few minutes on a fresh machine, seconds once the base is cached under build/enclave-image/), and run
in CI. A missing tool fails the test with what to install; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from attestation import Policy, TrustedRoot, verify
from enclave.image import measure_image
from verinfer.image import stage_context
from verinfer.processes import free_port, stop, wait_ready
from verinfer.verify import load_attestation, manifest_from_json, verify_inference
from verinfer.verify_llm import verify_completion

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
LLM = "smollm2-135m-instruct"
CACHE = REPO / "build" / "enclave-image"
BASE_TAG = "localhost/verinfer-bookworm-base:test"
STORAGE = ("--storage-driver", "vfs")
MIRROR = os.environ.get("VERINFER_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the enclave image test needs buildah and debootstrap "
            "(apt-get install buildah debootstrap; `make setup` does it when run as root)"
        )


def buildah(*args: str, timeout: float = 900) -> str:
    result = subprocess.run(
        ["buildah", *STORAGE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"buildah {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def image_exists(tag: str) -> bool:
    return (
        subprocess.run(
            ["buildah", *STORAGE, "inspect", "--type", "image", tag], capture_output=True, check=False
        ).returncode
        == 0
    )


@pytest.fixture(scope="module")
def base_image() -> str:
    """A bookworm root filesystem from Debian's mirror, committed as a local base image (cached)."""
    require("buildah", "debootstrap")
    if image_exists(BASE_TAG):
        return BASE_TAG
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs_tar = CACHE / "bookworm-rootfs.tar"
    if not rootfs_tar.exists():
        rootfs = CACHE / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=1200,
        )
        partial = rootfs_tar.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(rootfs, arcname=".")
        partial.rename(rootfs_tar)
        shutil.rmtree(rootfs)
    container = buildah("from", "scratch").strip()
    buildah("add", container, str(rootfs_tar), "/")
    buildah("commit", "--rm", container, BASE_TAG)
    return BASE_TAG


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exactly the measured files, plus the lock's wheels (downloaded once, cached, checked by hash)."""
    destination = tmp_path_factory.mktemp("image") / "context"
    stage_context(destination, models_dir=MODELS)
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(Path(sys.executable).parent / "pip"),
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "-r",
            str(REPO / "requirements-enclave.lock"),
            "-d",
            str(wheels),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    shutil.copytree(wheels, destination / "wheels", dirs_exist_ok=True)
    return destination


def build(context: Path, base: str, tag: str) -> None:
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--pull=never",
        "--timestamp",
        "0",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-f",
        str(context / "Dockerfile.enclave"),
        "-t",
        tag,
        str(context),
    )


@pytest.fixture(scope="module")
def images(base_image: str, context: Path) -> Iterator[tuple[str, str]]:
    tags = ("localhost/verinfer-enclave:test-a", "localhost/verinfer-enclave:test-b")
    for tag in tags:
        build(context, base_image, tag)
    yield tags
    for tag in tags:
        subprocess.run(["buildah", *STORAGE, "rmi", tag], capture_output=True, check=False)


def run_in(tag: str, *command: str, copy: tuple[Path, str] | None = None) -> str:
    container = buildah("from", tag).strip()
    try:
        if copy is not None:
            buildah("copy", container, str(copy[0]), copy[1])
        return buildah("run", "--isolation", "chroot", container, "--", *command, timeout=120)
    finally:
        buildah("rm", container)


def measured(tag: str, copy: tuple[Path, str] | None = None) -> dict[str, str]:
    report = json.loads(run_in(tag, "python3", "-m", "enclave", "measure", "--json", copy=copy))
    pcrs: dict[str, str] = report["pcrs"]
    return pcrs


def host_pcrs() -> dict[str, str]:
    return {str(i): v.hex() for i, v in measure_image(MODELS).pcrs.items()}


def test_two_builds_give_the_measurement_the_host_predicts(images: tuple[str, str]) -> None:
    first, second = (measured(tag) for tag in images)
    assert first == second == host_pcrs()


def test_a_one_byte_model_change_changes_the_measurement(images: tuple[str, str], tmp_path: Path) -> None:
    changed = tmp_path / "iris-ols.onnx"
    blob = bytearray((MODELS / "iris-ols.onnx").read_bytes())
    blob[-1] ^= 1
    changed.write_bytes(bytes(blob))
    after = measured(images[0], copy=(changed, "/app/models/iris-ols.onnx"))
    before = host_pcrs()
    assert after["0"] != before["0"] and after["2"] != before["2"] and after["1"] == before["1"]


def test_image_contents(images: tuple[str, str]) -> None:
    script = "\n".join(
        [
            "import importlib.util, json, os",
            "walk = os.walk('/app')",
            "files = sorted(os.path.relpath(os.path.join(d, f), '/app') for d, _, fs in walk for f in fs)",
            "dev_tools = ('pytest', 'hypothesis', 'mypy', 'ruff', 'onnx', 'sklearn', 'torch', 'web3', 'pip')",
            "dev = [m for m in dev_tools if importlib.util.find_spec(m)]",
            "keys = [f for f in files if b'PRIVATE KEY' in open(os.path.join('/app', f), 'rb').read()]",
            "print(json.dumps({'files': files, 'dev': dev, 'keys': keys}))",
        ]
    )
    report = json.loads(run_in(images[0], "python3", "-c", script))
    assert report["files"] == sorted(measure_image(MODELS).files)
    assert not [
        f for f in report["files"] if f.startswith("tests/") or "/test_" in f or f.startswith("test_")
    ]
    assert report["dev"] == []
    assert report["keys"] == []
    size = buildah("images", "--format", "{{.Size}}", images[0]).strip()
    (CACHE / "image-size.txt").write_text(size + "\n")
    print(f"\nenclave image size: {size} (written to {CACHE / 'image-size.txt'})")


def test_image_server_attests_the_predicted_pcrs(images: tuple[str, str], tmp_path: Path) -> None:
    port = free_port()
    pki = tmp_path / "pki"
    pki.mkdir()
    container = buildah("from", images[0]).strip()
    server = subprocess.Popen(
        [
            "buildah",
            *STORAGE,
            "run",
            "--isolation",
            "chroot",
            "-v",
            f"{pki}:/pki",
            container,
            "--",
            "python3",
            "-m",
            "enclave",
            "serve",
            "--nsm",
            "sim",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--pki-dir",
            "/pki",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, timeout=120)
        nonce = os.urandom(16)
        document = load_attestation(httpx.get(f"{url}/attestation", params={"nonce": nonce.hex()}).content)
        root = TrustedRoot.from_file(pki / "root.pem")
        expected = {int(i): bytes.fromhex(v) for i, v in host_pcrs().items()}
        result = verify(
            document, Policy(root=root, expected_pcrs=expected, expected_nonce=nonce, max_age_s=60)
        )
        assert result.simulated
        request = {"model": "iris-mlp", "inputs": [[6.7, 3.0, 5.2, 2.3]]}
        response = httpx.post(f"{url}/infer", json=request).json()
        manifest = manifest_from_json(httpx.get(f"{url}/models").json())
        report = verify_inference(
            response,
            document,
            policy=Policy(root=root, expected_pcrs=expected),
            request=request,
            manifest=manifest,
        )
        assert report.ok, report.to_json()
        # The LLM is in the image too, measured with the rest: a signed completion from inside it verifies.
        body = orjson.dumps({"model": LLM, "prompt": "Ethereum is", "max_tokens": 8, "temperature": 0})
        answer = httpx.post(
            f"{url}/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        llm_report = verify_completion(
            body,
            answer.content,
            document,
            policy=Policy(root=root, expected_pcrs=expected),
            manifest=manifest,
        )
        assert llm_report.verified, llm_report.to_json()
    finally:
        stop(server, timeout=15)
        subprocess.run(["buildah", *STORAGE, "rm", container], capture_output=True, check=False)
