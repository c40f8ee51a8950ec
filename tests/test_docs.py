"""The README and the manuals in docs/ say what is true: the set-up commands are what CI
runs, the quickstart runs as pasted and prints what it shows, versions and options agree
with the code, and every link leads somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from tests.support import ROOT, child_env
from wasmq.cli import up as up_command

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# The quickstart's address; a test's `wasmq up` listens elsewhere.
QUICKSTART_ADDRESS = "127.0.0.1:8080"
ON_A_TERMINAL = "(on stderr, on a terminal)"


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


@pytest.mark.fast
def test_the_readmes_set_up_commands_are_the_ones_ci_runs() -> None:
    [block] = sh_blocks(section(README.read_text(), "Set up"))
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and ci == [commands[1]], (commands, ci)
    assert commands[0].startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert commands[0].endswith("&& wasmq up")


@pytest.mark.fast
def test_the_readmes_python_versions_agree_with_pyproject() -> None:
    # (tomllib is Python 3.11's; this line is the one the field takes)
    lowest = re.search(r'^requires-python = ">=(3\.\d+)"$',
                       (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    text = README.read_text()
    assert f"Python {lowest} or later" in text
    assert not re.search(r"Python 3\.\d+\s*[–-]\s*3\.\d+", text)  # no upper bound pyproject lacks


@pytest.mark.fast
def test_every_wasmq_up_synopsis_names_every_option_of_the_command() -> None:
    options = {opt for param in up_command.params if isinstance(param, click.Option)
               for opt in param.opts}
    for path in [README, *DOCS]:
        for synopsis in re.findall(r"`wasmq up (\[.*?\])`", path.read_text()):
            named = set(re.findall(r"--[a-z-]+", synopsis))
            assert named == options, (path.name, synopsis)


@pytest.mark.fast
def test_extras_are_installed_from_the_clone_and_the_readme_is_not_the_internals() -> None:
    for path in [README, *DOCS]:
        assert not re.search(r"pip install '?wasmq\[", path.read_text()), path.name
    readme = README.read_text()
    assert "pip install -e '.[sklearn]'" in readme
    for internal in ("SO_REUSEPORT", "flock", "PR_SET_PDEATHSIG", "issue 12", "commit"):
        assert internal not in readme, internal
    assert len(readme.splitlines()) < 200


def anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.fast
def test_every_link_between_the_docs_leads_to_a_file_and_heading_that_exist() -> None:
    for path in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), (path.name, target)
            if anchor:
                assert anchor in anchors(linked.read_text()), (path.name, target)


def steps(block: str) -> list[tuple[str, str]]:
    """The block's steps: (commands, what they print). Lines starting with `#` under a
    command are its output; a line said to appear only on a terminal is not expected
    here (the test is no terminal)."""
    out: list[tuple[str, list[str]]] = []
    commands: list[str] = []
    for line in block.splitlines():
        if line.startswith("# "):
            if commands:
                out.append(("\n".join(commands), []))
                commands = []
            if not line.endswith(ON_A_TERMINAL):
                out[-1][1].append(line[2:])
        elif line.strip():
            commands.append(line)
    if commands:
        out.append(("\n".join(commands), []))
    return [(code, "\n".join(printed)) for code, printed in out]


def pattern(printed: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in printed.split("…")), re.S)


def test_the_quickstart_runs_as_pasted_and_prints_what_it_shows(up: str,
                                                               tmp_path: Path) -> None:
    text = section(README.read_text(), "Quickstart")
    assert not re.search(UUID, text), "the quickstart names no cfid of its own: $CFID"
    blocks = sh_blocks(text)
    assert blocks[0].splitlines()[0] == ". .venv/bin/activate"  # in another shell: the venv
    address = up.removeprefix("http://")
    # A folder like the clone: the venv this test runs in, and the examples.
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    assert (tmp_path / ".venv" / "bin" / "activate").exists(), "the tests run in a venv"
    shell = subprocess.Popen(["bash"], cwd=tmp_path, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=child_env(WASMQ_URL=up))
    try:
        for block in blocks:
            for code, printed in steps(block):
                code = code.replace(QUICKSTART_ADDRESS, address)
                expected = pattern(printed.replace(QUICKSTART_ADDRESS, address))
                said = run_step(shell, code)
                for _ in range(40):  # a task still running: ask again, as the text says
                    if expected.fullmatch(said.strip()) or '"statusCode":5' not in said:
                        break
                    time.sleep(0.5)
                    said = run_step(shell, code)
                assert expected.fullmatch(said.strip()), f"{code}\nprinted:\n{said}"
        assert re.fullmatch(UUID, run_step(shell, "echo $CFID").strip())
    finally:
        shell.stdin.close()
        shell.wait(timeout=30)


def run_step(shell: subprocess.Popen, code: str) -> str:
    """Run `code` in the shell (so its variables stay for the next step); what it printed."""
    marker = f"@@ step done {os.urandom(4).hex()} @@"
    shell.stdin.write(f"{{ {code}\n}} 2>&1\necho; echo '{marker}'\n")
    shell.stdin.flush()
    lines = []
    for line in shell.stdout:
        if line.rstrip("\n") == marker:
            return "".join(lines)
        lines.append(line)
    raise AssertionError(f"the shell ended during: {code}\n{''.join(lines)}")
