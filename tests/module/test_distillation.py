"""DistillationModule: frozen teacher, loss composition, checks, checkpoints and resume."""

import copy
import csv
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import CMKDLoss, DistillationLoss, DKDLoss, KDLoss
from datamodules._sampling import EpochShuffleSampler

C = 10


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = C, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        return self.fc(self.body(x))


def _loader(n=64, batch_size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 4, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _trainer(tmp_path, **kw):
    opts = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        deterministic=True,
    )
    opts.update(kw)
    return L.Trainer(**opts)


def _module(**kw):
    opts = dict(student=TinyNet(seed=1), teacher=TinyNet(hidden=32, seed=2), losses=[CMKDLoss()], num_classes=C)
    opts.update(kw)
    return DistillationModule(**opts)


def test_teacher_is_frozen_through_training(tmp_path):
    module = _module()
    before = copy.deepcopy(module.teacher.state_dict())
    student_before = copy.deepcopy(module.student.state_dict())
    assert not any(p.requires_grad for p in module.teacher.parameters())
    _trainer(tmp_path, max_epochs=2).fit(module, _loader(), _loader(n=32))
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm running stats included
    assert any(not torch.equal(v, student_before[k]) for k, v in module.student.state_dict().items())
    optimizer = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.teacher.parameters()}


def test_teacher_stays_in_eval_mode_after_train():
    module = _module()
    module.train()
    assert module.student.training and not module.teacher.training
    assert all(not m.training for m in module.teacher.modules())


def test_no_teacher_trains_with_cross_entropy_alone(tmp_path):
    module = DistillationModule(TinyNet(), num_classes=C)
    trainer = _trainer(tmp_path)
    trainer.fit(module, _loader(), _loader(n=32))
    assert "train/ce" in trainer.callback_metrics
    assert not any(k.startswith("train/cmkd") for k in trainer.callback_metrics)
    assert "val/teacher_acc_top1" not in trainer.callback_metrics


def test_logged_metrics(tmp_path):
    module = _module(losses=[DKDLoss(warmup_epochs=2), CMKDLoss()], loss_weights=[1.0, 0.5])
    trainer = _trainer(tmp_path, log_every_n_steps=1)
    trainer.fit(module, _loader(), _loader(n=32))
    logged = set(trainer.callback_metrics)
    expected = {
        "train/loss",
        "train/ce",
        "train/lr",
        "train/acc_top1",
        "train/acc_top5",
        "train/dkd/loss",
        "train/dkd/tckd_loss",
        "train/dkd/nckd_loss",
        "train/dkd/warmup",
        "train/cmkd/loss",
        "train/cmkd/pearson_loss",
        "train/cmkd/spearman_loss",
        "train/cmkd/hard_fraction",
        "val/loss",
        "val/ce",
        "val/acc_top1",
        "val/acc_top5",
        "val/acc_top1_best",
        "val/teacher_acc_top1",
        "val/teacher_acc_top5",
        "val/cmkd/pearson_loss",
    }
    assert expected <= logged, expected - logged
    trainer.test(module, _loader(n=32))
    assert {"test/acc_top1", "test/acc_top5"} <= set(trainer.callback_metrics)


def test_total_loss_is_the_weighted_sum_with_warmup():
    module = _module(losses=[DKDLoss(warmup_epochs=4), CMKDLoss()], loss_weights=[2.0, 0.5], ce_weight=0.3)
    x, y = next(iter(_loader()))
    zs, zt = module.student(x), module.teacher_forward(x)
    out = module.compute_losses(zs, zt, y)  # no trainer: epoch 0, DKD factor 1/4
    dkd = DKDLoss()(zs, zt, y)["loss"]
    cmkd = CMKDLoss()(zs, zt, y)["loss"]
    ce = torch.nn.functional.cross_entropy(zs, y)
    torch.testing.assert_close(out["loss"], 0.3 * ce + 2.0 * 0.25 * dkd + 0.5 * cmkd)
    torch.testing.assert_close(out["dkd/warmup"], torch.tensor(0.25))


def test_same_loss_twice_gets_distinct_names():
    module = _module(losses=[CMKDLoss(), CMKDLoss(temperature=1.0)])
    x, y = next(iter(_loader()))
    out = module.compute_losses(module.student(x), module.teacher_forward(x), y)
    assert {"cmkd/loss", "cmkd_1/loss"} <= set(out)


