"""The package's layout promises: rooms named by concern, a core that needs no data modules, public API only.

What a newcomer relies on when reading the tree (docs/DESIGN.md, "Architecture"): no private modules at the package
root; ``import cmkd_lightning`` loads nothing from ``datamodules``; no file of ours imports a private name of
Lightning, jsonargparse, W&B or Optuna, or reaches for a private attribute of theirs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cmkd_lightning"
OUR_CODE = ("cmkd_lightning", "datamodules", "scripts", "benchmarks", "examples")
THIRD_PARTY = ("lightning", "pytorch_lightning", "jsonargparse", "wandb", "optuna")
# Private attributes of Lightning objects this code base once wrote or called (issue 21), and their kind.
KNOWN_PRIVATE = {
    "_hparams_initial",
    "_hparams",
    "_wandb_init",
    "_get_next_version",
    "_instantiate_trainer",
    "_prepare_subcommand_kwargs",
    "_log_hyperparams",
    "_checkpoint_connector",
    "_logger_connector",
    "_accelerator_connector",
    "_results",
}


def _python_files() -> list[Path]:
    return sorted(p for root in OUR_CODE for p in (REPO / root).rglob("*.py"))


def test_the_package_root_holds_no_private_modules():
    private = sorted(p.name for p in PACKAGE.glob("*.py") if p.name.startswith("_") and p.name != "__init__.py")
    assert private == [], f"private modules at the package root: {private}; put them in the package they serve"


def test_the_rooms_exist_and_say_what_they_hold():
    for room in ("module", "cli", "utilities", "experiments", "functional", "losses", "metrics", "callbacks", "models"):
        init = PACKAGE / room / "__init__.py"
        assert init.is_file(), room
        assert ast.get_docstring(ast.parse(init.read_text())), f"cmkd_lightning/{room}/__init__.py has no docstring"


def test_importing_the_library_loads_no_data_module():
    code = "import sys, cmkd_lightning; print(sorted(m for m in sys.modules if m.split('.')[0] == 'datamodules'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _private_uses(path: Path, root: Path = REPO) -> list[str]:
    found = []
    name = path.relative_to(root)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in THIRD_PARTY:
            private = [c for c in node.module.split(".") if c.startswith("_")]
            private += [a.name for a in node.names if a.name.startswith("_")]
            if private:
                found.append(f"{name}:{node.lineno}: from {node.module} import {private}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in THIRD_PARTY and any(p.startswith("_") for p in parts):
                    found.append(f"{name}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in KNOWN_PRIVATE:
            found.append(f"{name}:{node.lineno}: .{node.attr}")
    return found


def _lightning_private_attributes() -> set[str]:
    """Private attributes a LightningModule / LightningDataModule instance gets from Lightning."""
    from lightning.pytorch import LightningDataModule, LightningModule

    names: set[str] = set()
    for instance in (LightningModule(), LightningDataModule()):
        names |= {n for n in vars(instance) if n.startswith("_") and not n.startswith("__")}
        for klass in type(instance).__mro__:
            if klass.__module__.startswith(("lightning", "torch")):
                names |= {n for n in vars(klass) if n.startswith("_") and not n.startswith("__")}
    return names


def test_our_modules_read_no_private_attribute_lightning_gives_them():
    # e.g. `self._trainer` in a LightningModule: the public `self.trainer` raises when no Trainer is attached
    lightning_names = _lightning_private_attributes() - {"_modules", "_parameters", "_buffers"}
    uses = []
    for path in sorted((REPO / "cmkd_lightning").rglob("*.py")) + sorted((REPO / "datamodules").rglob("*.py")):
        tree = ast.parse(path.read_text())
        ours = {
            t.attr
            for node in ast.walk(tree)
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr in lightning_names - ours
            ):
                uses.append(f"{path.relative_to(REPO)}:{node.lineno}: self.{node.attr}")
    assert uses == [], "Lightning's private attributes in use:\n" + "\n".join(uses)


def test_no_private_names_of_lightning_jsonargparse_wandb_or_optuna():
    uses = [use for path in _python_files() for use in _private_uses(path)]
    assert uses == [], "private third-party API in use:\n" + "\n".join(uses)


@pytest.mark.parametrize(
    "source",
    [
        "from lightning.fabric.utilities.cloud_io import _load\n",
        "import jsonargparse._typehints\n",
        "def f(module):\n    module._hparams_initial = {}\n",
    ],
)
def test_the_private_api_scan_catches_each_kind(tmp_path, source):
    file = tmp_path / "probe.py"
    file.write_text(source)
    assert len(_private_uses(file, root=tmp_path)) == 1
