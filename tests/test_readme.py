"""README.md's "Using it" walkthrough, run exactly as written, so it cannot rot.

Every ```bash and ```python block of the section runs, in order, in one `bash -euo pipefail` session, as a
new user would paste them after `make setup`: from the repository root (a view of it, so that the files the
walkthrough writes land in a temporary directory), with a PATH that does not contain .venv/bin or
node_modules/.bin (the README must activate the virtual environment itself) and in a network namespace of
its own, so the fixed ports the README names (8000, 8100, 8545) are free even while other tests run. A block
may be skipped only with `<!-- readme-test: skip (reason) -->` right above it, for what cannot run here
(a Nitro enclave, a real chain); the `verinfer` commands in a skipped block must still parse.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from verinfer.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SECTION = "## Using it"
EXECUTED = ("bash", "python")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
PORTS = (8000, 8100, 8545)  # the server, the attestation verifier service, anvil (README's defaults)
TOOLS = ("bash", "curl", "jq", "openssl", "sha256sum")
TIMEOUT_S = 240.0
# Bring up the loopback interface of a fresh network namespace (SIOCSIFFLAGS: IFF_UP | IFF_LOOPBACK |
# IFF_RUNNING), then become the walkthrough's bash: no dependency on iproute2.
LOOPBACK_UP = (
    "import fcntl, os, socket, struct, sys\n"
    "with socket.socket() as s:\n"
    "    fcntl.ioctl(s, 0x8914, struct.pack('16sH22x', b'lo', 0x1 | 0x8 | 0x40))\n"
    "os.execvp('bash', ['bash', '-euo', 'pipefail', sys.argv[1]])\n"
)
PYTHON_END = "README_PYTHON_BLOCK"


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # the opening fence's line in README.md, 1-based
    skip: str | None  # the reason given in a readme-test skip marker


def section(text: str, heading: str) -> tuple[list[str], int]:
    """The lines of the `## ` section that starts with `heading` (subsections included), and the
    1-based line number of its heading."""
    lines = text.splitlines()
    start = lines.index(heading)
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
        len(lines),
    )
    return lines[start:end], start + 1


def blocks(lines: list[str], first_line: int) -> list[Block]:
    """The fenced code blocks of `lines`, each with the skip reason of a marker right above it."""
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = lines[index].strip()
        if not opening.startswith("```"):
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md line {first_line + index}: unclosed code block")
        above = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = SKIP.fullmatch(above.strip())
        found.append(
            Block(
                language=opening[3:].strip(),
                code=textwrap.dedent("\n".join(lines[index + 1 : end]) + "\n"),  # a fence in a list item
                line=first_line + index,
                skip=marker["reason"].strip() if marker else None,
            )
        )
        index = end + 1
    return found


def usage_blocks() -> list[Block]:
    lines, first = section(README.read_text(encoding="utf-8"), SECTION)
    return blocks(lines, first)


def banner(block: Block) -> str:
    return f"README.md line {block.line} ({block.language})"


def script(run: list[Block]) -> str:
    """One bash script: each block as written, a python block fed to the session's `python` (the
    virtual environment's, once the README has activated it), a banner before each to tell them apart."""
    parts = []
    for block in run:
        parts.append(f"printf '\\n@@ %s\\n' {shlex.quote(banner(block))}\n")
        if block.language == "python":
            if PYTHON_END in block.code:
                raise ValueError(f"{banner(block)} contains {PYTHON_END}")
            parts.append(f"python - <<'{PYTHON_END}'\n{block.code}{PYTHON_END}\n")
        else:
            parts.append(block.code)
    return "".join(parts)


def user_environment() -> dict[str, str]:
    """This process's environment as a new user's shell would have it: no virtual environment active and
    nothing of the repository on PATH (the README must say how to get `verinfer` and anvil)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    entries = env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    env["PATH"] = os.pathsep.join(e for e in entries if e and not Path(e).resolve().is_relative_to(REPO))
    return env


def repository_view(where: Path) -> Path:
    """A directory holding a link to each top-level entry of the repository: the README's relative paths
    (.venv, node_modules, models) work, and what it writes stays out of the checkout."""
    where.mkdir()
    for entry in REPO.iterdir():
        if entry.name != ".git":
            (where / entry.name).symlink_to(entry)
    return where


def own_network_namespace() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "--net", "true"], check=False, capture_output=True
    )
    return probe.returncode == 0


def ports_in_use(ports: tuple[int, ...]) -> list[int]:
    import socket

    busy = []
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """End the walkthrough's shell and everything it left in the background (one process group)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    process.wait()


def failed_block(output: str, run: list[Block]) -> Block | None:
    """The block whose banner the output shows last: the one that was running."""
    shown = re.findall(r"^@@ (.+)$", output, flags=re.MULTILINE)
    return next((b for b in run if shown and banner(b) == shown[-1]), None)