def test_losses_run_in_float32_under_bf16_autocast():
    module = _module()
    x, y = next(iter(_loader()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zs, zt = module.student(x), module.teacher_forward(x)
        out = module.compute_losses(zs, zt, y)
    assert zs.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in out.values())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"teacher": None}, ValueError, r"Expected a `teacher` when distillation `losses` are given"),
        ({"losses": [nn.MSELoss()]}, TypeError, r"Expected `losses\[0\]` to be a DistillationLoss .* but got MSELoss"),
        (
            {"loss_weights": [1.0, 2.0]},
            ValueError,
            r"Expected `loss_weights` to have one weight per loss \(1\), but got 2",
        ),
        ({"ce_weight": -1.0}, ValueError, r"Expected `ce_weight` to be a finite number >= 0, but got -1.0"),
        ({"optimizer": "lamb"}, TypeError, r"Expected `optimizer` to be a callable .*, but got str"),
        ({"lr_scheduler": {"init_args": {}}}, ValueError, r"Expected `lr_scheduler` to be a callable or a config"),
        (
            {"num_classes": 7},
            ValueError,
            r"Expected the student's classifier to output `num_classes` = 7 classes, but its final linear layer has 10 outputs",
        ),
        (
            {"teacher": TinyNet(num_classes=12)},
            ValueError,
            r"Expected the teacher's classifier to output `num_classes` = 10 classes, but its final linear layer has 12",
        ),
        ({"student": 3}, TypeError, r"Expected `student` to be an nn.Module or a model-zoo name, but got int"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _module(**kwargs)


def test_logit_shape_mismatch_is_caught_before_the_first_step(tmp_path):
    class NoLinearHead(nn.Module):  # the classifier size cannot be read: caught on the first batch instead
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 7, 4)

        def forward(self, x):
            return self.conv(x).flatten(1)

    module = _module(teacher=NoLinearHead())
    with pytest.raises(
        ValueError, match=r"Expected the teacher to output logits of shape \(N, 10\) .* but got \(16, 7\)"
    ):
        _trainer(tmp_path).fit(module, _loader())


def test_teacher_near_chance_warns(tmp_path):
    module = _module()
    with pytest.warns(UserWarning, match=r"teacher's validation Top-1 is .* near chance level"):
        _trainer(tmp_path, limit_train_batches=1).fit(module, _loader(), _loader(n=32))


class _NaNAfter(DistillationLoss):
    """A loss that turns NaN from global call ``start`` on (finite logits, exploding loss)."""

    name = "boom"

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start, self.calls = start, 0

    def forward(self, student_logits, teacher_logits, targets=None):
        self.calls += 1
        loss = (student_logits - teacher_logits).pow(2).mean()
        return {"loss": loss * float("nan") if self.calls > self.start else loss}


def test_non_finite_loss_names_the_component_and_keeps_the_last_checkpoint(tmp_path):
    module = _module(losses=[CMKDLoss(), _NaNAfter(start=6)])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    trainer = _trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[ckpt], limit_val_batches=0)
    with pytest.raises(
        FloatingPointError, match=r"Non-finite loss at train global step 6 \(epoch 2\): train/boom/loss"
    ):
        trainer.fit(module, _loader())
    assert all(torch.isfinite(p).all() for p in module.parameters())  # no optimiser step on the bad batch
    restored = DistillationModule.load_from_checkpoint(
        tmp_path / "ckpt" / "last.ckpt",
        student=TinyNet(seed=1),
        teacher=TinyNet(hidden=32, seed=2),
        losses=[CMKDLoss()],
    )
    assert all(torch.isfinite(p).all() for p in restored.parameters())
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_non_finite_student_logits_stop_training(tmp_path):
    class Explode(TinyNet):
        def forward(self, x):
            return super().forward(x) * (float("nan") if self.training else 1.0)

    module = _module(student=Explode(seed=1))
    with pytest.raises(FloatingPointError, match=r"Non-finite student logits at train global step 0 \(epoch 1\)"):
        _trainer(tmp_path).fit(module, _loader())


def test_check_finite_every_n_steps_checks_only_those_steps(tmp_path):
    # the loss turns NaN on call 6 (global step 5): with check_finite=4 the guard runs at steps 0, 4, 8 and
    # catches the NaN (which then stays in the weights) at step 8
    module = _module(losses=[_NaNAfter(start=5)], check_finite=4)
    with pytest.raises(FloatingPointError, match=r"Non-finite (loss|student logits) at train global step 8 "):
        _trainer(tmp_path, max_epochs=3, limit_val_batches=0).fit(module, _loader())


