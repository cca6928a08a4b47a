"""``cmkd-compare``: paired statistics against scipy, method resolution, and one tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from scipy import stats

from cmkd_lightning.compare import (
    BUILTIN_METHODS,
    Method,
    compare,
    main,
    method_from_config,
    resolve_methods,
    summarize,
)
from cmkd_lightning.losses import CMKDLoss, KDLoss


def _rows():
    a = [70.0, 72.0, 71.0, 69.5, 73.0]
    b = [71.0, 74.5, 71.5, 72.0, 73.5]
    rows = [{"method": "a", "seed": s, "top1": v, "spearman": 0.5 + s / 100} for s, v in enumerate(a)]
    rows += [{"method": "b", "seed": s, "top1": v, "spearman": 0.6 + s / 100} for s, v in enumerate(b)]
    return rows, a, b


def test_summary_matches_scipy_paired_tests():
    rows, a, b = _rows()
    s = summarize(rows, ["a", "b"], reference="a")
    assert s["methods"]["b"]["top1"]["mean"] == pytest.approx(sum(b) / 5)
    assert s["methods"]["b"]["top1"]["std"] == pytest.approx(stats.tstd(b))
    d = s["paired"]["b"]["top1"]
    assert d["diffs"] == pytest.approx([y - x for x, y in zip(a, b)])
    assert d["mean_diff"] == pytest.approx(sum(b) / 5 - sum(a) / 5)
    assert d["wins"] == 5 and d["n"] == 5
    assert d["t_p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert d["wilcoxon_p"] == pytest.approx(stats.wilcoxon([y - x for x, y in zip(a, b)]).pvalue)
    assert "a" not in s["paired"]


def test_summary_pairs_only_common_seeds_and_gives_nan_without_pairs():
    rows, _, _ = _rows()
    rows = [r for r in rows if not (r["method"] == "b" and r["seed"] > 0)]
    d = summarize(rows, ["a", "b"], reference="a")["paired"]["b"]["top1"]
    assert d["n"] == 1 and math.isnan(d["t_p"]) and math.isnan(d["wilcoxon_p"])


def test_methods_from_names_configs_and_objects(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "init_args": {
                        "ce_weight": 0.5,
                        "loss_weights": [2.0],
                        "losses": [{"class_path": "cmkd_lightning.losses.KDLoss", "init_args": {"temperature": 2.0}}],
                    }
                }
            }
        )
    )
    own = Method("own", lambda: [CMKDLoss(beta=2.0)], [1.0])
    kd, mine, got = resolve_methods(["kd", str(config), own])
    assert (kd.ce_weight, kd.loss_weights) == (0.1, [0.9])
    assert (mine.name, mine.ce_weight, mine.loss_weights) == ("mine", 0.5, [2.0])
    (loss,) = mine.losses()
    assert isinstance(loss, KDLoss) and loss.temperature == 2.0
    assert got is own
    assert mine.losses()[0] is not loss  # fresh loss objects for every run


def test_builtin_cmkd_uses_the_loss_defaults_and_paper_is_one_argument_away():
    (cmkd,) = BUILTIN_METHODS["cmkd"].losses()
    (paper,) = BUILTIN_METHODS["cmkd_paper"].losses()
    assert isinstance(cmkd, CMKDLoss) and isinstance(paper, CMKDLoss)
    assert paper.pearson_scale == "paper" and (paper.temperature, paper.beta, paper.gamma) == (4.0, 4.0, 1.0)
    assert cmkd.pearson_scale == "sqrt_classes"


def test_bad_methods_are_rejected_with_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Expected each method to be one of"):
        resolve_methods(["nope"])
    with pytest.raises(ValueError, match="unique method names"):
        resolve_methods(["kd", "kd"])
    with pytest.raises(FileNotFoundError, match="neither"):
        method_from_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="Expected `reference`"):
        compare(["ce"], [0], reference="kd", out=tmp_path)


@pytest.mark.slow
def test_command_trains_paired_runs_and_writes_tables(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["--methods", "ce", "kd", "--seeds", "0", "1", "--num-digits", "1", "--train-size", "256"]
    args += ["--eval-size", "64", "--epochs", "1", "--teacher-epochs", "1", "--out", str(out)]
    main(args)
    printed = capsys.readouterr().out
    assert "Paired differences (method − kd)" in printed
    result = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [("ce", 0), ("kd", 0), ("ce", 1), ("kd", 1)]
    assert result["summary"]["paired"]["ce"]["top1"]["n"] == 2
    assert (out / "results.csv").read_text().startswith("method,seed,top1")
    assert (out / "results.png").stat().st_size > 0
    # the teacher is cached: a second comparison reuses it and, with the same seed, reproduces a run exactly
    again = compare(
        ["ce"], [0], num_digits=1, train_size=256, eval_size=64, epochs=1, teacher_epochs=1, out=out, verbose=False
    )
    assert again["teacher"] == result["teacher"]
    assert again["runs"][0]["top1"] == result["runs"][0]["top1"]


def _record(path, method, seed, top1, **setting):
    key = {"method": method, "seed": seed, "fp": "x", "num_digits": 1, "train_size": 8, "eval_size": 4, "epochs": 1}
    key.update({"teacher": "runs/t.pt", **setting})
    row = {"method": method, "seed": seed, "top1": top1, "top5": 100.0, "agreement": top1, "spearman": 0.5}
    with path.open("a") as f:
        f.write(json.dumps({"key": json.dumps(key), "row": row}) + "\n")


def test_summarize_only_uses_every_recorded_run_and_refuses_mixed_settings(tmp_path, capsys):
    runs = tmp_path / "runs.jsonl"
    for seed, (a, b) in enumerate([(50.0, 52.0), (60.0, 61.0), (55.0, 55.5)]):
        _record(runs, "kd", seed, a)
        _record(runs, "cmkd", seed, b, teacher=str(tmp_path / "runs" / "t.pt"))  # same teacher file, absolute path
    _record(runs, "kd", 0, 51.0)  # a later record of the same run wins
    main(["--summarize-only", "--out", str(tmp_path), "--methods", "kd", "cmkd", "--seeds", "0", "1", "2"])
    result = json.loads((tmp_path / "final.json").read_text())
    d = result["summary"]["paired"]["kd"]["top1"]
    assert d["diffs"] == pytest.approx([51.0 - 52.0, 60.0 - 61.0, 55.0 - 55.5])
    assert "Paired differences (method − cmkd)" in capsys.readouterr().out
    assert (tmp_path / "final.png").stat().st_size > 0
    _record(runs, "kd", 3, 50.0, epochs=2)
    with pytest.raises(ValueError, match="share data, epochs and teacher"):
        main(["--summarize-only", "--out", str(tmp_path), "--methods", "kd", "cmkd"])
