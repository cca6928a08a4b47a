"""Every ```python and ```bash block of README.md runs as written, with its epochs and data cut down.

A block preceded by ``<!-- no-test: <reason> -->`` (downloads, GPUs, installs) is skipped with that reason, so
pytest's summary counts and names every block that is not run. A bash line this file has no rule for fails the
test: add a cut-down rule below or a no-test marker in the README.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_NO_TEST = re.compile(r"^<!--\s*no-test:\s*(?P<reason>.+?)\s*-->$")
_DATA_CUT = "--data.init_args.train_size=512 --data.init_args.val_size=256 --data.init_args.test_size=256"

# Substitutions applied to python blocks: fewer epochs, less data. Each must hit at least once in some block.
PYTHON_CUTS = (
    (re.compile(r"max_epochs=\d+"), "max_epochs=1"),
    (re.compile(r"train_size=\d+"), "train_size=512"),
    (re.compile(r"val_size=\d+"), "val_size=256"),
    (re.compile(r"test_size=\d+"), "test_size=256"),
)

# bash line prefix -> what the test runs instead (``{line}`` is the line as written).
BASH_RULES = (
    ("source .venv/bin/activate", "true  # the tests already run inside the venv"),
    ("cmkd fit -c examples/configs/digits/", "{line} --trainer.max_epochs=1 " + _DATA_CUT),
    ("cmkd list", "{line}"),
    (
        "python examples/make_figures.py",
        "{line} --teacher-epochs 1 --student-epochs 2 --train-size 300 --cost-repeats 1 --tsne-samples 60",
    ),
    (
        "cmkd-compare ",
        "{line} --seeds 0 1 --methods kd cmkd --train-size 300 --eval-size 200 --epochs 1 --teacher-epochs 1",
    ),
    (  # its config reads the digits teacher, which the README trains first (the "From the shell" block)
        "cmkd-sweep ",
        "cmkd fit -c examples/configs/digits/teacher.yaml --trainer.max_epochs=1 " + _DATA_CUT + "\n"
        "{line} --trials 2 --trainer.max_epochs=1 " + _DATA_CUT,
    ),
    ("python examples/plain_script.py", "{line} --fast"),
    ("python examples/subclass_script.py", "{line} --fast"),
)


@dataclass
class Block:
    language: str
    line: int
    code: str
    skip_reason: str | None


def readme_blocks(text: str) -> list[Block]:
    """The fenced python / bash blocks of ``text`` with their no-test reasons (from the line before the fence)."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w+)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        if fence.group(1) not in ("python", "bash"):
            continue
        marker = _NO_TEST.match(lines[start - 1].strip()) if start > 0 else None
        blocks.append(Block(fence.group(1), start + 1, "\n".join(body), marker.group("reason") if marker else None))
    return blocks


def bash_commands(code: str) -> list[str]:
    """Logical lines of a bash block: continuations joined, comments and blank lines dropped."""
    commands, current = [], ""
    for raw in code.splitlines():
        line = raw.split("  #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line.strip()
        if current:
            commands.append(current)
        current = ""
    return commands


def cut_bash(code: str) -> str:
    out = []
    for command in bash_commands(code):
        rule = next((r for prefix, r in BASH_RULES if command.startswith(prefix)), None)
        if rule is None:
            raise AssertionError(
                f"README bash line {command!r} has no cut-down rule in tests/test_readme.py; add one or mark the "
                "block with <!-- no-test: reason -->."
            )
        if "--print_config" in command:
            rule = "{line}"
        out.append(rule.format(line=command))
    return "\n".join(out)


def cut_python(code: str) -> str:
    for pattern, replacement in PYTHON_CUTS:
        code = pattern.sub(replacement, code)
    return code


BLOCKS = readme_blocks(README.read_text())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(WANDB_MODE="offline", CMKD_CPU_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _workdir(tmp_path: Path) -> Path:
    """A scratch folder that looks like the repository root to relative paths (runs/ are written here)."""
    for name in ("examples", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def test_readme_has_the_blocks_we_expect():
    languages = [b.language for b in BLOCKS]
    assert languages.count("python") >= 2 and languages.count("bash") >= 4
    skipped = [b for b in BLOCKS if b.skip_reason]
    assert all(b.skip_reason.strip() for b in skipped)
    # The runnable digits example comes before the CIFAR-100 one, which needs a download.
    python = [b for b in BLOCKS if b.language == "python"]
    assert python[0].skip_reason is None and "ComposedDigitsDataModule" in python[0].code
    assert any(b.skip_reason and "CIFAR100DataModule" in b.code for b in python)


def test_every_cut_rule_applies():
    runnable = [b for b in BLOCKS if not b.skip_reason]
    for pattern, _ in PYTHON_CUTS:
        assert any(pattern.search(b.code) for b in runnable if b.language == "python"), pattern.pattern
    for block in runnable:
        if block.language == "bash":
            cut_bash(block.code)  # raises on a line without a rule


def test_readme_block_helpers():
    text = "x\n<!-- no-test: needs a GPU -->\n```bash\ncmkd fit \\\n  -c a.yaml  # c\n# note\n```\n```text\nno\n```\n"
    (block,) = readme_blocks(text)
    assert block.skip_reason == "needs a GPU" and block.line == 3
    assert bash_commands(block.code) == ["cmkd fit -c a.yaml"]
    with pytest.raises(AssertionError, match="no cut-down rule"):
        cut_bash("rm -rf /")


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.language}-line{b.line}" for b in BLOCKS])
def test_readme_block_runs(block: Block, tmp_path: Path):
    if block.skip_reason:
        pytest.skip(f"README line {block.line}: no-test: {block.skip_reason}")
    cwd = _workdir(tmp_path)
    if block.language == "python":
        command = [sys.executable, "-c", cut_python(block.code)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", cut_bash(block.code)]
    proc = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"README block at line {block.line} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    if block.language == "bash" and "cmkd fit -c examples/configs/digits/teacher.yaml" in block.code:
        # Each `cmkd fit` ends with its summary; the first command of the block trains the teacher.
        assert "cmkd fit finished" in proc.stdout and "val Top-1 %" in proc.stdout
        assert (cwd / "runs" / "digits-teacher" / "teacher.ckpt").is_file()
