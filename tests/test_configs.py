"""Every YAML under examples/configs parses and instantiates through the real `cmkd` CLI; a subset trains.

Experiment files compose with their dataset's ``_base.yaml`` (``cmkd fit -c <dir>/_base.yaml -c <file>``) when
there is one; the digits configs stand alone. New files are picked up by the glob, so they are tested without
editing this file. Data paths point at fake datasets written in the real on-disk formats (``tests/_fakes.py``),
teacher checkpoints are dropped, and the multi-GPU trainer settings are overridden to one CPU process.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Any

import jsonargparse._typehints
import pytest
import torch
import yaml
from torch import nn

from cmkd_lightning import DistillationModule, TeacherModule
from cmkd_lightning.cli import DistillationCLI, build_cli
from cmkd_lightning.models import create_model
from tests._fakes import write_fake_cifar100, write_fake_imagenet

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "examples" / "configs"
EXPERIMENTS = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml") if p.name[0] != "_")
BASES = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("_*.yaml"))

# DKD's beta per CIFAR-100 pair (docs/DESIGN.md, "Baselines"; mdistiller configs/cifar100/dkd/*.yaml), T = 4, warm-up 20.
CIFAR_DKD_BETA = {
    "res32x4_res8x4": 8.0,
    "res56_res20": 2.0,
    "res110_res32": 2.0,
    "wrn40_2_wrn40_1": 6.0,
    "wrn40_2_wrn16_2": 6.0,
    "vgg13_vgg8": 6.0,
    "res32x4_shuv1": 8.0,
    "wrn40_2_shuv1": 8.0,
    "res32x4_shuv2": 8.0,
    "res50_mv2": 8.0,
    "vgg13_mv2": 6.0,
    "wrn40_2_res8x4": 8.0,
}
IMAGENET_DKD_BETA = {"res34_res18": 0.5, "res50_mv1": 2.0}
LOW_LR_STUDENTS = {"ShuffleV1", "ShuffleV2", "mobilenetv2"}  # lr 0.01 on CIFAR-100 (paper Sec. VI-A)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _base_of(rel: str) -> Path | None:
    base = CONFIG_DIR / rel.split("/")[0] / "_base.yaml"
    return base if base.is_file() else None


def _config_files(rel: str) -> list[str]:
    base = _base_of(rel)
    return (["-c", str(base)] if base else []) + ["-c", str(CONFIG_DIR / rel)]


def _resolved(rel: str) -> dict[str, Any]:
    """The YAML of ``rel`` merged over its base, as plain data (what the two ``-c`` files say)."""
    base = _base_of(rel)
    merged = yaml.safe_load(base.read_text()) if base else {}
    return _merge(merged, yaml.safe_load((CONFIG_DIR / rel).read_text()))


def _model_args(rel: str) -> dict[str, Any]:
    return _resolved(rel)["model"]["init_args"]


@pytest.fixture(scope="module", autouse=True)
def _memoised_subclass_scan():
    """Memoise jsonargparse's scan of all imported ``nn.Module`` subclasses for this module's CLI parses.

    A string given for ``student: nn.Module | str`` is first looked up as a class name, and every lookup walks the
    ~900 imported ``nn.Module`` subclasses twice: about 1 s per parse, which would make the sweep over ~100 configs
    take minutes. The scan result only changes when new classes are imported, so the models are imported first;
    name collisions are tested on their own (``test_model_names_are_not_nn_module_class_names``).
    """
    import torchvision.models  # noqa: F401

    import cmkd_lightning.models  # noqa: F401

    scan = getattr(jsonargparse._typehints, "get_all_subclass_paths", None)
    if scan is None:  # a jsonargparse without this helper: run uncached (slower, same results)
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jsonargparse._typehints, "get_all_subclass_paths", functools.lru_cache(maxsize=None)(scan))
        yield


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fake_data")
    return {
        "cifar100": write_fake_cifar100(root / "cifar100", n_train=16, n_test=8),
        "imagenet": write_fake_imagenet(root / "imagenet", num_classes=3, per_class=2, size=72),
    }


def _overrides(rel: str, fake_data: dict[str, Path]) -> list[str]:
    """Point the data at fake files, drop teacher weights, run one CPU process without a logger."""
    dataset = rel.split("/")[0]
    args = [
        "--trainer.logger=false",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
        "--trainer.sync_batchnorm=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    if dataset == "digits":
        args += [
            "--data.init_args.train_size=64",
            "--data.init_args.val_size=32",
            "--data.init_args.test_size=32",
            "--data.init_args.batch_size=16",
        ]
    elif dataset == "cifar100":
        args += [
            f"--data.init_args.data_dir={fake_data['cifar100']}",
            "--data.init_args.download=false",
            "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=8",
        ]
    elif dataset == "cifar10":  # the file format is tested in tests/datamodules/test_cifar10.py
        args += [
            "--data.init_args.synthetic=true",
            "--data.init_args.synthetic_size=16",
            "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=8",
        ]
    elif dataset == "imagenet":
        args += [
            f"--data.init_args.data_dir={fake_data['imagenet']}",
            "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=4",
            "--data.init_args.image_size=64",
            "--data.init_args.resize_size=72",
        ]
    else:
        raise ValueError(f"Expected a config under digits/, cifar10/, cifar100/ or imagenet/, but got {rel!r}.")
    if _model_args(rel).get("teacher_checkpoint"):
        args.append("--model.init_args.teacher_checkpoint=null")
    return args


def _cli(args: list[str], run: bool) -> DistillationCLI:
    return build_cli(args, run=run)


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cmkd"])  # LightningCLI warns about pytest's own arguments otherwise
    monkeypatch.chdir(tmp_path)  # ModelCheckpoint dirpaths and default_root_dir are relative
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(previous)


def test_config_tree_is_complete():
    methods = {rel.split("/")[1] for rel in EXPERIMENTS if rel.startswith("cifar100/")}
    assert {"vanilla", "kd", "dkd", "dist", "lskd", "nkd", "cmkd", "dkd_cmkd", "ablation"} <= methods
    for method in ("cmkd", "dkd_cmkd", "kd", "dkd", "dist", "nkd"):
        assert {f"cifar100/{method}/{pair}.yaml" for pair in CIFAR_DKD_BETA} <= set(EXPERIMENTS), method
    for method in ("kd", "dkd", "dist", "lskd", "nkd", "cmkd", "dkd_cmkd"):
        assert {f"imagenet/{method}/{pair}.yaml" for pair in IMAGENET_DKD_BETA} <= set(EXPERIMENTS), method
    assert BASES == ["cifar10/_base.yaml", "cifar100/_base.yaml", "imagenet/_base.yaml"]


@pytest.mark.slow  # the config sweep: every shipped config through the CLI
@pytest.mark.parametrize("rel", EXPERIMENTS)
def test_config_instantiates_through_the_cli(rel, cli_env, fake_data):
    # Weights are allocated on the meta device: every constructor and check runs, no memory or init time is spent.
    with torch.device("meta"):
        cli = _cli([*_config_files(rel), *_overrides(rel, fake_data)], run=False)
    spec = _model_args(rel)
    model = cli.model
    assert isinstance(model, DistillationModule)
    assert model.num_classes == cli.datamodule.num_classes  # linked from the datamodule
    if isinstance(model, TeacherModule):  # `model` is stored as the student, so checkpoints load as a teacher
        assert model.model is model.student and "student" not in spec
        spec = {**spec, "student": spec["model"]}
    for role in ("student", "teacher"):
        name = spec.get(role)
        if name is None:
            assert getattr(model, role) is None
            continue
        with torch.device("meta"):
            expected = create_model(name, num_classes=model.num_classes)
        assert type(getattr(model, role)) is type(expected), role
        assert sum(p.numel() for p in getattr(model, role).parameters()) == sum(
            p.numel() for p in expected.parameters()
        )
    losses = spec.get("losses") or []
    assert [type(loss).__name__ for loss in model.losses] == [entry["class_path"].rsplit(".", 1)[1] for entry in losses]
    for loss, entry in zip(model.losses, losses):
        for key, value in (entry.get("init_args") or {}).items():
            assert getattr(loss, key) == value, (loss, key)
    # unset weights are each loss's recommended weight (the effective values are recorded in the hparams)
    assert model.ce_weight == spec.get("ce_weight", 1.0) == model.hparams.get("ce_weight", 1.0)
    assert model.loss_weights == spec.get("loss_weights", [loss.recommended_weight for loss in model.losses])
    for key in ("optimizer", "lr_scheduler"):  # class_path and every init_arg the files give, as instantiated
        if key in spec:
            recorded = model.hparams[key]
            assert recorded["class_path"] == spec[key]["class_path"], key
            assert spec[key]["init_args"].items() <= recorded["init_args"].items(), key
    if "optimizer" in spec:  # what configure_optimizers builds from them
        built = model.configure_optimizers()
        optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
        assert type(optimizer).__name__ == spec["optimizer"]["class_path"].rsplit(".", 1)[1]
        assert spec["optimizer"]["init_args"].items() <= optimizer.defaults.items()
        assert type(scheduler).__name__ == spec["lr_scheduler"]["class_path"].rsplit(".", 1)[1]
    assert cli.trainer.max_epochs == _resolved(rel)["trainer"]["max_epochs"]


def _pair_and_method(rel: str) -> tuple[str, str]:
    _, method, file = rel.split("/")
    return method, file.removesuffix(".yaml")


@pytest.mark.parametrize(
    "rel", [r for r in EXPERIMENTS if r.startswith("cifar100/") and "/vanilla/" not in r and "/motivation/" not in r]
)
def test_cifar100_configs_follow_the_recipe(rel):
    method, key = _pair_and_method(rel)
    if method in ("cost", "robustness"):  # figure / table files: <method>_<pair>.yaml, the pair's recipe plus callbacks
        key = next(pair for pair in CIFAR_DKD_BETA if key.endswith(f"_{pair}"))
    spec = _model_args(rel)
    trainer = _resolved(rel)["trainer"]
    data = _resolved(rel)["data"]["init_args"]
    assert (trainer["max_epochs"], data["batch_size"]) == (240, 64)
    lr = 0.01 if spec["student"] in LOW_LR_STUDENTS else 0.05
    assert spec["optimizer"] == {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": lr, "momentum": 0.9, "weight_decay": 5.0e-4},
    }
    assert spec["lr_scheduler"] == {
        "class_path": "torch.optim.lr_scheduler.MultiStepLR",
        "init_args": {"milestones": [150, 180, 210], "gamma": 0.1},
    }
    assert spec["teacher_checkpoint"] == f"checkpoints/{spec['teacher']}_vanilla/ckpt_epoch_240.pth"
    for entry in spec["losses"]:
        name, args = entry["class_path"].rsplit(".", 1)[1], entry["init_args"]
        if name == "DKDLoss" and args.get("logit_standardization"):  # DKD + LS: the LS-KD authors' command
            ls_args = {"alpha": 9.0, "beta": 9.0 * CIFAR_DKD_BETA[key], "temperature": 2.0, "warmup_epochs": 20}
            assert args == {**ls_args, "logit_standardization": True}
            assert spec["ce_weight"] == 1.0
        elif name == "DKDLoss":
            assert args == {"alpha": 1.0, "beta": CIFAR_DKD_BETA[key], "temperature": 4.0, "warmup_epochs": 20}
        elif name == "KDLoss" and args.get("logit_standardization"):  # KD + LS, the LS-KD recipe
            assert (args["temperature"], spec["ce_weight"], spec["loss_weights"]) == (2.0, 0.1, [9.0])
        elif name == "CMKDLoss":
            assert (args["temperature"], args["beta"], args["gamma"]) == (4.0, 4.0, 1.0)
            assert spec["ce_weight"] == 1.0
        elif name == "KDLoss":
            assert (args["temperature"], spec["ce_weight"], spec["loss_weights"]) == (4.0, 0.1, [0.9])
        elif name == "DISTLoss":  # one CIFAR-100 setting for every pair (DIST paper)
            assert (args, spec["ce_weight"]) == ({"temperature": 4.0, "beta": 2.0, "gamma": 2.0}, 1.0)
        elif name == "NKDLoss":  # the CIFAR-100 setting of the NKD authors' repository, every pair
            assert (args, spec["ce_weight"]) == ({"temperature": 3.0, "gamma": 3.5}, 1.0)
    if method == "ablation":
        (entry,) = spec["losses"]
        assert entry["init_args"]["spearman"] is False
        assert entry["init_args"]["zscore"] is key.endswith("_zscore")


@pytest.mark.parametrize("rel", [r for r in EXPERIMENTS if r.startswith("imagenet/") and "/vanilla/" not in r])
def test_imagenet_configs_follow_the_recipe(rel):
    method, key = _pair_and_method(rel)
    config = _resolved(rel)
    trainer, spec = config["trainer"], config["model"]["init_args"]
    devices, batch = trainer["devices"], config["data"]["init_args"]["batch_size"]
    assert (trainer["strategy"], devices * batch, trainer["max_epochs"]) == ("ddp", 512, 100)
    assert spec["optimizer"] == {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.2, "momentum": 0.9, "weight_decay": 1.0e-4},
    }
    assert spec["lr_scheduler"] == {
        "class_path": "torch.optim.lr_scheduler.MultiStepLR",
        "init_args": {"milestones": [30, 60, 90], "gamma": 0.1},
    }
    assert spec["teacher"] == {"res34_res18": "resnet34", "res50_mv1": "resnet50"}[key]
    assert re.fullmatch(rf"checkpoints/torchvision/{spec['teacher']}-[0-9a-f]{{8}}\.pth", spec["teacher_checkpoint"])
    for entry in spec["losses"]:
        name, args = entry["class_path"].rsplit(".", 1)[1], entry["init_args"]
        if name != "LSKDLoss":
            assert args["temperature"] == 1.0, name
        if name == "DKDLoss":
            assert (args["beta"], args["warmup_epochs"]) == (IMAGENET_DKD_BETA[key], 1)
        if name == "CMKDLoss":
            assert (args["beta"], args["gamma"], args["sync_entropy_threshold"]) == (4.0, 1.0, True)
        if name == "KDLoss":
            assert (spec["ce_weight"], spec["loss_weights"]) == (0.5, [0.5])


def test_digits_configs_share_one_recipe_and_read_the_teachers_checkpoint():
    # The quickstart files stand alone (one `-c` each), so this test keeps their shared parts identical.
    def recipe(config: dict[str, Any]) -> tuple:
        trainer = {k: v for k, v in config["trainer"].items() if k not in ("logger", "callbacks")}
        logger = {k: v for k, v in config["trainer"]["logger"]["init_args"].items() if k != "name"}
        optim = {k: v for k, v in config["model"]["init_args"].items() if k in ("optimizer", "lr_scheduler")}
        return config["seed_everything"], trainer, logger, optim, config["data"]

    digits = [rel for rel in EXPERIMENTS if rel.startswith("digits/")]
    assert len({repr(recipe(_resolved(rel))) for rel in digits}) == 1
    callbacks = _resolved("digits/teacher.yaml")["trainer"]["callbacks"]
    (publish,) = [c for c in callbacks if c["class_path"].endswith(".PublishCheckpoint")]
    written = publish["init_args"]["link"]  # the teacher's best checkpoint is published (linked) there
    for rel in digits:
        spec = _model_args(rel)
        if rel != "digits/teacher.yaml" and "losses" in spec:
            assert (spec["teacher"], spec["teacher_checkpoint"]) == ("digits_teacher", written), rel


def _module_class_names() -> set[str]:
    import torchvision.models  # noqa: F401  (its classes are candidates for jsonargparse's name lookup)

    import cmkd_lightning.models  # noqa: F401

    names, stack = set(), [nn.Module]
    while stack:
        cls = stack.pop()
        names.add(cls.__name__)
        stack.extend(cls.__subclasses__())
    return names


def test_model_names_are_not_nn_module_class_names():
    # jsonargparse resolves a string given for an `nn.Module | str` argument as a class name first: "MobileNetV2"
    # would silently build torchvision's ImageNet MobileNetV2, "MobileNetV1" this zoo's class with its defaults.
    # The configs therefore use spellings (``mobilenetv2``, ``mobilenetv1``) that only the zoo understands.
    classes = _module_class_names()
    assert {"MobileNetV2", "MobileNetV1"} <= classes
    for rel in EXPERIMENTS:
        spec = _model_args(rel)
        for role in ("student", "teacher"):
            if isinstance(spec.get(role), str):
                assert spec[role] not in classes, (rel, role, spec[role])


def test_experiments_doc_lists_every_config():
    doc = (REPO / "docs" / "EXPERIMENTS.md").read_text()
    listed = set(re.findall(r"examples/configs/([\w/]+\.yaml)", doc))
    assert set(EXPERIMENTS) - {r for r in EXPERIMENTS if r.startswith("digits/")} <= listed
    missing = sorted(rel for rel in listed if not (CONFIG_DIR / rel).is_file())
    assert not missing, missing


FAST_RUNS = {
    "cifar100/cmkd/res32x4_res8x4.yaml": ("cmkd",),
    "cifar100/dkd_cmkd/res56_res20.yaml": ("dkd", "cmkd"),
    "cifar100/ablation/res56_res20_pearson.yaml": ("cmkd",),
    "imagenet/cmkd/res34_res18.yaml": ("cmkd",),
    "cifar10/motivation/kd_res20_res14.yaml": ("kd",),
}


@pytest.mark.slow
@pytest.mark.parametrize("rel", sorted(FAST_RUNS))
def test_config_trains_one_step_on_fake_data(rel, cli_env, fake_data):
    extra = ["--data.init_args.num_classes=3"] if rel.startswith("imagenet/") else []
    cli = _cli(["fit", *_config_files(rel), *_overrides(rel, fake_data), *extra, "--trainer.fast_dev_run=1"], run=True)
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "train/ce", "val/acc_top1", "val/teacher_acc_top1"):
        assert torch.isfinite(metrics[key]), key
    for name in FAST_RUNS[rel]:
        assert torch.isfinite(metrics[f"train/{name}/loss"]), name
    if rel.startswith("imagenet/"):
        assert cli.model.num_classes == 3 and cli.datamodule.image_shape == (3, 64, 64)


MOTIVATION_TEACHERS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_motivation_configs_distil_resnet14_from_every_teacher(dataset):
    # Figs. 1, 2, 3, 5: a ResNet14 student, KD from ResNet20 ... ResNet110, each teacher trained by its vanilla file.
    rels = [r for r in EXPERIMENTS if r.startswith(f"{dataset}/motivation/")]
    assert len(rels) == 2 * len(MOTIVATION_TEACHERS) + 1
    for teacher in MOTIVATION_TEACHERS:
        vanilla = _resolved(f"{dataset}/motivation/vanilla_{teacher}.yaml")
        (link,) = [c["init_args"]["link"] for c in vanilla["trainer"]["callbacks"] if "Publish" in c["class_path"]]
        student = _resolved(f"{dataset}/motivation/kd_{teacher.replace('resnet', 'res')}_res14.yaml")
        spec = student["model"]["init_args"]
        assert (spec["student"], spec["teacher"], spec["teacher_checkpoint"]) == ("resnet14", teacher, link)
        assert (spec["ce_weight"], spec["loss_weights"], spec["losses"][0]["init_args"]) == (
            0.1,
            [0.9],
            {"temperature": 4.0},
        )
        assert student["trainer"]["logger"]["class_path"].endswith("CSVLogger")  # the plotting scripts read the CSV
        assert (student["trainer"]["max_epochs"], student["data"]["init_args"]["batch_size"]) == (240, 64)
        assert student["data"]["class_path"] == f"datamodules.{dataset.upper()}DataModule"


FIGURE_CALLBACKS = {"cost": {"TrainingCost"}, "robustness": {"CorruptionRobustness"}}
FIGURE_CALLBACKS["motivation"] = {"CorrelationMonitor", "LogitCorrelationHeatmap", "EmbeddingProjection"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "rel", [r for r in EXPERIMENTS if r.count("/") == 2 and r.split("/")[1] in FIGURE_CALLBACKS and "vanilla" not in r]
)
def test_figure_configs_attach_their_callbacks(rel, cli_env, fake_data):
    from cmkd_lightning.callbacks.corruption_robustness import PAPER_CORRUPTIONS

    with torch.device("meta"):
        cli = _cli([*_config_files(rel), *_overrides(rel, fake_data)], run=False)
    found = {type(c).__name__: c for c in cli.trainer.callbacks}
    assert FIGURE_CALLBACKS[rel.split("/")[1]] <= set(found)
    if "CorruptionRobustness" in found:
        assert found["CorruptionRobustness"].corruptions == PAPER_CORRUPTIONS
    if "LogitCorrelationHeatmap" in found:
        assert found["LogitCorrelationHeatmap"].matrix == "logit_difference"


# Every CMKDLoss argument of Eq. 16 as the paper writes it (`preset: paper`), CIFAR-100 recipe: T = 4, beta = 4,
# gamma = 1, the Pearson term unscaled, Eq. 14's entropy of the loss's softmax(zscore(z_t) / T).
PAPER_CMKD = {
    "temperature": 4.0,
    "beta": 4.0,
    "gamma": 1.0,
    "regularization_strength": None,
    "zscore": True,
    "spearman": True,
    "dynamic_weighting": True,
    "temperature_squared": False,
    "pearson_scale": "paper",
    "entropy_source": "loss",
    "temperature_units": "zscore",
    "preset": "paper",
    "sync_entropy_threshold": False,
    "eps": 1e-7,
    "rank_backend": "auto",
    "warmup_epochs": 0,
    "fused": "auto",
    "target_perplexity": None,  # T divides the z-scored logits (Eq. 12), no per-row temperature
}
CMKD_CONFIGS = [r for r in EXPERIMENTS if "CMKDLoss" in (CONFIG_DIR / r).read_text()]
_PAPER_NUMBER = re.compile(r"[Pp]aper[^\n]*\d|(Table|Fig\.) [IVX\d]+")


def _header(rel: str) -> str:
    lines = (CONFIG_DIR / rel).read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def _expected_paper_cmkd(rel: str) -> dict[str, Any]:
    expected = dict(PAPER_CMKD)
    if rel.startswith("imagenet/"):  # Sec. VI-A: T = 1 on ImageNet; the entropy mean over the global batch
        expected.update(temperature=1.0, sync_entropy_threshold=True)
    if "/ablation/" in rel:  # Table VI: Pearson only, fixed weights, with or without the z-score
        expected.update(spearman=False, dynamic_weighting=False, zscore=rel.endswith("_zscore.yaml"))
    return expected


def test_every_config_that_quotes_a_paper_number_is_found():
    quoting = {r for r in CMKD_CONFIGS if _PAPER_NUMBER.search(_header(r))}
    assert quoting == {r for r in CMKD_CONFIGS if not r.startswith("digits/")}
    assert {"cifar100/cmkd/res32x4_res8x4.yaml", "imagenet/cmkd/res34_res18.yaml"} <= quoting
    assert {r.split("/")[1] for r in quoting if r.startswith("cifar100/")} == {
        "ablation",
        "cmkd",
        "cost",
        "dkd_cmkd",
        "robustness",
    }


@pytest.mark.parametrize("rel", [r for r in CMKD_CONFIGS if _PAPER_NUMBER.search(_header(r))])
def test_configs_that_quote_a_paper_number_run_eq16_as_written(rel):
    from cmkd_lightning.losses import CMKDLoss

    entries = [e for e in _model_args(rel)["losses"] if e["class_path"].endswith(".CMKDLoss")]
    assert len(entries) == 1, rel
    assert entries[0]["init_args"]["preset"] == "paper", rel
    loss = CMKDLoss(**entries[0]["init_args"])
    assert loss.init_args() == _expected_paper_cmkd(rel), rel  # every setting, not only T / beta / gamma
    assert "preset='paper'" in repr(loss) and "pearson_scale='paper'" in repr(loss)


@pytest.mark.parametrize("rel", [r for r in CMKD_CONFIGS if r.startswith("digits/")])
def test_digits_cmkd_configs_run_the_library_preset_and_the_fig8_sweep_the_paper(rel):
    from cmkd_lightning.losses import CMKDLoss

    (entry,) = [e for e in _model_args(rel)["losses"] if e["class_path"].endswith(".CMKDLoss")]
    library = CMKDLoss(**entry["init_args"]).init_args()
    assert library == {**PAPER_CMKD, "pearson_scale": "sqrt_classes", "entropy_source": "teacher", "preset": "library"}
    # the Fig. 8 space's `fixed` keys, applied to this loss as cmkd-sweep applies them
    space = yaml.safe_load((REPO / "examples" / "sweeps" / "cmkd_beta_fig8.yaml").read_text())
    prefix = "model.init_args.losses.0.init_args."
    fixed = {k.removeprefix(prefix): v for k, v in space["fixed"].items() if k.startswith(prefix)}
    if _model_args(rel)["losses"][0] == entry:  # the sweep's keys address the first loss (cmkd.yaml, not dkd_cmkd)
        for beta in space["params"][prefix + "beta"]["choices"]:
            swept = CMKDLoss(**{**entry["init_args"], **fixed, "beta": beta}).init_args()
            assert swept == {**PAPER_CMKD, "beta": beta}
