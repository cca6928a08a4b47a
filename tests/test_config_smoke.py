"""Every dataset x method family runs ``fit`` (2 steps), ``validate`` and ``test`` on synthetic data on CPU.

The runs go through ``scripts/gpu_check.py`` (the same driver that sweeps every config on a GPU), in this
process: the configs as shipped plus the overrides of :func:`smoke_overrides` (synthetic data, no teacher
checkpoint, no logger, one CPU device, small batches). The ImageNet configs keep their DDP strategy, on one
device. DKD configs run in epoch 0 of their warm-up (factor < 1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)
    spec.loader.exec_module(module)
    return module


gpu_check = _driver()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_sample_covers_every_dataset_and_method_family():
    configs = gpu_check.all_configs()
    families = {tuple(rel.split("/")[:2]) if rel.count("/") == 2 else (rel.split("/")[0], "") for rel in configs}
    sampled = {tuple(rel.split("/")[:2]) if rel.count("/") == 2 else (rel.split("/")[0], "") for rel in gpu_check.SAMPLE}
    assert set(gpu_check.SAMPLE) <= set(configs)
    assert {f for f in families if f[0] != "digits"} <= sampled
    assert {"digits/kd.yaml", "digits/dkd.yaml", "digits/cmkd.yaml", "digits/teacher.yaml"} <= set(gpu_check.SAMPLE)
    assert configs[: len(gpu_check.SAMPLE)] == list(gpu_check.SAMPLE)  # the sample runs first on a GPU too


@pytest.mark.slow
@pytest.mark.parametrize("rel", gpu_check.SAMPLE)
def test_config_fits_validates_and_tests_on_synthetic_data(rel):
    result = gpu_check.run_config(rel, device="cpu", stages=("fit", "validate", "test"), fast_dev_run=False, steps=2)
    assert result["status"] == "pass", result["error"]
    # The ImageNet configs' DDP launcher writes these into this process's environment; a `cmkd` started afterwards
    # that inherits LOCAL_RANK never starts its second rank and hangs (the GPU check's 2-GPU part does that).
    left = {name: os.environ[name] for name in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT") if name in os.environ}
    assert not left, f"run_config left the launcher's variables behind: {left}"


@pytest.mark.slow
def test_driver_cpu_mode_writes_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    code = gpu_check.main(["--device", "cpu", "--parts", "b", "c", "--limit", "2", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["status"] for r in rows] == ["pass", "pass", "not run (fewer than 2 GPUs)"]
    assert [r["name"] for r in rows[:2]] == [f"{rel} [config]" for rel in gpu_check.SAMPLE[:2]]
    printed = capsys.readouterr().out
    assert "2 passed, 0 failed, 1 not run" in printed


def test_a_failing_config_is_a_failed_row_not_a_crash():
    result = gpu_check.run_config("cifar100/kd/res56_res20.yaml", device="cpu", precision="no-such-precision")
    assert result["status"] == "fail"
    assert result["error"]
