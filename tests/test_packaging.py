"""Packaging a user can trust: one version, every import declared, optional extras named when missing."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import cmkd_lightning
from cmkd_lightning.utilities.optional import MissingExtraError, available, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("cmkd_lightning", "datamodules")
# Import name -> distribution name, where they differ.
DISTRIBUTION = {
    "sklearn": "scikit-learn",
    "PIL": "Pillow",
    "yaml": "PyYAML",
    "optuna_integration": "optuna-integration",
}
# The packages each extra must keep out of a plain `pip install cmkd-lightning`.
EXTRA_MODULES = ("wandb", "matplotlib", "sklearn", "threadpoolctl", "rich", "scipy", "optuna", "optuna_integration")


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports() -> dict[str, list[str]]:
    """Top-level third-party import name -> files importing it, in the shipped packages."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in stdlib and top not in PACKAGES:
                        found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def test_version_comes_from_the_installed_metadata_of_pyproject():
    assert cmkd_lightning.__version__ == importlib.metadata.version("cmkd-lightning")
    assert cmkd_lightning.__version__ == PYPROJECT["project"]["version"]


def test_every_third_party_import_is_declared():
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for requirements in PYPROJECT["project"]["optional-dependencies"].values():
        declared |= {_name(r) for r in requirements}
    imports = _imports()
    assert {"torch", "lightning", "matplotlib", "wandb"} <= set(imports)  # the scan sees the package
    missing = {name: files for name, files in imports.items() if _name(DISTRIBUTION.get(name, name)) not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_test_extra_pulls_in_every_extra_but_torchsort():
    extras = PYPROJECT["project"]["optional-dependencies"]
    test = " ".join(extras["test"])
    for extra in set(extras) - {"test", "dev", "torchsort"}:
        assert re.search(rf"cmkd-lightning\[[^\]]*\b{extra}\b", test), f"the test extra does not install [{extra}]"


def test_py_typed_ships():
    assert (ROOT / "cmkd_lightning" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["cmkd_lightning"]


def test_require_names_the_extra_and_the_distribution(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(MissingExtraError, match=r"needs `scikit-learn`.*pip install 'cmkd-lightning\[figures\]'"):
        require("sklearn.manifold", extra="figures", purpose="t-SNE")
    assert require("math", extra="figures", purpose="t-SNE").pi == pytest.approx(3.14159, abs=1e-5)
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert not available("wandb")
    assert available("torch")


def test_figure_callbacks_name_the_figures_extra(monkeypatch):
    import cmkd_lightning.callbacks as callbacks

    assert callbacks.LogitCorrelationHeatmap.__name__ == "LogitCorrelationHeatmap"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"EmbeddingProjection needs `matplotlib`.*\[figures\]"):
        callbacks.EmbeddingProjection  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'NotACallback'"):
        callbacks.NotACallback  # noqa: B018


def test_composed_digits_name_the_quickstart_extra(monkeypatch):
    from datamodules import ComposedDigitsDataModule

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    data = ComposedDigitsDataModule(train_size=20, val_size=10, test_size=10, batch_size=4, num_workers=0)
    with pytest.raises(MissingExtraError, match=r"ComposedDigitsDataModule needs `scikit-learn`.*\[quickstart\]"):
        data.setup("fit")


def test_cli_without_wandb_chooses_no_mode_and_names_the_extra(monkeypatch):
    from cmkd_lightning.cli import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert wandb_mode.ensure_wandb_mode() == "disabled"
    assert "WANDB_MODE" not in __import__("os").environ
    with pytest.raises(MissingExtraError, match=r"needs `wandb`.*pip install 'cmkd-lightning\[wandb\]'"):
        wandb_mode._wandb_credentials_host()


@pytest.mark.slow
def test_core_install_imports_without_any_extra():
    """A plain `pip install cmkd-lightning` (no extra) can import the library, the CLI and the data modules."""
    # Not installed = neither importable nor in the metadata (Lightning and torchmetrics look there first).
    blocked = ", ".join(repr(m) for m in EXTRA_MODULES)
    dists = ", ".join(repr(_name(DISTRIBUTION.get(m, m))) for m in EXTRA_MODULES)
    code = (
        "import sys, importlib.metadata as md\n"
        f"for m in ({blocked},): sys.modules[m] = None\n"
        "real = md.distribution\n"
        "def distribution(name):\n"
        f"    if name.lower().replace('_', '-') in ({dists},): raise md.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "md.distribution = distribution\n"
        "import cmkd_lightning, cmkd_lightning.cli, cmkd_lightning.callbacks, cmkd_lightning.losses, datamodules\n"
        "from cmkd_lightning.callbacks import CorrelationMonitor, TrainingCost, CorruptionRobustness\n"
        "try:\n    cmkd_lightning.callbacks.LogitCorrelationHeatmap\nexcept ImportError as err:\n    print(err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pip install 'cmkd-lightning[figures]'" in proc.stdout
