"""Issue 16: defaults a user can trust and runs that record what they trained with (docs/DEFAULTS.md)."""

from __future__ import annotations

import functools
import inspect
import logging
import warnings

import lightning as L
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cmkd_lightning import DistillationModule, TeacherModule
from cmkd_lightning import functional as F
from cmkd_lightning.losses import CMKDLoss, DISTLoss, DKDLoss, FeatureDistillationLoss, KDLoss, LSKDLoss, NKDLoss
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.schedules import StepOrCosine, WarmupCosine

C = 10


class TinyNet(nn.Module):
    def __init__(self, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc(self.body(x))


def _loader(n=32):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, 4, generator=g), torch.randint(0, C, (n,), generator=g)), 16)


def _trainer(tmp_path, max_epochs=1, **kw):
    opts = dict(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    opts.update(kw)
    return L.Trainer(**opts)


def _distil(losses, **kw):
    return DistillationModule(TinyNet(seed=1), teacher=TinyNet(hidden=8, seed=2), losses=losses, num_classes=C, **kw)


def _lr_per_epoch(tmp_path, module, max_epochs):
    seen = []

    class _Record(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    _trainer(tmp_path, max_epochs=max_epochs, callbacks=[_Record()], limit_train_batches=1).fit(module, _loader())
    return seen


# ------------------------------------------------------------------ 1. a schedule that fits the run
def _multistep(milestones):
    return functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=milestones, gamma=0.1)


def test_multistep_with_milestones_beyond_the_run_warns_with_the_fix(tmp_path):
    module = DistillationModule(TinyNet(), num_classes=C, lr_scheduler=_multistep([150, 180, 210]))
    with pytest.warns(
        UserWarning,
        match=r"MultiStepLR milestones \(150, 180, 210\) are all >= max_epochs=3: the learning "
        r"rate never decays; use cmkd_lightning.schedules.StepOrCosine",
    ):
        lrs = _lr_per_epoch(tmp_path, module, 3)
    assert lrs == [0.05, 0.05, 0.05]


def test_multistep_warns_about_the_milestones_it_cannot_reach(tmp_path):
    module = DistillationModule(TinyNet(), num_classes=C, lr_scheduler=_multistep([1, 5]))
    with pytest.warns(UserWarning, match=r"MultiStepLR milestones \(5,\) are >= max_epochs=3 and never take effect"):
        lrs = _lr_per_epoch(tmp_path, module, 3)
    assert lrs == pytest.approx([0.05, 0.005, 0.005])


def test_default_schedule_is_cosine_over_a_short_run_and_says_so(tmp_path, caplog):
    module = DistillationModule(TinyNet(), num_classes=C)
    assert module.hparams.lr_scheduler == {"class_path": "cmkd_lightning.schedules.StepOrCosine", "init_args": {}}
    with (
        caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        lrs = _lr_per_epoch(tmp_path, module, 4)
    assert not [w for w in caught if "milestones" in str(w.message)]  # the default does not warn
    expected = [0.05 * (1 + torch.cos(torch.tensor(torch.pi * e / 4)).item()) / 2 for e in range(4)]
    assert lrs == pytest.approx(expected)
    assert "do not all fall within max_epochs=4" in caplog.text and "cosine over the 4 epochs" in caplog.text


def test_default_schedule_is_the_step_decay_when_the_milestones_fit(tmp_path):
    schedule = functools.partial(StepOrCosine, milestones=[1, 2])
    module = DistillationModule(TinyNet(), num_classes=C, lr_scheduler=schedule)
    assert _lr_per_epoch(tmp_path, module, 3) == pytest.approx([0.05, 0.005, 0.0005])
    assert module.hparams.lr_scheduler["init_args"] == {"milestones": [1, 2]}


def test_no_scheduler_keeps_the_learning_rate(tmp_path):
    module = DistillationModule(TinyNet(), num_classes=C, lr_scheduler=None)
    assert _lr_per_epoch(tmp_path, module, 3) == [0.05, 0.05, 0.05] and module.hparams.lr_scheduler is None


def test_warmup_cosine_ramps_then_decays_over_the_trainers_epochs(tmp_path):
    schedule = functools.partial(WarmupCosine, warmup_epochs=2, start_factor=0.1)
    module = DistillationModule(TinyNet(), num_classes=C, lr_scheduler=schedule)
    lrs = _lr_per_epoch(tmp_path, module, 6)  # max_epochs comes from the trainer: cosine over epochs 2..6
    expected = [0.005, 0.0275] + [0.05 * (1 + torch.cos(torch.tensor(torch.pi * k / 4)).item()) / 2 for k in range(4)]
    assert lrs == pytest.approx(expected)


def test_default_optimiser_is_the_cifar_recipe_and_is_recorded(tmp_path):
    module = DistillationModule(TinyNet(), num_classes=C)
    assert module.hparams.optimizer == {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    }
    module.trainer = _trainer(tmp_path)
    opt = module.configure_optimizers()["optimizer"]
    group = opt.param_groups[0]
    assert type(opt) is torch.optim.SGD and (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 5e-4)


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        (torch.optim.AdamW, (torch.optim.AdamW, 1e-3, 1e-2)),  # AdamW keeps its own weight decay
        (functools.partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.05), (torch.optim.AdamW, 3e-4, 0.05)),
        ({"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}, (torch.optim.Adam, 0.01, 0.0)),
        (functools.partial(torch.optim.SGD, lr=0.1), (torch.optim.SGD, 0.1, 0.0)),
    ],
)
def test_any_injected_optimiser_is_built_as_given_and_recorded(tmp_path, optimizer, expected):
    module = DistillationModule(TinyNet(), num_classes=C, optimizer=optimizer)
    module.trainer = _trainer(tmp_path)
    opt = module.configure_optimizers()["optimizer"]
    assert (type(opt), opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == expected
    recorded = module.hparams.optimizer
    assert recorded["class_path"].rsplit(".", 1)[1] == expected[0].__name__
    rebuilt = DistillationModule(TinyNet(), num_classes=C, optimizer=recorded)
    rebuilt.trainer = module.trainer
    again = rebuilt.configure_optimizers()["optimizer"]
    assert type(again) is type(opt) and again.defaults == opt.defaults


def test_an_optimiser_that_cannot_be_recorded_is_named():
    with pytest.warns(UserWarning, match=r"`optimizer` .* is not recorded in the hyperparameters"):
        module = DistillationModule(TinyNet(), num_classes=C, optimizer=lambda params: torch.optim.SGD(params, lr=1))
    assert "optimizer" in module._modules_to_pass


# ------------------------------------------------------------------ 2. recommended weights are the defaults
RECOMMENDED = [
    (KDLoss, 0.9, 0.1),
    (LSKDLoss, 9.0, 0.1),
    (DISTLoss, 1.0, 1.0),
    (DKDLoss, 1.0, 1.0),
    (NKDLoss, 1.0, 1.0),
    (CMKDLoss, 1.0, 1.0),
]


@pytest.mark.parametrize(("cls", "weight", "ce_weight"), RECOMMENDED, ids=lambda v: getattr(v, "__name__", v))
def test_each_loss_gets_its_recommended_weights_by_default(cls, weight, ce_weight):
    assert cls.recommended_weight == weight
    module = _distil([cls()])
    assert (module.loss_weights, module.ce_weight) == ([weight], ce_weight)
    assert (module.hparams.loss_weights, module.hparams.ce_weight) == ([weight], ce_weight)


@pytest.mark.parametrize(("cls", "weight", "ce_weight"), RECOMMENDED, ids=lambda v: getattr(v, "__name__", v))
def test_explicit_weights_override_the_recommended_ones(cls, weight, ce_weight):
    module = _distil([cls()], loss_weights=[0.25], ce_weight=0.0)
    assert (module.loss_weights, module.ce_weight) == ([0.25], 0.0)


def test_every_library_loss_declares_its_recommended_weights():
    library = {c for c in DistillationLoss.__subclasses__() if c.__module__.startswith("cmkd_lightning.")}
    library.discard(FeatureDistillationLoss)  # its subclasses: tests/losses/test_feature_losses.py
    assert library == {cls for cls, _, _ in RECOMMENDED}


def test_dist_defaults_are_the_authors_beta_gamma_2():
    zs, zt = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    torch.testing.assert_close(DISTLoss()(zs, zt)["loss"], F.dist_loss(zs, zt, temperature=4.0, beta=2.0, gamma=2.0))


def test_disagreeing_ce_recommendations_fall_back_to_1_with_a_warning():
    with pytest.warns(UserWarning, match=r"recommend different cross-entropy weights \(KDLoss: 0.1, DKDLoss: 1\)"):
        module = _distil([KDLoss(), DKDLoss()])
    assert (module.ce_weight, module.loss_weights) == (1.0, [0.9, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _distil([KDLoss(), DKDLoss()], ce_weight=0.5).ce_weight == 0.5


def test_cmkd_states_the_papers_alpha_so_kd_plus_cmkd_is_not_silently_ce_01():
    assert CMKDLoss.recommended_ce_weight == 1.0  # the paper's alpha = 1
    with pytest.warns(UserWarning, match=r"KDLoss: 0.1, CMKDLoss: 1"):
        module = _distil([KDLoss(), CMKDLoss()])
    assert module.ce_weight == 1.0


def test_a_loss_without_a_ce_opinion_defers_to_the_others():
    class _Plain(DistillationLoss):
        def forward(self, student_logits, teacher_logits, targets=None):
            return {"loss": (student_logits - teacher_logits).pow(2).mean()}

    assert _distil([_Plain()]).ce_weight == 1.0
    assert _distil([_Plain(), LSKDLoss()]).ce_weight == 0.1
    assert DistillationModule(TinyNet(), num_classes=C).ce_weight == 1.0  # no losses


# ------------------------------------------------------------------ 3. every run records what it trained with
@pytest.mark.parametrize("cls", [cls for cls, _, _ in RECOMMENDED], ids=lambda c: c.__name__)
def test_each_loss_repr_and_config_hold_all_its_arguments(cls):
    names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    loss = cls(warmup_epochs=3)
    config = loss.to_config()
    assert config["class_path"] == f"cmkd_lightning.losses.{cls.__name__}"
    assert list(config["init_args"]) == names and config["init_args"]["warmup_epochs"] == 3
    assert repr(loss) == f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in config['init_args'].items())})"
    rebuilt = DistillationModule(TinyNet(), teacher=TinyNet(), losses=[config], num_classes=C).losses[0]
    assert type(rebuilt) is cls and rebuilt.to_config() == config


def test_a_loss_that_does_not_store_an_argument_is_named():
    class _Forgetful(DistillationLoss):
        def __init__(self, scale: float = 2.0) -> None:
            super().__init__()

        def forward(self, student_logits, teacher_logits, targets=None):
            return {"loss": student_logits.sum() * 0}

    with pytest.raises(AttributeError, match=r"Expected _Forgetful to store its `__init__` argument `scale`"):
        _Forgetful().to_config()
    with pytest.warns(UserWarning, match="The losses are not recorded"):
        module = _distil([_Forgetful()])
    assert module.hparams.get("losses") is None


def test_bad_loss_configs_are_named():
    with pytest.raises(
        TypeError, match=r"`losses\[0\].class_path` to name a DistillationLoss subclass, but got 'torch.nn.Linear'"
    ):
        _distil([{"class_path": "torch.nn.Linear"}])
    with pytest.raises(ValueError, match=r"`losses\[0\]` to be a DistillationLoss or a config with a `class_path`"):
        _distil([{"init_args": {}}])


def test_python_built_module_records_losses_and_effective_weights(tmp_path):
    module = _distil([DISTLoss(temperature=1.0), CMKDLoss(beta=3.0)], optimizer=torch.optim.AdamW)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="run")
    trainer = _trainer(tmp_path, logger=logger, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, _loader(), _loader())
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    expected_losses = [DISTLoss(temperature=1.0).to_config(), CMKDLoss(beta=3.0).to_config()]
    for hparams in (
        torch.load(path, weights_only=True)["hyper_parameters"],
        yaml.safe_load((tmp_path / "run" / "version_0" / "hparams.yaml").read_text()),
    ):
        assert hparams["losses"] == expected_losses
        assert (hparams["loss_weights"], hparams["ce_weight"]) == ([1.0, 1.0], 1.0)
        assert hparams["optimizer"] == {"class_path": "torch.optim.AdamW", "init_args": {}}
        assert "student" not in hparams and "teacher" not in hparams


