"""One error type: every error the library raises on purpose is a CMKDError, recognised by its type."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import cmkd_lightning.errors as errors
from cmkd_lightning.errors import CMKDError
from cmkd_lightning.utilities.optional import MissingExtraError

REPO = Path(__file__).resolve().parents[1]
BUILTIN_EXCEPTIONS = {
    name for name in dir(builtins) if isinstance(getattr(builtins, name), type) and issubclass(getattr(builtins, name), BaseException)
}
# Raised on purpose and not for a person's bad input: the interpreter's protocols and the process exit.
ALLOWED = {
    "NotImplementedError",  # an abstract method
    "AssertionError",  # "unreachable" after an exhaustive check
    "AttributeError",  # module __getattr__, and a DistillationLoss subclass breaking the attribute contract
    "SystemExit",  # the commands' exit codes
}


def _builtin_raises(path: Path, root: Path = REPO) -> list[str]:
    found = []
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in BUILTIN_EXCEPTIONS - ALLOWED:
                line = source.splitlines()[node.lineno - 1]
                if "pragma: no cover" not in line:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: raise {exc.id}")
    return found


def test_the_library_raises_its_own_error_types():
    files = sorted((REPO / "cmkd_lightning").rglob("*.py")) + sorted((REPO / "datamodules").rglob("*.py"))
    found = [hit for path in files for hit in _builtin_raises(path)]
    assert found == [], "raise a CMKDError subclass (cmkd_lightning/errors.py) instead:\n" + "\n".join(found)


def test_every_exception_class_the_code_defines_is_a_cmkd_error():
    import importlib
    import inspect
    import pkgutil

    import cmkd_lightning
    import datamodules

    outside = []
    for package in (cmkd_lightning, datamodules):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, obj in inspect.getmembers(module, inspect.isclass):
                private = name.startswith("_")  # internal control flow, never shown to a person
                if obj.__module__ == info.name and issubclass(obj, Exception) and not issubclass(obj, CMKDError) and not private:
                    outside.append(f"{info.name}.{name}")
    assert outside == [], f"exception classes outside the CMKDError hierarchy: {outside}"


def test_every_error_type_is_a_cmkd_error_and_the_builtin_a_caller_expects():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, CMKDError), name
    assert issubclass(MissingExtraError, (CMKDError, ImportError))
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.ArgumentTypeError, TypeError)
    assert issubclass(errors.DataNotFoundError, FileNotFoundError)
    assert issubclass(errors.UsageError, RuntimeError)
    assert issubclass(errors.UnknownKeyError, KeyError)
    assert issubclass(errors.IndexOutOfRangeError, IndexError)
    assert issubclass(errors.DownloadError, ConnectionError)


def test_unknown_key_error_reads_as_its_message():
    # KeyError's own str() wraps the message in quotes
    assert str(errors.UnknownKeyError("Expected `a.b` to index a list item.")) == "Expected `a.b` to index a list item."
    with pytest.raises(KeyError, match=r"^Expected"):
        raise errors.UnknownKeyError("Expected `a.b` to index a list item.")


def test_library_errors_reach_callers_by_type():
    from cmkd_lightning.losses import CMKDLoss
    from cmkd_lightning.models import create_model

    with pytest.raises(CMKDError, match="temperature"):
        CMKDLoss(temperature=-1.0)
    with pytest.raises(CMKDError, match="resnet9999"):
        create_model("resnet9999", num_classes=10)


@pytest.mark.parametrize("source", ["raise ValueError('x')\n", "def f():\n    raise TypeError('x')\n"])
def test_the_scan_catches_builtin_raises(tmp_path, source):
    file = tmp_path / "probe.py"
    file.write_text(source)
    assert len(_builtin_raises(file, root=tmp_path)) == 1
