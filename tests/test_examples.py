"""The example scripts and the quickstart run end to end in a fast mode, so they never rot."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["plain_script.py", "subclass_script.py"])
def test_example_script_runs(script, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(ROOT / "examples" / script))
    results = namespace["main"](fast=True)
    top1, top5 = results["test/acc_top1"], results["test/acc_top5"]
    assert top1 <= top5  # every top-1 hit is a top-5 hit
    for acc in (top1, top5):  # accuracies over the 256 test images of the fast mode: whole counts of them
        assert acc * 256 == pytest.approx(round(acc * 256), abs=1e-3)


def test_subclass_trains_its_projection_head(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(ROOT / "examples" / "subclass_script.py"))
    cls = namespace["HintDistillationModule"]
    from cmkd_lightning.losses import CMKDLoss

    module = cls("digits_student", teacher="digits_teacher", losses=[CMKDLoss()], num_classes=100)
    optimised = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert {id(p) for p in module.proj.parameters()} <= optimised
    assert not optimised & {id(p) for p in module.teacher.parameters()}


def _logged_keys_and_total(module, data) -> tuple[set[str], dict[str, float]]:
    import lightning as L

    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, num_sanity_val_steps=0, limit_train_batches=2, limit_val_batches=1,
        limit_test_batches=1,
    )  # fmt: skip
    trainer.fit(module, data)
    keys = set(trainer.logged_metrics)
    tested = trainer.test(module, data, verbose=False)[0]
    return keys | set(tested), {**{k: float(v) for k, v in trainer.logged_metrics.items()}, **tested}


def test_a_subclass_on_the_hook_keeps_every_key_the_parent_logs(tmp_path, monkeypatch):
    import torch

    from cmkd_lightning import DistillationModule
    from cmkd_lightning.losses import CMKDLoss
    from datamodules import ComposedDigitsDataModule

    monkeypatch.chdir(tmp_path)
    cls = runpy.run_path(str(ROOT / "examples" / "subclass_script.py"))["HintDistillationModule"]
    data = ComposedDigitsDataModule(train_size=256, val_size=128, test_size=128, batch_size=64)
    teacher = DistillationModule("digits_teacher", num_classes=data.num_classes).student
    torch.manual_seed(0)
    parent_keys, _ = _logged_keys_and_total(
        DistillationModule("digits_student", teacher=teacher, losses=[CMKDLoss()], num_classes=data.num_classes), data
    )
    torch.manual_seed(0)
    child = cls("digits_student", teacher=teacher, losses=[CMKDLoss()], num_classes=data.num_classes, hint_weight=2.0)
    child_keys, child_logged = _logged_keys_and_total(child, data)
    assert {"train/loss", "train/acc_top1", "val/acc_top1", "train/cmkd/loss", "test/loss"} <= parent_keys
    assert parent_keys <= child_keys  # nothing the parent logs is lost
    assert {"train/hint", "val/hint", "test/hint"} <= child_keys - parent_keys
    # the hint is part of the loss it optimises: test/loss = test/ce + test/cmkd/loss + test/hint (epoch means)
    parts = child_logged["test/ce"] + child_logged["test/cmkd/loss"] + child_logged["test/hint"]
    assert child_logged["test/loss"] == pytest.approx(parts, rel=1e-5)
    assert child_logged["test/hint"] > 0


def test_extra_losses_are_guarded_and_checked():
    import torch

    from cmkd_lightning import DistillationModule

    class Broken(DistillationModule):
        def __init__(self, value, key="extra", **kwargs):
            super().__init__(**kwargs)
            self.value, self.key = value, key

        def extra_losses(self, batch, student_logits, teacher_logits, features):
            return {self.key: self.value}

    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(FloatingPointError, match=r"train/extra is NaN/Inf"):
        Broken(torch.tensor(float("nan")), student=torch.nn.Linear(3, 2), num_classes=2)._shared_step((x, y), "train")
    with pytest.raises(ValueError, match=r"keys of `Broken.extra_losses` to differ .* but got 'ce'"):
        Broken(torch.tensor(1.0), key="ce", student=torch.nn.Linear(3, 2), num_classes=2)._shared_step((x, y), "train")
    with pytest.raises(ValueError, match=r"to be a scalar tensor, but got \(4,\)"):
        Broken(torch.ones(4), student=torch.nn.Linear(3, 2), num_classes=2)._shared_step((x, y), "train")
    terms = Broken(torch.tensor(0.5), student=torch.nn.Linear(3, 2), num_classes=2)._shared_step((x, y), "train")
    assert terms["loss"].item() == pytest.approx(terms["ce"].item() + 0.5)


@pytest.mark.slow
def test_quickstart_command_writes_table_files_and_chart(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmkd_lightning.experiments.quickstart",
            "--out",
            str(out),
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--teacher-epochs",
            "1",
            "--train-size",
            "512",
            "--eval-size",
            "256",
            "--no-progress",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Top-1 %" in proc.stdout and "cmkd" in proc.stdout
    result = json.loads((out / "results.json").read_text())
    assert set(result["summary"]) == {"ce", "kd", "kd_ce1", "cmkd"}
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 4
    from PIL import Image

    with Image.open(out / "results.png") as im:
        assert im.size[0] > 600 and im.size[1] > 300
    for method in ("kd", "kd_ce1", "cmkd"):  # the paper's figures, for the first seed's distilled runs
        figures = out / "figures" / method
        assert (figures / "tsne_end.png").is_file() and (figures / "training_cost.json").is_file()
        assert list(figures.glob("logit_correlation_epoch*.png"))


@pytest.mark.slow
def test_example_script_from_the_shell_is_quiet_and_uses_one_thread(tmp_path):
    """As a user runs it: 1 torch thread by default, and none of Lightning's known noise in the output."""
    env = {k: v for k, v in os.environ.items() if k not in ("CMKD_CPU_THREADS", "OMP_NUM_THREADS")}
    code = (
        "import runpy, sys, torch; sys.argv = ['plain_script.py', '--fast']; "
        f"runpy.run_path({str(ROOT / 'examples' / 'plain_script.py')!r}, run_name='__main__'); "
        "print('threads', torch.get_num_threads())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threads 1" in proc.stdout and "test/acc_top1" in proc.stdout
    assert "litlogger" not in proc.stdout + proc.stderr and "LeafSpec" not in proc.stdout + proc.stderr
