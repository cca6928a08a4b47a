"""examples/make_figures.py in a fast mode, so the figure script never rots."""

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "make_figures.py"
FIGURES = (
    "logit_correlation_heatmap.png",
    "tsne_embedding.png",
    "correlation_over_epochs.png",
    "training_cost.png",
)


def test_make_figures_fast_mode(tmp_path, capsys):
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
    out = capsys.readouterr().out
    for name in FIGURES:
        assert f"wrote {tmp_path / 'figures' / name}\n" in out
        with Image.open(tmp_path / "figures" / name) as image:
            assert image.size[0] > 1000 and image.size[1] > 400, name
    assert (tmp_path / "runs" / "kd" / "version_0" / "figures" / "logit_correlation_epoch002.png").is_file()
    assert (tmp_path / "runs" / "cost_cmkd_0" / "version_0" / "training_cost.json").is_file()


def _script():
    spec = importlib.util.spec_from_file_location("make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_figures_writes_outside_the_tracked_tree_by_default():
    module = _script()
    args = module.parse_args([])
    assert args.out == Path("runs/figures") and not args.overwrite
    assert module.FIGURES == FIGURES


def test_make_figures_never_replaces_a_figure_silently(tmp_path, capsys):
    module = _script()
    out = tmp_path / "figures"
    out.mkdir()
    (out / "tsne_embedding.png").write_bytes(b"a figure someone keeps")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--out", str(out), "--workdir", str(tmp_path / "runs")])  # stops before any training
    assert str(exit_info.value) == (
        f"make_figures.py: error: {out / 'tsne_embedding.png'} already exist(s); pass --overwrite to replace, or "
        "--out to write elsewhere. Nothing was trained."
    )
    assert not (tmp_path / "runs").exists()
    assert (out / "tsne_embedding.png").read_bytes() == b"a figure someone keeps"
    module.refuse_existing(out, overwrite=True)  # --overwrite lets it through
    module.refuse_existing(tmp_path / "empty", overwrite=False)