def test_check_finite_off_never_reads(tmp_path):
    module = _module(losses=[_NaNAfter(start=0)], check_finite=False)
    _trainer(tmp_path, limit_val_batches=0).fit(module, _loader())  # trains on NaN: the user turned the guard off
    assert module.global_step == 4


@pytest.mark.parametrize("bad", [-1, 1.5, "yes"])
def test_check_finite_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=r"Expected `check_finite` to be a bool or an integer >= 0"):
        _module(check_finite=bad)


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_non_finite_guard_covers_validation_and_test_and_names_stage_and_batch(tmp_path, stage):
    class NaNInEval(TinyNet):
        def forward(self, x):
            return super().forward(x) * (1.0 if self.training else float("nan"))

    module = _module(student=NaNInEval(seed=1))
    name = "val" if stage == "validate" else "test"
    with pytest.raises(FloatingPointError, match=rf"Non-finite student logits at {name} batch 0 \(global step 0"):
        getattr(_trainer(tmp_path), stage)(module, _loader(n=32))


def test_checkpoint_holds_no_teacher_by_default_and_reloads(tmp_path):
    module = _module()
    trainer = _trainer(tmp_path, enable_checkpointing=True)
    trainer.fit(module, _loader(), _loader(n=32))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not any(k.startswith("teacher.") for k in state)
    assert any(k.startswith("student.") for k in state)
    teacher = TinyNet(hidden=32, seed=2)
    restored = DistillationModule.load_from_checkpoint(
        path, student=TinyNet(seed=5), teacher=teacher, losses=[CMKDLoss()]
    )
    for key, value in module.student.state_dict().items():
        assert torch.equal(restored.student.state_dict()[key], value)
    assert restored.teacher is teacher


def test_checkpoint_with_teacher_on_request(tmp_path):
    module = _module(save_teacher_in_checkpoint=True)
    trainer = _trainer(tmp_path)
    trainer.fit(module, _loader(), _loader(n=32))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert any(k.startswith("teacher.") for k in state)
    restored = DistillationModule.load_from_checkpoint(
        path, student=TinyNet(seed=5), teacher=TinyNet(hidden=32, seed=9), losses=[CMKDLoss()]
    )
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(restored.teacher.state_dict()[key], value)


def test_zoo_names_are_hyperparameters_and_reload_without_arguments(tmp_path):
    module = DistillationModule(student="resnet8", teacher="resnet14", losses=[KDLoss()], num_classes=10)
    assert module.hparams.student == "resnet8"
    assert module.hparams.losses == [KDLoss().to_config()]
    trainer = _trainer(tmp_path)
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    dl = DataLoader(TensorDataset(x, y), batch_size=4)
    trainer.fit(module, dl, limit_train_batches=1) if False else trainer.fit(module, dl)
    path = tmp_path / "zoo.ckpt"
    trainer.save_checkpoint(path)
    restored = DistillationModule.load_from_checkpoint(path)
    assert [type(loss) for loss in restored.losses] == [KDLoss] and restored.loss_weights == [0.9]
    module.eval()
    restored.eval()
    torch.testing.assert_close(restored(x), module(x))


def _fit_resumable(tmp_path, max_epochs, ckpt_path=None):
    L.seed_everything(123)
    # constant lr: the default would give each run a cosine over its own max_epochs (2 for the part, 4 for the full)
    module = _module(losses=[KDLoss(), CMKDLoss()], lr_scheduler=None)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = _trainer(tmp_path, max_epochs=max_epochs, enable_checkpointing=True, callbacks=[ckpt])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 4, generator=g), torch.randint(0, C, (64,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=16, sampler=EpochShuffleSampler(64, seed=1))
    trainer.fit(module, train, _loader(n=32), ckpt_path=ckpt_path)
    return module, trainer


def test_resume_from_mid_training_checkpoint_matches_uninterrupted_run(tmp_path):
    full, full_trainer = _fit_resumable(tmp_path / "full", max_epochs=4)
    _fit_resumable(tmp_path / "part", max_epochs=2)
    resumed, resumed_trainer = _fit_resumable(
        tmp_path / "resumed", max_epochs=4, ckpt_path=tmp_path / "part" / "epoch=1.ckpt"
    )
    for key, value in full.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    for key in ("val/acc_top1", "val/acc_top5", "val/loss", "val/acc_top1_best"):
        torch.testing.assert_close(resumed_trainer.callback_metrics[key], full_trainer.callback_metrics[key])


def test_teacher_checkpoint_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        _module(teacher_checkpoint=str(missing))
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": TinyNet(hidden=8).state_dict()}, wrong)
    with pytest.raises(ValueError, match=r"size mismatch|shape"):
        _module(teacher_checkpoint=str(wrong))
    other = tmp_path / "other.pth"
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match=r"(?s)missing.*body\.1\.weight.*unexpected.*conv\.weight"):
        _module(teacher_checkpoint=str(other))


