import math
import re
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from cmkd_lightning.callbacks import CorrelationMonitor, correlation_sums
from tests.callbacks._helpers import cpu_trainer, digits_data, digits_module, split_logits

KEYS = ("pearson", "spearman", "top1_agreement", "kl")


def reference_values(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """Means over all samples, one scipy call per row (no code shared with the callback)."""
    s, t = student.double().numpy(), teacher.double().numpy()
    log_ps = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
    log_pt = t - np.log(np.exp(t - t.max(1, keepdims=True)).sum(1, keepdims=True)) - t.max(1, keepdims=True)
    return {
        "pearson": float(np.mean([pearsonr(a, b).statistic for a, b in zip(s, t)])),
        "spearman": float(np.mean([spearmanr(a, b).statistic for a, b in zip(s, t)])),
        "top1_agreement": float(np.mean(s.argmax(1) == t.argmax(1))),
        "kl": float(np.mean((np.exp(log_pt) * (log_pt - log_ps)).sum(1))),
    }


def test_correlation_sums_matches_scipy():
    torch.manual_seed(1)
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    t[:, :3] = 0.0  # ties in the teacher: average ranks as in scipy
    sums = correlation_sums(s, t)
    ref = reference_values(s, t)
    assert sums[-1] == 16
    for i, key in enumerate(KEYS):
        assert math.isclose(float(sums[i]) / 16, ref[key], abs_tol=1e-5), key


def test_validation_values_equal_direct_computation(tmp_path):
    dm, module = digits_data(), digits_module()
    monitor = CorrelationMonitor()
    trainer = cpu_trainer(tmp_path, [monitor], num_sanity_val_steps=2)
    trainer.fit(module, datamodule=dm)
    student, teacher, _ = split_logits(module, dm)
    ref = reference_values(student, teacher)
    for key in KEYS:
        assert math.isclose(float(trainer.callback_metrics[f"corr/{key}"]), ref[key], abs_tol=1e-5), key
    # the sanity check is not recorded; one validation epoch is
    assert [(h["stage"], h["num_samples"]) for h in monitor.history] == [("val", 128)]
    assert math.isclose(monitor.history[0]["spearman"], ref["spearman"], abs_tol=1e-5)
    csv_text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert all(f"corr/{key}" in csv_text for key in KEYS)


def test_falls_back_to_an_extra_forward_when_the_step_skips_the_networks(tmp_path):
    class QuietValidation(type(digits_module())):
        def validation_step(self, batch, batch_idx):
            return None

    dm = digits_data()
    torch.manual_seed(0)
    module = QuietValidation(student=digits_module().student, teacher=digits_module().teacher)
    monitor = CorrelationMonitor(prefix="agree/")
    trainer = cpu_trainer(tmp_path, [monitor], limit_train_batches=1)
    trainer.fit(module, datamodule=dm)
    student, teacher, _ = split_logits(module, dm)
    ref = reference_values(student, teacher)
    for key in KEYS:
        assert math.isclose(float(trainer.callback_metrics[f"agree/{key}"]), ref[key], abs_tol=1e-5), key


def test_training_steps_use_the_logits_of_the_step(tmp_path):
    dm, module = digits_data(), digits_module()
    seen = {"student": [], "teacher": []}
    for role in seen:
        getattr(module, role).register_forward_hook(lambda _m, _a, out, role=role: seen[role].append(out.detach()))
    monitor = CorrelationMonitor(every_n_train_steps=1)
    trainer = cpu_trainer(tmp_path, [monitor], log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    train = [h for h in monitor.history if h["stage"] == "train"]
    assert [h["step"] for h in train] == [0, 1]
    assert all(h["num_samples"] == 64 for h in train)
    # no validation ran: the networks ran exactly once per training step
    assert len(seen["student"]) == len(seen["teacher"]) == 2
    for i, entry in enumerate(train):
        ref = reference_values(seen["student"][i], seen["teacher"][i])
        for key in KEYS:
            assert math.isclose(entry[key], ref[key], abs_tol=1e-5), key
    assert "corr/train_spearman" in trainer.logged_metrics
    assert "corr/pearson" not in trainer.logged_metrics  # no validation ran


def test_disabled_training_monitor_registers_no_hooks(tmp_path):
    dm, module = digits_data(), digits_module()

    class HookCounter(CorrelationMonitor):
        def on_train_batch_end(self, trainer, pl_module, *args):
            counts.append(len(pl_module.student._forward_hooks))
            super().on_train_batch_end(trainer, pl_module, *args)

    counts: list[int] = []
    trainer = cpu_trainer(tmp_path, [HookCounter()], limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert counts == [0, 0]


def test_module_without_teacher_is_skipped_with_one_warning(tmp_path):
    dm, module = digits_data(), digits_module(teacher=False)
    trainer = cpu_trainer(tmp_path, [CorrelationMonitor(every_n_train_steps=1)], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=dm)
    messages = [str(w.message) for w in caught if "CorrelationMonitor" in str(w.message)]
    assert len(messages) == 1 and "no `teacher`" in messages[0]
    assert not any(key.startswith("corr/") for key in trainer.callback_metrics)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prefix": 3}, TypeError, "Expected `prefix` to be a str, but got int 3."),
        (
            {"every_n_train_steps": 0},
            ValueError,
            "Expected `every_n_train_steps` to be an int >= 1 or None, but got 0.",
        ),
        (
            {"every_n_train_steps": True},
            TypeError,
            "Expected `every_n_train_steps` to be an int >= 1 or None, but got bool True.",
        ),
        (
            {"every_n_train_steps": 2.0},
            TypeError,
            "Expected `every_n_train_steps` to be an int >= 1 or None, but got float 2.0.",
        ),
    ],
)
def test_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        CorrelationMonitor(**kwargs)