def test_python_built_checkpoint_says_which_modules_to_pass_and_reloads_its_losses(tmp_path):
    module = _distil([KDLoss(temperature=2.0)], loss_weights=[0.5])
    trainer = _trainer(tmp_path, limit_train_batches=1)
    trainer.fit(module, _loader())
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(
        TypeError,
        match=r"built with student=<tests.module.test_defaults.TinyNet nn.Module>, teacher=<tests"
        r".module.test_defaults.TinyNet nn.Module>.*pass student=..., teacher=... to DistillationModule",
    ):
        DistillationModule.load_from_checkpoint(path)
    with pytest.raises(ValueError, match=r"pass teacher=\.\.\. to DistillationModule.load_from_checkpoint"):
        DistillationModule.load_from_checkpoint(path, student=TinyNet())
    restored = DistillationModule.load_from_checkpoint(path, student=TinyNet(), teacher=TinyNet(hidden=8))
    assert restored.losses[0].to_config() == KDLoss(temperature=2.0).to_config()
    assert (restored.loss_weights, restored.ce_weight) == ([0.5], 0.1)
    for key, value in module.student.state_dict().items():
        assert torch.equal(restored.student.state_dict()[key], value), key


# ------------------------------------------------------------------ 4. training a teacher
def test_teacher_module_trains_a_teacher_that_distillation_reads(tmp_path):
    cosine = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4)
    teacher = TeacherModule(TinyNet(hidden=8, seed=3), num_classes=C, lr_scheduler=cosine)
    assert teacher.model is teacher.student and teacher.teacher is None and len(teacher.losses) == 0
    trainer = _trainer(tmp_path, limit_train_batches=2)
    trainer.fit(teacher, _loader())
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert "student" not in hparams and hparams["optimizer"]["init_args"]["weight_decay"] == 5e-4
    assert hparams["lr_scheduler"] == {
        "class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
        "init_args": {"T_max": 4},
    }
    student = DistillationModule(
        TinyNet(seed=1), teacher=TinyNet(hidden=8, seed=4), losses=[KDLoss()], teacher_checkpoint=str(path)
    )
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(student.teacher.state_dict()[key], value), key
    with pytest.raises(TypeError, match=r"built with model=<tests.module.test_defaults.TinyNet nn.Module>.*pass model=\.\.\."):
        TeacherModule.load_from_checkpoint(path)
    restored = TeacherModule.load_from_checkpoint(path, model=TinyNet(hidden=8))
    assert torch.equal(restored.model.fc.weight, teacher.model.fc.weight)