def test_teacher_checkpoint_in_community_format_loads(tmp_path):
    teacher = TinyNet(hidden=32, seed=7)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": teacher.state_dict(), "accuracy": 79.42, "optimizer": {}}, path)
    module = _module(teacher_checkpoint=str(path))
    x = torch.randn(4, 3, 4)
    teacher.eval()
    with warnings.catch_warnings():
        torch.testing.assert_close(module.teacher_forward(x), teacher(x))


def test_teacher_trained_by_this_module_loads_as_teacher(tmp_path):
    """A cross-entropy run stores the network as `student.`; `teacher_checkpoint` takes the only part present."""
    teacher_run = DistillationModule(TinyNet(hidden=32, seed=3), num_classes=C)
    trainer = _trainer(tmp_path)
    trainer.fit(teacher_run, _loader())
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    module = _module(teacher=TinyNet(hidden=32, seed=4), teacher_checkpoint=str(path))
    for key, value in teacher_run.student.state_dict().items():
        assert torch.equal(module.teacher.state_dict()[key], value), key
    with pytest.raises(ValueError, match="teacher"):
        _module(teacher=TinyNet(hidden=32, seed=4), teacher_checkpoint=str(path), teacher_checkpoint_part="teacher")


# ---------------------------------------------------------------------------------------------------------------
# what the steps hand to callbacks, and what a person sees