def failure_report(output: str, run: list[Block], work: Path, why: str) -> str:
    block = failed_block(output, run)
    logs = "".join(
        f"\n--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        for log in sorted(work.glob("*.log"))
    )
    where = f"\n--- the block, {banner(block)}:\n{block.code}" if block else ""
    return f"README walkthrough {why}{where}\n--- output (last 8000 characters):\n{output[-8000:]}{logs}"


# ---------------------------------------------------------------------------------------------------------


def test_walkthrough_runs_as_written(tmp_path: Path) -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the README walkthrough needs {', '.join(missing)}")
    if not (REPO / "node_modules" / ".bin" / "anvil").exists():
        pytest.skip("node_modules/.bin/anvil is missing: run `make setup`")
    run = [b for b in usage_blocks() if b.skip is None]
    work = repository_view(tmp_path / "repo")
    path = tmp_path / "walkthrough.sh"
    path.write_text(script(run), encoding="utf-8")
    if own_network_namespace():
        command = ["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", LOOPBACK_UP]
        command.append(str(path))
    else:  # no user namespaces here: the README's ports must be free on this machine
        busy = ports_in_use(PORTS)
        assert not busy, f"ports {busy} are in use: the README walkthrough needs {PORTS} free"
        command = ["bash", "-euo", "pipefail", str(path)]
    out = tmp_path / "output.txt"
    started = time.monotonic()
    with out.open("wb") as output:  # a file, not a pipe: background servers inherit it
        process = subprocess.Popen(
            command,
            cwd=work,
            env=user_environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code: int | None = process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop_group(process)
    text = out.read_text(errors="replace")
    if code is None:
        pytest.fail(failure_report(text, run, work, f"did not finish within {TIMEOUT_S:.0f} s"))
    if code != 0:
        pytest.fail(failure_report(text, run, work, f"failed with exit status {code}"))
    assert f"@@ {banner(run[-1])}" in text, "the last block never started"
    print(f"README walkthrough: {len(run)} blocks in {time.monotonic() - started:.1f} s")


def test_section_blocks_are_runnable_or_skipped_with_a_reason() -> None:
    """Every block of the section is bash or python (nothing escapes the run by its language), skips are
    few and give a reason, and the walkthrough covers the server, the LLM and the chain."""
    found = usage_blocks()
    odd = [banner(b) for b in found if b.language not in EXECUTED]
    assert not odd, f"blocks the walkthrough would not run (use ```bash or ```python): {odd}"
    skipped = [b for b in found if b.skip is not None]
    assert len(skipped) <= 2, [banner(b) for b in skipped]
    assert all(len(b.skip or "") >= 10 for b in skipped)
    executed = "".join(b.code for b in found if b.skip is None)
    for step in ("source .venv/bin/activate", "verinfer serve --nsm sim", "verinfer verify", "anvil"):
        assert step in executed, step
    for command in ("deploy", "approve", "verifier", "register", "run"):
        assert f"verinfer relay {command} " in executed, command
    assert any(b.language == "python" and b.skip is None for b in found)


def commands(code: str) -> list[list[str]]:
    """The `verinfer ...` command lines of a bash block, continuation lines joined, comments dropped,
    each `$(...)` standing for one word."""
    joined = re.sub(r"\\\n\s*", " ", code)
    found = []
    for line in joined.splitlines():
        words = shlex.split(re.sub(r"\$\([^()]*\)", "SUBSTITUTED", line), comments=True)
        if words and words[0] == "verinfer":
            found.append(words[1:])
    return found


def test_skipped_blocks_still_parse() -> None:
    """A skipped block is not run, but its `verinfer` commands must still name options that exist."""
    skipped = [b for b in usage_blocks() if b.skip is not None]
    assert skipped
    for block in skipped:
        argvs = commands(block.code)
        assert argvs, f"{banner(block)} has no verinfer command"
        for argv in argvs:
            try:
                build_parser().parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"{banner(block)}: `verinfer {shlex.join(argv)}` does not parse ({exc.code})")


def test_parser_finds_blocks_and_skip_markers() -> None:
    text = (
        "## Using it\nintro\n```bash\necho one\n```\n\n<!-- readme-test: skip (needs hardware) -->\n"
        "```bash\nnitro\n```\n```python\nprint(2)\n```\n- item:\n\n  ```bash\n  echo 3\n  ```\n"
        "## Next\n```bash\nnot this section\n```\n"
    )
    lines, first = section(text, "## Using it")
    found = blocks(lines, first)
    assert [(b.language, b.code, b.line, b.skip) for b in found] == [
        ("bash", "echo one\n", 3, None),
        ("bash", "nitro\n", 8, "needs hardware"),
        ("python", "print(2)\n", 11, None),
        ("bash", "echo 3\n", 16, None),
    ]
    assert "python - <<'README_PYTHON_BLOCK'\nprint(2)\nREADME_PYTHON_BLOCK\n" in script(found)
    with pytest.raises(ValueError, match="unclosed"):
        blocks(["```bash", "echo"], 1)
