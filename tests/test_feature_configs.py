"""The configs of the feature-based rows of Tables I-IV and of TAKD: the paper's numbers in their headers, the
authors' settings (mdistiller), and (slow) each method instantiated and trained one step through the real CLI."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cmkd_lightning.cli import build_cli
from tests._fakes import write_fake_cifar100

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"
TAKD = REPO / "examples" / "takd" / "cifar100"
IMAGENET = REPO / "examples" / "imagenet_features"  # beside examples/configs: docs/FEATURE_BASELINES.md says why
PAIRS = [
    "res32x4_res8x4", "res56_res20", "res110_res32", "wrn40_2_wrn40_1", "wrn40_2_wrn16_2", "vgg13_vgg8",  # Table I
    "res32x4_shuv1", "wrn40_2_shuv1", "res32x4_shuv2", "res50_mv2", "vgg13_mv2", "wrn40_2_res8x4",  # Table II
]  # fmt: skip
# The paper's Top-1 (Tables I and II, columns in the order of PAIRS).
PAPER = {
    "fitnet": [73.50, 69.21, 71.06, 72.24, 73.58, 71.02, 73.59, 73.73, 73.54, 63.16, 64.16, 74.61],
    "at": [73.44, 70.55, 72.31, 72.77, 74.08, 71.43, 71.73, 73.32, 72.73, 58.58, 59.40, 74.11],
    "rkd": [71.90, 69.61, 71.82, 72.22, 73.35, 71.48, 72.28, 72.21, 73.21, 64.43, 64.52, 75.26],
    "ofd": [74.95, 70.98, 73.23, 74.33, 75.24, 73.95, 75.98, 75.85, 76.82, 69.04, 69.48, 74.36],
    "crd": [75.51, 71.16, 73.48, 74.14, 75.48, 73.94, 75.11, 76.05, 75.65, 69.11, 69.73, 75.24],
    "reviewkd": [75.63, 71.89, 73.89, 75.09, 76.12, 74.84, 77.45, 77.14, 77.78, 69.89, 70.37, 74.34],
    "takd": [73.81, 70.83, 73.37, 73.78, 75.12, 73.23, 74.53, 75.34, 72.12, 68.02, 67.91, 74.03],
}
PAPER_IMAGENET = {  # Tables III and IV: (Top-1, Top-5)
    "res34_res18": {"at": (70.69, 90.01), "ofd": (70.81, 89.98), "crd": (71.17, 90.13), "reviewkd": (71.61, 90.51)},
    "res50_mv1": {"at": (69.56, 89.33), "ofd": (71.25, 90.34), "crd": (71.37, 90.41), "reviewkd": (72.56, 91.00)},
}
# mdistiller's settings: loss class, loss weight (CE weight 1 everywhere)
AUTHORS = {
    "fitnet": ("FitNetLoss", 100.0),
    "at": ("ATLoss", 1000.0),
    "rkd": ("RKDLoss", 1.0),
    "ofd": ("OFDLoss", 1e-3),
    "crd": ("CRDLoss", 0.8),
    "reviewkd": ("ReviewKDLoss", 1.0),
}
FEATURE_METHODS = list(AUTHORS)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _header(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))


def test_every_row_of_tables_i_to_iv_has_a_config():
    for method in FEATURE_METHODS:
        assert sorted(p.stem for p in (CONFIGS / "cifar100" / method).glob("*.yaml")) == sorted(PAIRS), method
    for pair, methods in PAPER_IMAGENET.items():
        for method in methods:
            assert (IMAGENET / method / f"{pair}.yaml").is_file(), (method, pair)
    for pair in PAIRS:
        assert sorted(p.name for p in (TAKD / pair).glob("*.yaml")) == ["1_assistant.yaml", "2_student.yaml"], pair


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_cifar_configs_quote_the_paper_and_run_the_authors_settings(method):
    cls, weight = AUTHORS[method]
    for pair, number in zip(PAIRS, PAPER[method]):
        path = CONFIGS / "cifar100" / method / f"{pair}.yaml"
        table = "I" if PAIRS.index(pair) < 6 else "II"
        assert f"Paper Top-1 (Table {table}): {number:.2f}." in _header(path), path
        spec = _load(path)["model"]["init_args"]
        (entry,) = spec["losses"]
        assert entry["class_path"] == f"cmkd_lightning.losses.{cls}"
        expected = 5.0 if (method, pair) == ("reviewkd", "res32x4_res8x4") else weight  # mdistiller's reviewkd.yaml
        assert (spec["ce_weight"], spec["loss_weights"]) == (1.0, [expected]), path
        if method == "crd":
            assert entry["init_args"]["num_samples"] == 50000 and entry["init_args"]["num_negatives"] == 16384
            assert entry["init_args"]["momentum"] == 0.5 and entry["init_args"]["temperature"] == 0.07
            assert _load(path)["data"]["init_args"]["contrastive_negatives"] == 16384
        if method == "reviewkd":
            assert entry["init_args"]["warmup_epochs"] == 20


def test_imagenet_configs_quote_the_paper():
    for pair, methods in PAPER_IMAGENET.items():
        for method, (top1, top5) in methods.items():
            path = IMAGENET / method / f"{pair}.yaml"
            table = "III" if pair == "res34_res18" else "IV"
            assert f"Paper (Table {table}): Top-1 {top1:.2f}, Top-5 {top5:.2f}." in _header(path), path
            (entry,) = _load(path)["model"]["init_args"]["losses"]
            assert entry["init_args"]["input_shape"] == [3, 224, 224]
            if method == "crd":
                assert entry["init_args"]["num_samples"] == 1281167


@pytest.mark.parametrize("pair", PAIRS)
def test_takd_stages_chain_the_assistant(pair):
    first, second = (_load(TAKD / pair / name) for name in ("1_assistant.yaml", "2_student.yaml"))
    (publish,) = [c for c in first["trainer"]["callbacks"] if c["class_path"].endswith(".PublishCheckpoint")]
    a, b = first["model"]["init_args"], second["model"]["init_args"]
    assert b["teacher"] == a["student"]  # the assistant
    assert (b["teacher_checkpoint"], b["teacher_checkpoint_part"]) == (publish["init_args"]["link"], "student")
    kd = _load(CONFIGS / "cifar100" / "kd" / f"{pair}.yaml")["model"]["init_args"]
    assert (a["teacher"], a["teacher_checkpoint"]) == (kd["teacher"], kd["teacher_checkpoint"])
    assert b["student"] == kd["student"] and b.get("optimizer") == kd.get("optimizer")
    for spec in (a, b):
        assert (spec["losses"], spec["ce_weight"], spec["loss_weights"]) == (kd["losses"], 0.1, [0.9])
    number = PAPER["takd"][PAIRS.index(pair)]
    assert f"Paper Top-1 (Table {'I' if PAIRS.index(pair) < 6 else 'II'}): {number:.2f}." in _header(
        TAKD / pair / "2_student.yaml"
    )


# ----------------------------------------------------------------------------------------------------- through the CLI
@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cmkd"])
    monkeypatch.chdir(tmp_path)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(previous)


def _cifar_args(data_dir: Path, *files: Path) -> list[str]:
    args = ["-c", str(CONFIGS / "cifar100" / "_base.yaml")]
    for f in files:
        args += ["-c", str(f)]
    return args + [
        "--trainer.logger=false",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--data.init_args.data_dir={data_dir}",
        "--data.init_args.download=false",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
        "--model.init_args.teacher_checkpoint=null",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_each_feature_method_trains_one_step_through_the_cli(method, cli_env):
    data = write_fake_cifar100(cli_env / "cifar100", n_train=8, n_test=4)
    config = CONFIGS / "cifar100" / method / "res56_res20.yaml"
    # an untrained teacher's pre-activations grow with depth: OFD's 1e-3 (set for trained teachers) overflows in a step
    scale = ["--model.init_args.loss_weights=[1.0e-7]"] if method == "ofd" else []
    cli = build_cli(["fit", *_cifar_args(data, config), "--trainer.fast_dev_run=1", *scale], run=True)
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics[f"train/{method}/loss"])
    assert type(cli.model.losses[0]).__name__ == AUTHORS[method][0]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["1_assistant.yaml", "2_student.yaml"])
def test_takd_stages_instantiate_through_the_cli(stage, cli_env):
    data = write_fake_cifar100(cli_env / "cifar100", n_train=8, n_test=4)
    with torch.device("meta"):
        cli = build_cli(_cifar_args(data, TAKD / "res32x4_res8x4" / stage), run=False)
    roles = {"student": cli.model.student, "teacher": cli.model.teacher}
    assistant = roles["student" if stage.startswith("1") else "teacher"]
    assert type(assistant).__name__ == "CifarResNet" and len(assistant.layer1) == 3  # ResNet20x4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reviewkd", "reviewkd_cmkd"])
def test_digits_feature_examples_train_one_step(name, cli_env):
    student = build_cli(
        ["fit", "-c", str(CONFIGS / "digits" / f"{name}.yaml"), "--trainer.logger=false", "--trainer.fast_dev_run=1",
         "--data.init_args.train_size=64", "--data.init_args.val_size=32", "--data.init_args.test_size=32",
         "--model.init_args.teacher_checkpoint=null", "--trainer.enable_progress_bar=false"],
        run=True,
    )  # fmt: skip
    metrics = student.trainer.callback_metrics
    assert torch.isfinite(metrics["train/reviewkd/loss"])
    assert ("train/cmkd/loss" in metrics) is (name == "reviewkd_cmkd")
    assert re.search(r"ReviewKD", _header(CONFIGS / "digits" / f"{name}.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("rel", sorted(p.relative_to(IMAGENET).as_posix() for p in IMAGENET.rglob("*.yaml")))
def test_imagenet_feature_configs_instantiate_through_the_cli(rel, cli_env):
    from tests._fakes import write_fake_imagenet

    data = write_fake_imagenet(cli_env / "imagenet", num_classes=3, per_class=2, size=72)
    args = ["-c", str(CONFIGS / "imagenet" / "_base.yaml"), "-c", str(IMAGENET / rel)]
    args += [
        "--trainer.logger=false", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1",
        "--trainer.strategy=auto", "--trainer.sync_batchnorm=false", f"--data.init_args.data_dir={data}",
        "--data.init_args.num_workers=0", "--data.init_args.batch_size=4", "--data.init_args.image_size=64",
        "--data.init_args.resize_size=72", "--model.init_args.teacher_checkpoint=null",
    ]  # fmt: skip
    with torch.device("meta"):  # every constructor runs (the connectors read 224x224 feature shapes), no memory
        cli = build_cli(args, run=False)
    (loss,) = cli.model.losses
    assert type(loss).__name__ == AUTHORS[rel.split("/")[0]][0]
    assert cli.model.loss_weights == _load(IMAGENET / rel)["model"]["init_args"]["loss_weights"]


@pytest.mark.slow
def test_takd_pair_runs_teacher_to_assistant_to_student(cli_env):
    """Stage 1 trains the assistant and publishes it; stage 2 distils the student from exactly those weights."""
    from cmkd_lightning.cli import main

    data = write_fake_cifar100(cli_env / "cifar100", n_train=8, n_test=4)
    pair = TAKD / "res32x4_res8x4"
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
    main(["fit", *_cifar_args(data, pair / "1_assistant.yaml"), *short])  # the teacher: untrained here
    published = cli_env / "checkpoints" / "takd" / "res32x4_res8x4" / "assistant.ckpt"
    assert published.is_file()
    assistant = torch.load(published, weights_only=True)["state_dict"]
    args = [a for a in _cifar_args(data, pair / "2_student.yaml") if a != "--model.init_args.teacher_checkpoint=null"]
    args += short
    cli = build_cli(args, run=False)
    teacher = cli.model.teacher.state_dict()
    for key, value in teacher.items():
        torch.testing.assert_close(value, assistant[f"student.{key}"], rtol=0, atol=0, msg=key)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