class _Outputs(L.Callback):
    """Keeps what each step returned, with the step's batch."""

    def __init__(self):
        self.seen = {"train": [], "val": [], "test": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen["train"].append((outputs, batch))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.seen["val"].append((outputs, batch))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.seen["test"].append((outputs, batch))


def test_steps_return_the_logits_of_the_step(tmp_path):
    module, recorder = _module(), _Outputs()
    calls = {"student": [], "teacher": []}
    for role in calls:
        getattr(module, role).register_forward_hook(lambda _m, _a, out, role=role: calls[role].append(out.detach()))
    trainer = _trainer(tmp_path, callbacks=[recorder], limit_train_batches=2)
    trainer.fit(module, _loader(), _loader(n=32))
    trainer.test(module, _loader(n=32))
    # every network ran once per step (2 train, 2 val, 2 test): the outputs are those very logits
    assert len(calls["student"]) == len(calls["teacher"]) == 6
    steps = recorder.seen["train"] + recorder.seen["val"] + recorder.seen["test"]
    for i, (outputs, _batch) in enumerate(steps):
        assert set(outputs) == {"loss", "student_logits", "teacher_logits"}
        assert torch.equal(outputs["student_logits"], calls["student"][i])
        assert torch.equal(outputs["teacher_logits"], calls["teacher"][i])
        assert not outputs["student_logits"].requires_grad and outputs["loss"].ndim == 0
    with torch.no_grad():  # evaluation steps ran in eval mode
        x = recorder.seen["test"][0][1][0]
        torch.testing.assert_close(recorder.seen["test"][0][0]["student_logits"], module.student.eval()(x))


def test_steps_without_teacher_return_no_teacher_logits():
    module = DistillationModule(TinyNet(), num_classes=C)
    out = module.validation_step(next(iter(_loader())), 0)
    assert out["teacher_logits"] is None and out["student_logits"].shape == (16, C)


def test_model_summary_shows_one_row_for_all_metrics():
    from lightning.pytorch.utilities.model_summary import ModelSummary

    assert ModelSummary(_module(), max_depth=1).layer_names == ["student", "teacher", "losses", "epoch_metrics"]


def test_teacher_line_reports_the_first_real_validation_epoch(tmp_path):
    import logging

    module, val = _module(), _loader(n=48, batch_size=16, seed=3)
    x, y = next(iter(val))
    with torch.no_grad():
        sanity = float((module.teacher(x).argmax(1) == y).float().mean())
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        trainer = _trainer(tmp_path, num_sanity_val_steps=1, limit_train_batches=1)
        trainer.fit(module, _loader(), val)
    finally:
        logger.removeHandler(handler)
    epoch = float(trainer.callback_metrics["val/teacher_acc_top1"])
    assert epoch != sanity  # the sanity check (one batch) and the epoch (three) differ on this data
    (line,) = [line for line in lines if line.startswith("Teacher validation Top-1")]
    assert line.startswith(f"Teacher validation Top-1: {100 * epoch:.2f}%")


def test_lightning_start_noise_is_filtered_only_while_the_run_starts(tmp_path):
    module = _module()  # its teacher is in eval mode: Lightning warns about it at the start of training
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        trainer = _trainer(tmp_path, limit_train_batches=1)
        trainer.fit(module, _loader(), _loader(n=32))
        trainer.test(module, _loader(n=32))
        assert warnings.filters == before  # nothing of ours is left behind
        warnings.warn("Found 3 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert not any("LeafSpec" in m for m in messages)
    assert [m for m in messages if "module(s) in eval mode" in m] == [
        "Found 3 module(s) in eval mode at the start of training."  # the user's own, after the run, still shows
    ]


class _KeyOnRankOne(DistillationModule):
    """Adds a validation term that only rank 1 (of two) reports: the mean label of its batch."""

    def extra_losses(self, batch, student_logits, teacher_logits, features):
        if self.training or self.trainer.global_rank != 1:
            return {}
        return {"rank1_label": batch[1].float().mean()}


@pytest.mark.slow  # two processes
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_epoch_means_under_ddp_when_only_one_rank_reports_a_key(tmp_path):
    module = _KeyOnRankOne(student=TinyNet(seed=1), teacher=TinyNet(hidden=32, seed=2), num_classes=C)
    val = _loader(n=64, batch_size=8, seed=4)
    trainer = _trainer(tmp_path, devices=2, strategy="ddp_fork")
    trainer.validate(module, val, verbose=False)
    labels = val.dataset.tensors[1]
    # Lightning's DistributedSampler (no shuffling for validation) gives rank 1 the samples 1, 3, 5, ...
    assert float(trainer.callback_metrics["val/rank1_label"]) == pytest.approx(float(labels[1::2].float().mean()))
    # the terms every rank reports are still the means over all 64 samples
    single = _trainer(tmp_path / "single")
    single.validate(DistillationModule(student=TinyNet(seed=1), teacher=TinyNet(hidden=32, seed=2), num_classes=C), val)
    assert float(trainer.callback_metrics["val/ce"]) == pytest.approx(float(single.callback_metrics["val/ce"]), rel=1e-5)


class _StepLosses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("every", [1, 3])
def test_step_values_reach_the_logger_on_lightnings_logging_steps(tmp_path, every):
    # train/loss_step and train/lr go through self.log only on the steps Lightning sends to the logger: the
    # logger must still get them on exactly those steps, each with that step's own loss.
    probe = _StepLosses()
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = _trainer(tmp_path, logger=logger, log_every_n_steps=every, max_steps=7, callbacks=[probe])
    trainer.fit(_module(), _loader(n=7 * 16, batch_size=16))
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}
    lrs = {int(r["step"]) for r in rows if r.get("train/lr")}
    expected_steps = [s for s in range(7) if (s + 1) % every == 0]
    assert sorted(logged) == expected_steps
    assert lrs == set(expected_steps)
    for step in expected_steps:
        assert logged[step] == pytest.approx(probe.losses[step], rel=1e-6)


class _HostReads(L.Callback):
    """Counts the tensor reads to the host (`item`, `bool`, `float`, `tolist`) made in each training step,
    Lightning's bookkeeping between steps included (from one step's start to the next one's)."""

    def __init__(self, monkeypatch):
        self.per_step, self._count = [], None
        for name in ("item", "__bool__", "__float__", "tolist"):
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                if self._count is not None:
                    self._count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._count is not None:
            self.per_step.append(self._count)
        self._count = 0

    def on_train_end(self, trainer, pl_module):
        self.per_step.append(self._count)
        self._count = None


@pytest.mark.parametrize("check_finite", [True, False])
def test_a_training_step_reads_the_device_only_for_the_guard_and_the_logger(tmp_path, monkeypatch, check_finite):
    # log_every_n_steps=3: Lightning sends the logged values on steps 2 and 5 (two reads: loss and lr); every other
    # step reads only the guard's one flag, or nothing with check_finite=False (on a GPU, each read is a sync)
    reads = _HostReads(monkeypatch)
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = _trainer(tmp_path, logger=logger, log_every_n_steps=3, max_steps=7, callbacks=[reads])
    trainer.fit(_module(losses=[KDLoss()], check_finite=check_finite), _loader(n=7 * 16, batch_size=16))
    guard = int(check_finite)
    # the last entry also holds the epoch's end (the epoch means, read once); steps 0-5 are steps alone
    assert reads.per_step[:6] == [guard + (2 if step in (2, 5) else 0) for step in range(6)]
