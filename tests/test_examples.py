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


@pytest.mark.slow
def test_quickstart_command_writes_table_files_and_chart(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmkd_lightning.quickstart",
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
