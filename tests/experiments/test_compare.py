"""``cmkd-compare``: paired statistics against scipy, method resolution, and one tiny end-to-end run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from scipy import stats

from cmkd_lightning.experiments.compare import (
    BUILTIN_METHODS,
    Method,
    build_parser,
    compare,
    main,
    method_from_config,
    resolve_methods,
    run_keys,
    summarize,
    summarize_recorded,
    train_teacher,
)
from cmkd_lightning.losses import CMKDLoss, KDLoss
from datamodules import ComposedDigitsDataModule
from tests.experiments._help import assert_every_default_shown, option_help


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


def _record(path, method, seed, top1, config="c1", **training):
    """A runs.jsonl record as compare() writes it (config hash, provenance, row)."""
    train = {"num_digits": 1, "train_size": 8, "eval_size": 4, "epochs": 1, "student": "digits_student", "lr": 0.05}
    train.update(training)
    row = {"method": method, "seed": seed, "top1": top1, "top5": 100.0, "agreement": top1, "spearman": 0.5}
    entry = {"key": f"{config}-{seed}", "config_hash": config, "teacher": "t", "data": "d", "training": train}
    entry["teacher_eval"] = {"top1": 99.0, "top5": 100.0}
    with path.open("a") as f:
        f.write(json.dumps({**entry, "row": {**row, "config_hash": config}}) + "\n")


def test_summarize_only_uses_every_recorded_run_and_refuses_mixed_settings(tmp_path, capsys):
    runs = tmp_path / "runs.jsonl"
    for seed, (a, b) in enumerate([(50.0, 52.0), (60.0, 61.0), (55.0, 55.5)]):
        _record(runs, "kd", seed, a)
        _record(runs, "cmkd", seed, b, config="c2")
    _record(runs, "kd", 0, 51.0)  # a later record of the same run wins
    main(["--summarize-only", "--out", str(tmp_path), "--methods", "kd", "cmkd", "--seeds", "0", "1", "2"])
    result = json.loads((tmp_path / "final.json").read_text())
    d = result["summary"]["paired"]["kd"]["top1"]
    assert d["diffs"] == pytest.approx([51.0 - 52.0, 60.0 - 61.0, 55.0 - 55.5])
    printed = capsys.readouterr().out
    assert "Paired differences (method − cmkd)" in printed and "| teacher | 99.00 |" in printed
    assert (tmp_path / "final.png").stat().st_size > 0
    _record(runs, "kd", 3, 50.0, epochs=2)
    with pytest.raises(SystemExit, match="cmkd-compare: error: .* to share data, epochs and teacher"):
        main(["--summarize-only", "--out", str(tmp_path), "--methods", "kd", "cmkd"])


def test_summarize_only_refuses_two_configs_under_one_name(tmp_path):
    runs = tmp_path / "runs.jsonl"
    _record(runs, "kd", 0, 50.0, config="t4")
    _record(runs, "kd", 1, 70.0, config="t1")  # the method's YAML was edited between the seeds
    with pytest.raises(
        SystemExit, match=r"`kd` in .*runs.jsonl to come from one configuration.*config t4: seeds \[0\]"
    ):
        main(["--summarize-only", "--out", str(tmp_path), "--methods", "kd"])
    assert not (tmp_path / "final.json").exists()


def test_truncated_last_line_is_skipped_with_a_warning_naming_the_file(tmp_path):
    runs = tmp_path / "runs.jsonl"
    _record(runs, "kd", 0, 50.0)
    _record(runs, "kd", 1, 60.0)
    runs.write_text(runs.read_text() + '{"key": "c1-2", "config_hash": "c1", "row": {"meth')  # killed mid-write
    with pytest.warns(UserWarning, match=f"truncated last line of {runs}"):
        result = summarize_recorded(tmp_path, ["kd"], verbose=False)
    assert [r["seed"] for r in result["runs"]] == [0, 1]
    runs.write_text('{"broken\n' + runs.read_text())
    with pytest.raises(ValueError, match="line 1 of .*runs.jsonl to be a JSON record"):
        summarize_recorded(tmp_path, ["kd"], verbose=False)


def test_run_keys_follow_the_config_not_the_name():
    provenance = {"teacher": "t", "data": "d", "training": {"epochs": 1}}
    a = Method("a", lambda: [KDLoss(temperature=4.0)], [1.0])
    b = Method("b", lambda: [KDLoss(temperature=4.0)], [1.0])
    a_t1 = Method("a", lambda: [KDLoss(temperature=1.0)], [1.0])
    assert run_keys(a, 0, provenance) == run_keys(b, 0, provenance)  # the name is not part of the key
    assert run_keys(a, 0, provenance)[1] != run_keys(a_t1, 0, provenance)[1]  # the temperature is
    assert run_keys(a, 0, provenance)[0] != run_keys(a, 1, provenance)[0]  # and the seed (not the config hash)
    assert run_keys(a, 0, provenance)[1] == run_keys(a, 1, provenance)[1]
    assert run_keys(a, 0, {**provenance, "teacher": "u"}) != run_keys(a, 0, provenance)


def test_teacher_file_is_written_atomically(tmp_path, monkeypatch):
    data = ComposedDigitsDataModule(num_digits=1, train_size=64, val_size=32, test_size=32, batch_size=32)
    data.setup()

    def killed_mid_write(obj, f):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(data, 1, tmp_path)
    assert not list(tmp_path.glob("teacher-*.pt")) and not list(tmp_path.glob(".teacher-*"))


@pytest.mark.slow
def test_cache_is_keyed_by_the_config_and_the_teacher_bytes(tmp_path):
    out = tmp_path / "cmp"
    tiny = {"num_digits": 1, "train_size": 256, "eval_size": 64, "epochs": 1, "out": out, "verbose": False}
    teacher = tmp_path / "teacher.pt"
    data = ComposedDigitsDataModule(num_digits=1, train_size=256, val_size=64, test_size=64, batch_size=128)
    data.setup()
    torch.save(train_teacher(data, 1, tmp_path / "t1").state_dict(), teacher)
    config = tmp_path / "kd4.yaml"
    kd = {"class_path": "cmkd_lightning.losses.KDLoss", "init_args": {"temperature": 4.0}}
    config.write_text(yaml.safe_dump({"model": {"init_args": {"losses": [kd]}}}))
    first = compare([str(config)], [0], teacher_checkpoint=teacher, **tiny)
    again = compare([str(config)], [0], teacher_checkpoint=teacher, **tiny)
    assert again["runs"] == first["runs"]  # reused: same config, teacher bytes, data and seed
    # the YAML edited between seeds: seed 1 runs T = 1, and a summary of both seeds under one name is refused
    kd["init_args"]["temperature"] = 1.0
    config.write_text(yaml.safe_dump({"model": {"init_args": {"losses": [kd]}}}))
    compare([str(config)], [1], teacher_checkpoint=teacher, **tiny)
    with pytest.raises(ValueError, match="`kd4` .* to come from one configuration"):
        summarize_recorded(out, ["kd4"], verbose=False)
    # another teacher at the same path: the student is trained again, not reported as cached
    torch.save(train_teacher(data, 2, tmp_path / "t2").state_dict(), teacher)
    retrained = compare([str(config)], [1], teacher_checkpoint=teacher, **tiny)
    entries = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(entries) == 3 and len({e["teacher"] for e in entries}) == 2
    assert retrained["runs"][0]["config_hash"] == entries[-1]["config_hash"]


@pytest.mark.slow
def test_each_student_is_its_own_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "cmp"
    tiny = {"num_digits": 1, "train_size": 128, "eval_size": 64, "epochs": 1, "teacher_epochs": 1, "out": out}
    result = compare(["ce", "kd"], [0], verbose=False, wandb_project="cmkd-tests", **tiny)
    folders = sorted((out / "wandb").glob("offline-run-*"))
    ids = [f.name.rsplit("-", 1)[-1] for f in folders]
    assert len(set(ids)) == 2  # one run per student, not one run for the comparison
    assert sorted(r["wandb_run_id"] for r in result["runs"]) == sorted(ids)
    again = compare(["ce", "kd"], [0], verbose=False, wandb_project="cmkd-tests", **tiny)
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2  # reused runs are not logged again
    assert again["runs"] == result["runs"]


@pytest.mark.slow
@pytest.mark.parametrize("num_digits", [1, 2])
def test_feature_methods_train_on_the_digits_task_with_their_connectors(tmp_path, num_digits):
    from cmkd_lightning.experiments.compare import BUILTIN_METHODS, fit_student
    from cmkd_lightning.losses import ReviewKDLoss

    data = ComposedDigitsDataModule(num_digits=num_digits, train_size=64, val_size=32, test_size=32, batch_size=32)
    data.setup()
    teacher = train_teacher(data, 1, tmp_path / "t")
    module = fit_student(BUILTIN_METHODS["reviewkd_cmkd"], 0, data, teacher, 1, tmp_path / "s")
    review, cmkd = module.losses
    assert isinstance(review, ReviewKDLoss) and isinstance(cmkd, CMKDLoss)
    assert review.input_shape == [1, 8, 8 * num_digits]  # connectors sized from the task's images
    assert any(p.requires_grad for p in review.parameters())
    assert module.global_step > 0


def _promised(text: str) -> set[str]:
    """File names a help text promises, with ``stem.{a,b}`` expanded."""
    names = set()
    for stem, exts in re.findall(r"\b(results|final)\.\{([a-z,]+)\}", text):
        names |= {f"{stem}.{e}" for e in exts.split(",")}
    names |= set(re.findall(r"\b(?:results|final)\.(?:json|csv|md|png)\b", text))
    return names


def test_help_lists_the_builtin_methods_and_every_default():
    parser = build_parser()
    assert_every_default_shown(parser)
    text = parser.format_help()
    for name, method in BUILTIN_METHODS.items():
        assert re.search(rf"^  {name} +{re.escape(method.description)}$", text, re.M), name
    summarize_help = option_help(parser)["summarize_only"]
    assert _promised(summarize_help) == {"final.json", "final.csv", "final.md", "final.png"}
    assert "results.*" in summarize_help  # and says results.* are left alone


def test_summarize_only_writes_exactly_the_files_its_help_promises(tmp_path):
    runs = tmp_path / "runs.jsonl"
    for seed in (0, 1):
        _record(runs, "kd", seed, 50.0 + seed)
        _record(runs, "cmkd", seed, 52.0 - seed, config="c2")
    before = set(p.name for p in tmp_path.iterdir())
    main(["--summarize-only", "--out", str(tmp_path), "--methods", "kd", "cmkd"])  # --seeds: every recorded one
    written = set(p.name for p in tmp_path.iterdir()) - before
    assert written == _promised(option_help(build_parser())["summarize_only"])
    assert json.loads((tmp_path / "final.json").read_text())["summary"]["paired"]["kd"]["top1"]["n"] == 2


def test_a_comparison_writes_the_files_its_help_describes(tmp_path, no_training):
    tiny = ["--num-digits", "1", "--train-size", "64", "--eval-size", "32", "--epochs", "1", "--teacher-epochs", "1"]
    main(["--methods", "ce", "kd_ce1", "--seeds", "0", "--out", str(tmp_path), *tiny])
    described = build_parser().description
    written = {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")}
    results = {n for n in written if n.startswith("results.")}
    assert results == {n for n in _promised(described) if n.startswith("results.")}
    assert "runs.jsonl" in written and "runs.jsonl" in described
    assert any(n.startswith("teacher-") and n.endswith(".pt") for n in written) and "teacher-*.pt" in described
    assert not {n for n in written if n.startswith("final.")}