def test_teacher_module_zoo_name_reloads_without_arguments(tmp_path):
    teacher = TeacherModule("resnet8", num_classes=C, optimizer=torch.optim.AdamW)
    assert dict(teacher.hparams)["model"] == "resnet8"
    path = tmp_path / "t.ckpt"
    trainer = _trainer(tmp_path, max_steps=0)
    trainer.strategy.connect(teacher)
    trainer.save_checkpoint(path)
    restored = TeacherModule.load_from_checkpoint(path)
    assert type(restored.model) is type(teacher.model) and restored.hparams.optimizer == teacher.hparams.optimizer
    restored.trainer = trainer
    assert type(restored.configure_optimizers()["optimizer"]) is torch.optim.AdamW


def test_teacher_module_shares_the_defaults_of_distillation_module():
    own = inspect.signature(TeacherModule.__init__).parameters
    parent = inspect.signature(DistillationModule.__init__).parameters
    renamed = {"model": "student", "model_checkpoint": "student_checkpoint"}
    for name, param in own.items():
        if name != "self":
            assert param.default == parent[renamed.get(name, name)].default, name


@pytest.mark.slow  # two `cmkd` subprocesses
def test_teacher_config_through_the_cli(tmp_path):
    """``cmkd fit -c examples/configs/digits/teacher.yaml`` trains a TeacherModule whose checkpoint reads as a teacher."""
    from tests.cli.test_app import DIGITS, QUIET, SHORT_FIT, SMALL_DATA, _cmkd

    printed = yaml.safe_load(_cmkd(["fit", "-c", str(DIGITS / "teacher.yaml"), "--print_config"], tmp_path).stdout)
    assert printed["model"]["class_path"] == "cmkd_lightning.TeacherModule"
    assert {"model", "optimizer", "lr_scheduler"} <= set(printed["model"]["init_args"])
    assert printed["model"]["init_args"]["model"] == "digits_teacher"
    _cmkd(
        ["fit", "-c", str(DIGITS / "teacher.yaml"), *SMALL_DATA, *SHORT_FIT, *QUIET, "--trainer.logger=false"], tmp_path
    )
    path = tmp_path / "runs" / "digits-teacher" / "teacher.ckpt"
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert (hparams["model"], hparams["_class_path"], hparams["optimizer"]["init_args"]["weight_decay"]) == (
        "digits_teacher",
        "cmkd_lightning.TeacherModule",
        5e-4,
    )
    restored = TeacherModule.load_from_checkpoint(path)  # zoo name and settings come from the checkpoint
    student = DistillationModule(
        "digits_student", teacher="digits_teacher", num_classes=100, teacher_checkpoint=str(path)
    )
    for key, value in restored.model.state_dict().items():
        assert torch.equal(student.teacher.state_dict()[key], value), key


