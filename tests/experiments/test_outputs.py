"""The tools' writers: the plot leaves matplotlib's process state alone; files are replaced atomically."""

from __future__ import annotations

import json
import sys

import matplotlib
import pytest

from cmkd_lightning.experiments.outputs import atomic_write_text, plot, summarize, write_outputs


def _rows():
    return [
        {"method": m, "seed": s, "top1": 50.0 + 10 * i + s, "top5": 90.0, "agreement": 60.0, "spearman": 0.5 + s / 10}
        for i, m in enumerate(("a", "b"))
        for s in range(3)
    ]


def test_plot_keeps_the_backend_and_pyplot_state(tmp_path):
    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    matplotlib.use("pdf")  # a caller's own choice, which the plot must not switch to Agg
    try:
        rows = _rows()
        plot(rows, summarize(rows, ["a", "b"], "b"), tmp_path / "p.png", "title", 99.0)
        assert matplotlib.get_backend() == "pdf"
        if not had_pyplot:
            assert "matplotlib.pyplot" not in sys.modules
        else:
            import matplotlib.pyplot as plt

            assert plt.get_fignums() == []
    finally:
        matplotlib.use(backend)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_outputs_writes_the_four_files_and_no_temporary_one(tmp_path):
    rows = _rows()
    summary = summarize(rows, ["a", "b"], "b")
    write_outputs(tmp_path / "results", {"runs": rows}, rows, summary, "| table |\n", "title", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json", "results.md", "results.png"]
    assert json.loads((tmp_path / "results.json").read_text()) == {"runs": rows}
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == "method,seed,top1,top5,agreement,spearman"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    with pytest.raises(TypeError):
        atomic_write_text(path, 3)  # type: ignore[arg-type]  # write_text refuses: the old file stays
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
