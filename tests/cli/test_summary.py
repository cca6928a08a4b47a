"""The model summary `cmkd fit` prints: the networks, trainable and frozen counts, nothing else."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from torch import nn

from cmkd_lightning import DistillationModule
from cmkd_lightning.cli.summary import ModelOverview, count
from cmkd_lightning.losses import CMKDLoss, KDLoss

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "configs" / "digits"


def test_count_reads_as_a_person_writes_it():
    assert [count(n) for n in (0, 950, 1000, 4620, 84_900, 11_689_512, 2_500_000_000)] == [
        "0",
        "950",
        "1.0 K",
        "4.6 K",
        "84.9 K",
        "11.7 M",
        "2.5 B",
    ]


def test_distillation_summary_names_student_teacher_losses_and_counts():
    module = DistillationModule(
        "digits_student",
        teacher="digits_teacher",
        losses=[KDLoss(), CMKDLoss()],
        loss_weights=[1.0, 1.0],
        ce_weight=1.0,
        num_classes=100,
    )
    module.teacher.eval()
    student = sum(p.numel() for p in module.student.parameters())
    teacher = sum(p.numel() for p in module.teacher.parameters())
    text = ModelOverview().render(module)
    lines = text.splitlines()
    assert lines[0] == "Model: DistillationModule"
    assert lines[1] == f"  student  DigitsCNN  {count(student):>6} parameters, trainable"
    assert lines[2] == f"  teacher  DigitsCNN  {count(teacher):>6} parameters, frozen (eval mode)"
    assert lines[3] == "  losses   KDLoss, CMKDLoss"
    megabytes = 4 * (student + teacher) / 1e6
    assert lines[4] == (
        f"Parameters: {count(student)} trainable, {count(teacher)} frozen, {count(student + teacher)} in all "
        f"({megabytes:.2f} MB)"
    )
    assert len(lines) == 5
    assert "epoch_metrics" not in text and "FLOPs" not in text and "ModuleDict" not in text


def test_a_partly_frozen_child_shows_both_counts_and_prints_to_the_stream():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))  # 110 + 22
            self.body[0].requires_grad_(False)

    module = Tiny()
    text = ModelOverview().render(module)
    assert "  body  Sequential  132 parameters, 22 trainable, 110 frozen" in text
    assert text.endswith("Parameters: 22 trainable, 110 frozen, 132 in all (0.00 MB)")
    stream = io.StringIO()

    class FakeTrainer:
        is_global_zero = True

    ModelOverview(stream=stream).on_fit_start(FakeTrainer(), module)
    assert stream.getvalue() == text + "\n"
    FakeTrainer.is_global_zero = False
    other = io.StringIO()
    ModelOverview(stream=other).on_fit_start(FakeTrainer(), module)
    assert other.getvalue() == ""


def test_a_teacher_run_shows_its_network_as_model():
    from cmkd_lightning import TeacherModule

    module = TeacherModule("digits_teacher", num_classes=100)
    n = sum(p.numel() for p in module.model.parameters())
    lines = ModelOverview().render(module).splitlines()
    assert lines[:2] == ["Model: TeacherModule", f"  model  DigitsCNN  {count(n)} parameters, trainable"]
    assert lines[2].startswith(f"Parameters: {count(n)} trainable, 0 frozen, {count(n)} in all")


@pytest.mark.parametrize(
    ("setting", "overview", "lightning"), [(None, True, False), ("true", False, True), ("false", False, False)]
)
def test_cmkd_prints_its_overview_unless_the_config_chooses_lightnings_table_or_none(setting, overview, lightning):
    from lightning.pytorch.callbacks import ModelSummary

    from cmkd_lightning.cli import build_cli

    args = ["-c", str(DIGITS / "teacher.yaml"), "--trainer.logger=false", "--data.init_args.train_size=256"]
    if setting is not None:
        args.append(f"--trainer.enable_model_summary={setting}")
    cli = build_cli(args, run=False)
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert (ModelOverview in kinds) is overview
    assert any(issubclass(k, ModelSummary) for k in kinds) is lightning
