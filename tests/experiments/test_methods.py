"""The one methods table: every name's meaning, and quickstart and compare building the same losses from it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from cmkd_lightning.experiments import compare as compare_mod
from cmkd_lightning.experiments import methods
from cmkd_lightning.experiments import quickstart as quickstart_mod
from cmkd_lightning.experiments.methods import (
    BUILTIN_METHODS,
    Method,
    method_config,
    method_from_config,
    methods_help,
    resolve_methods,
)
from cmkd_lightning.losses import CMKDLoss, DISTLoss, KDLoss, ReviewKDLoss
from cmkd_lightning.losses.feature import FeatureDistillationLoss

PACKAGE = Path(methods.__file__).parent
DIGITS_CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs" / "digits"

# name -> (ce_weight, [(loss class, loss weight, {setting: value})]): what each name means, written out once more
# by hand so that a change to the table is a visible change to this test.
MEANINGS = {
    "ce": (1.0, []),
    "kd": (0.1, [(KDLoss, 0.9, {"temperature": 4.0})]),
    "kd_ce1": (1.0, [(KDLoss, 1.0, {"temperature": 4.0})]),
    "dist": (1.0, [(DISTLoss, 2.0, {"temperature": 4.0, "beta": 1.0, "gamma": 1.0})]),
    "cmkd": (1.0, [(CMKDLoss, 1.0, {"temperature": 4.0, "beta": 4.0, "gamma": 1.0, "preset": "library"})]),
    "cmkd_pearson": (1.0, [(CMKDLoss, 1.0, {"spearman": False, "preset": "library"})]),
    "cmkd_paper": (1.0, [(CMKDLoss, 1.0, {"temperature": 4.0, "beta": 4.0, "gamma": 1.0, "preset": "paper"})]),
    "cmkd_loss_entropy": (1.0, [(CMKDLoss, 1.0, {"entropy_source": "loss", "preset": "library"})]),
    "reviewkd": (1.0, [(ReviewKDLoss, 1.0, {})]),
    "reviewkd_cmkd": (1.0, [(ReviewKDLoss, 1.0, {}), (CMKDLoss, 1.0, {"preset": "library"})]),
}


def test_every_builtin_name_means_what_it_says():
    assert set(BUILTIN_METHODS) == set(MEANINGS)
    for name, (ce_weight, terms) in MEANINGS.items():
        method = BUILTIN_METHODS[name]
        losses = method.losses()
        assert method.name == name and method.ce_weight == ce_weight, name
        assert method.loss_weights == [w for _, w, _ in terms], name
        assert [type(loss) for loss in losses] == [cls for cls, _, _ in terms], name
        for loss, (_, _, settings) in zip(losses, terms):
            assert {k: getattr(loss, k) for k in settings} == settings, name
        assert method.description and "\n" not in method.description, name


def test_cmkd_is_the_loss_defaults_and_kd_ce1_is_ce_1_plus_kd_1():
    (cmkd,) = BUILTIN_METHODS["cmkd"].losses()
    assert method_config(BUILTIN_METHODS["cmkd"])["losses"] == method_config(Method("x", lambda: [CMKDLoss()]))["losses"]
    assert cmkd.pearson_scale == "sqrt_classes" and cmkd.entropy_source == "teacher"
    kd_ce1 = BUILTIN_METHODS["kd_ce1"]
    assert (kd_ce1.ce_weight, kd_ce1.loss_weights) == (1.0, [1.0])
    assert "CE 1 + KD 1" in kd_ce1.description


def test_losses_are_fresh_objects_for_every_run():
    for method in BUILTIN_METHODS.values():
        first, second = method.losses(), method.losses()
        assert all(a is not b for a, b in zip(first, second))


def _name(node: ast.expr) -> str:
    """``a.b.c`` of a call's function (an empty string for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def test_the_table_is_the_only_source_of_losses_in_the_tools():
    """No other module of the experiment tools builds a distillation loss or keeps a table of its own."""
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "methods.py":
            continue
        text = path.read_text()
        called = [_name(node.func) for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Call)]
        assert not [c for c in called if "Loss" in c], f"{path.name} builds a loss itself"
        assert not re.search(r"^METHODS\b|^BUILTIN_METHODS\s*[:=]", text, re.M), f"{path.name} has its own table"
    assert compare_mod.BUILTIN_METHODS is BUILTIN_METHODS
    choices = next(a.choices for a in quickstart_mod.build_parser()._actions if a.dest == "methods")
    assert list(choices) == list(BUILTIN_METHODS)


