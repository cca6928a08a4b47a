"""examples/make_figures.py in a fast mode, so the figure script never rots."""

import importlib.util
from pathlib import Path

import torch
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "make_figures.py"
FIGURES = (
    "logit_correlation_heatmap.png",
    "tsne_embedding.png",
    "correlation_over_epochs.png",
    "training_cost.png",
)


def test_make_figures_fast_mode(tmp_path):
    spec = importlib.util.spec_from_file_location("make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.main(
            [
                "--out",
                str(tmp_path / "figures"),
                "--workdir",
                str(tmp_path / "runs"),
                "--teacher-epochs",
                "1",
                "--student-epochs",
                "2",
                "--train-size",
                "300",
                "--cost-repeats",
                "1",
                "--tsne-samples",
                "60",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    for name in FIGURES:
        with Image.open(tmp_path / "figures" / name) as image:
            assert image.size[0] > 1000 and image.size[1] > 400, name
    assert (tmp_path / "runs" / "kd" / "version_0" / "figures" / "logit_correlation_epoch002.png").is_file()
    assert (tmp_path / "runs" / "cost_cmkd_0" / "version_0" / "training_cost.json").is_file()
