"""Every docstring example in the packages runs (as torchmetrics runs its doctests)."""

import doctest
import importlib
import pkgutil

import pytest
import torch

import cmkd_lightning
import datamodules


def _modules():
    for package in (cmkd_lightning, datamodules):
        yield package.__name__
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            yield info.name


@pytest.mark.parametrize("name", sorted(set(_modules())))
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_doctests_exist():
    finder = doctest.DocTestFinder()
    count = sum(len([t for t in finder.find(importlib.import_module(name)) if t.examples]) for name in set(_modules()))
    assert count >= 10