def _built(calls):
    """(resolved config: CE weight, loss weights, losses; has a teacher) of every module fitted."""
    out = []
    for module in (c["module"] for c in calls):
        losses = list(module.losses)
        config = method_config(Method("m", lambda losses=losses: losses, list(module.loss_weights), module.ce_weight))
        out.append((config, module.teacher is not None))
    return out


def test_quickstart_and_compare_build_the_same_students_for_the_same_names(tmp_path, no_training):
    names = ["ce", "kd", "kd_ce1", "dist", "cmkd_paper", "cmkd"]
    sizes = ["--train-size", "128", "--eval-size", "64", "--epochs", "1", "--teacher-epochs", "1"]
    quickstart_mod.main(
        ["--out", str(tmp_path / "qs"), "--seeds", "0", "--methods", *names, "--no-progress", "--no-figures", *sizes]
    )
    quick = no_training[1:]  # the first fit is the teacher's
    no_training.clear()
    tiny = {"num_digits": 2, "train_size": 128, "eval_size": 64, "epochs": 1, "teacher_epochs": 1}
    compare_mod.compare(names, [0], out=tmp_path / "c", verbose=False, **tiny)
    comp = no_training[1:]
    assert len(quick) == len(comp) == len(names)
    for name, q, c in zip(names, _built(quick), _built(comp)):
        assert q == c, name
        assert q[0] == method_config(BUILTIN_METHODS[name]), name  # ... and it is the table's
    # the same trainer set-up, apart from the validation epochs the quickstart's figures read
    for q, c in zip(quick, comp):
        assert (q["epochs"], q["logger"]) == (c["epochs"], c["logger"])
        assert q["validate"] and not c["validate"]
    # the same initial student weights for the same seed, whichever tool built them
    for q, c in zip(quick, comp):
        for (k, a), b in zip(q["module"].student.state_dict().items(), c["module"].student.state_dict().values()):
            assert a.equal(b), k


def test_resolve_methods_rejects_unknown_and_repeated_names():
    with pytest.raises(ValueError, match=r"Expected each method to be one of \[.*'kd_ce1'.*\] or a .yaml config"):
        resolve_methods(["kd_ce09"])
    with pytest.raises(ValueError, match="unique method names"):
        resolve_methods(["cmkd", "cmkd"])


def test_methods_help_lists_every_name_with_its_line():
    text = methods_help()
    lines = text.splitlines()
    assert len(lines) == len(BUILTIN_METHODS)
    for line, (name, method) in zip(lines, BUILTIN_METHODS.items()):
        assert line.split(maxsplit=1) == [name, method.description]



def _total(method: Method, student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The method's weighted distillation loss plus its weighted CE on one batch of logits."""
    total = method.ce_weight * torch.nn.functional.cross_entropy(student, y)
    for weight, loss in zip(method.loss_weights, method.losses()):
        total = total + weight * loss(student, teacher, y)["loss"]
    return total


@pytest.mark.parametrize(
    "path", [p for p in sorted(DIGITS_CONFIGS.glob("*.yaml")) if p.stem in BUILTIN_METHODS], ids=lambda p: p.stem
)
def test_a_digits_config_named_like_a_builtin_trains_the_same_loss(path):
    """``cmkd fit -c examples/configs/digits/<name>.yaml`` and ``--methods <name>`` are one method, not two."""
    from_config, builtin = method_from_config(path), BUILTIN_METHODS[path.stem]
    if method_config(from_config) == method_config(builtin):
        return
    # written differently (e.g. DIST: 1 x (beta = gamma = 2) vs 2 x (beta = gamma = 1)): the same loss values
    assert not any(isinstance(loss, FeatureDistillationLoss) for loss in builtin.losses()), path.stem
    torch.manual_seed(0)
    student, teacher, y = torch.randn(16, 100), 3 * torch.randn(16, 100), torch.randint(0, 100, (16,))
    torch.testing.assert_close(_total(from_config, student, teacher, y), _total(builtin, student, teacher, y))
