"""The shared trainer and evaluation of the experiment tools, and the process state they leave behind."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from cmkd_lightning.experiments import compare as compare_mod
from cmkd_lightning.experiments import quickstart as quickstart_mod
from cmkd_lightning.experiments.methods import BUILTIN_METHODS, Method
from cmkd_lightning.experiments.training import (
    digits_data,
    evaluate,
    isolated_run,
    make_trainer,
    student_module,
    train_teacher,
)


def _state():
    """What a run must give back: thread count, warning filters, random states, Lightning's seed variables."""
    return {
        "threads": torch.get_num_threads(),
        "filters": list(warnings.filters),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].copy(),
        "python": random.getstate(),
        "env": {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")},
    }


def _assert_same(before, after):
    assert after["threads"] == before["threads"]
    assert after["filters"] == before["filters"]
    assert after["torch"].equal(before["torch"])
    assert (after["numpy"] == before["numpy"]).all()
    assert after["python"] == before["python"]
    assert after["env"] == before["env"]


@pytest.fixture
def outside_state(monkeypatch):
    """A caller with 2 torch threads, a seed variable of its own and no filter for the tools' warnings."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setenv("PL_GLOBAL_SEED", "77")
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    with warnings.catch_warnings():
        yield
    torch.set_num_threads(saved)


def test_isolated_run_restores_the_process_state_also_after_an_error(outside_state):
    before = _state()
    with isolated_run(1) as threads:
        assert threads == torch.get_num_threads() == 1
        warnings.filterwarnings("ignore", message="anything")
        torch.manual_seed(3)
        np.random.seed(3)
        random.seed(3)
        os.environ["PL_GLOBAL_SEED"] = "3"
        os.environ["PL_SEED_WORKERS"] = "0"
    _assert_same(before, _state())
    with pytest.raises(RuntimeError, match="boom"), isolated_run(1):
        torch.manual_seed(4)
        warnings.simplefilter("ignore")
        raise RuntimeError("boom")
    _assert_same(before, _state())
    with isolated_run(0) as threads:  # 0: torch's count as it is
        assert threads == 2


def test_compare_restores_threads_warning_filters_and_random_states(tmp_path, no_training, outside_state):
    before = _state()
    tiny = {"num_digits": 1, "train_size": 64, "eval_size": 32, "epochs": 1, "teacher_epochs": 1}
    result = compare_mod.compare(["ce", "kd"], [0], out=tmp_path, verbose=False, threads=1, **tiny)
    assert result["config"]["threads"] == 1  # it ran with its own count ...
    _assert_same(before, _state())  # ... and gave the caller's back
    # also when a method fails mid-comparison
    broken = Method("broken", lambda: [_raise()], [1.0])
    with pytest.raises(RuntimeError, match="no loss here"):
        compare_mod.compare(["ce", broken], [0], out=tmp_path / "b", verbose=False, threads=1, **tiny)
    _assert_same(before, _state())


def _raise():
    raise RuntimeError("no loss here")


def test_quickstart_restores_threads_warning_filters_and_random_states(tmp_path, no_training, outside_state):
    before = _state()
    argv = ["--out", str(tmp_path), "--seeds", "0", "--methods", "ce", "kd", "--threads", "1", "--no-progress"]
    argv += ["--no-figures", "--train-size", "64", "--eval-size", "32"]
    result = quickstart_mod.run(quickstart_mod._parse(argv))
    assert result["config"]["threads"] == 1
    _assert_same(before, _state())


def test_evaluate_matches_naive_loops_and_scipy():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(6, 7), torch.nn.Linear(6, 7)
    batches = [(torch.randn(n, 6), torch.randint(0, 7, (n,))) for n in (5, 9)]
    got = evaluate(student, teacher, batches)
    top1 = top5 = agree = 0
    rhos = []
    with torch.no_grad():
        for x, y in batches:
            s, t = student(x), teacher(x)
            for i in range(len(y)):
                order = sorted(range(7), key=lambda c: -float(s[i, c]))
                top1 += order[0] == int(y[i])
                top5 += int(y[i]) in order[:5]
                agree += order[0] == int(t[i].argmax())
                rhos.append(stats.spearmanr(s[i].numpy(), t[i].numpy()).statistic)
    assert got["top1"] == pytest.approx(100 * top1 / 14)
    assert got["top5"] == pytest.approx(100 * top5 / 14)
    assert got["agreement"] == pytest.approx(100 * agree / 14)
    assert got["spearman"] == pytest.approx(float(np.mean(rhos)), abs=1e-5)
    assert not student.training and not teacher.training


def test_make_trainer_validates_only_when_asked(tmp_path):
    assert make_trainer(1, tmp_path).limit_val_batches == 0
    trainer = make_trainer(2, tmp_path, validate=True)
    assert trainer.limit_val_batches == 1.0 and trainer.max_epochs == 2
    assert trainer.num_sanity_val_steps == 0 and trainer.checkpoint_callback is None


def test_seed_fixes_initial_weights_whatever_ran_before(tmp_path, no_training):
    data = digits_data(1, 64, 32)
    torch.manual_seed(123)
    first = train_teacher(data, 1, tmp_path, cache=False).state_dict()
    torch.rand(1000)  # other work consumed random numbers in between
    second = train_teacher(data, 1, tmp_path, cache=False).state_dict()
    assert all(first[k].equal(second[k]) for k in first)
    teacher = train_teacher(data, 1, tmp_path, cache=False)
    kd = student_module(BUILTIN_METHODS["kd"], 5, data, teacher)
    ce = student_module(BUILTIN_METHODS["ce"], 5, data, teacher)
    other = student_module(BUILTIN_METHODS["kd"], 6, data, teacher)
    assert all(a.equal(b) for a, b in zip(kd.student.parameters(), ce.student.parameters()))
    assert not all(a.equal(b) for a, b in zip(kd.student.parameters(), other.student.parameters()))
    assert ce.teacher is None and kd.teacher is teacher
    assert (kd.ce_weight, kd.loss_weights) == (0.1, [0.9])
