"""docs/JS_VERIFIER.md's dApp example (js/examples/dapp.mjs) run with node against a live simulated enclave:
what the doc shows is what runs, and it refuses an enclave of an image it does not approve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from enclave.image import measure_image
from protocol.images import image_id

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "js" / "examples" / "dapp.mjs"


def run_example(server: str, root: Path, image: str) -> subprocess.CompletedProcess[str]:
    command = ["node", str(EXAMPLE), server, "--root", str(root), "--image-id", image]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_example_verifies_an_answer_of_an_approved_image(server: str, server_pki: Path) -> None:
    image = "0x" + image_id(dict(measure_image(REPO / "models").pcrs)).hex()
    done = run_example(server, server_pki / "root.pem", image)
    assert done.returncode == 0, done.stderr
    said = r"iris-mlp says 2: VERIFIED \[SIMULATED\], signed by 0x[0-9a-fA-F]{40}\n"
    assert re.fullmatch(said, done.stdout)


def test_the_example_refuses_an_enclave_of_another_image(server: str, server_pki: Path) -> None:
    done = run_example(server, server_pki / "root.pem", "0x" + "11" * 32)
    assert done.returncode != 0
    assert "which is not approved" in done.stderr


def test_the_doc_shows_the_code_that_runs() -> None:
    doc = (REPO / "docs" / "JS_VERIFIER.md").read_text()
    shown = re.search(r"```js\n(.*?)```", doc, re.DOTALL)
    assert shown is not None
    assert shown[1] in EXAMPLE.read_text()