@pytest.mark.slow  # a whole `cmkd fit` (2 short epochs)
def test_any_torch_optimiser_and_warmup_cosine_train_from_yaml(tmp_path, monkeypatch):
    """``optimizer: torch.optim.Adam`` and a warm-up + cosine schedule, as YAML entries, through ``cmkd fit``."""
    from cmkd_lightning.cli import main
    from tests.cli.test_app import DIGITS, QUIET, SMALL_DATA

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    extra = tmp_path / "adam.yaml"
    extra.write_text(
        "model:\n  init_args:\n"
        "    optimizer:\n      class_path: torch.optim.Adam\n      init_args: {lr: 0.002}\n"
        "    lr_scheduler:\n      class_path: cmkd_lightning.schedules.WarmupCosine\n"
        "      init_args: {warmup_epochs: 1, start_factor: 0.1}\n"
    )
    main(  # the CLI checkpoints every run with save_last
        ["fit", "-c", str(DIGITS / "ce.yaml"), "-c", str(extra), *SMALL_DATA, *QUIET, "--trainer.max_epochs=2",
         "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.logger=false",
         f"--trainer.default_root_dir={tmp_path}"]
    )  # fmt: skip
    (last,) = tmp_path.rglob("last.ckpt")
    state = torch.load(last, weights_only=False)
    group = state["optimizer_states"][0]["param_groups"][0]
    assert "betas" in group and "momentum" not in group  # Adam's state, not SGD's
    assert state["hyper_parameters"]["optimizer"]["class_path"] == "torch.optim.Adam"
    (scheduler,) = state["lr_schedulers"]
    # the run's length came from the trainer; epoch 0 warmed up at 0.1 x, epoch 1 started the cosine at 1 x
    assert (scheduler["max_epochs"], scheduler["last_epoch"], scheduler["base_lrs"]) == (2, 2, [0.002])
    assert scheduler["_last_lr"] == [pytest.approx(0.0)]
