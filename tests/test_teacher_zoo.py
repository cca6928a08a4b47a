"""The teacher zoo (benchmarks/teacher_zoo): heads, statistics against naive loops, the cache, the comparison tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd_lightning.models.digits_cnn import DigitsCNN

ZOO_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_zoo"
sys.path.insert(0, str(ZOO_DIR))

import compare_zoo  # noqa: E402
import zoo  # noqa: E402


@pytest.mark.parametrize("head", ["factorised", "soft_or"])
def test_per_position_heads_combine_the_digit_scores_of_each_class(head):
    # factorised: z_c = sum_j s_j[d_j(c)]; soft_or: z_c = log sum_j exp s_j[d_j(c)]
    torch.manual_seed(0)
    net = DigitsCNN(1000, widths=(4, 8), num_digits=3, double=False, head=head).eval()
    x = torch.randn(5, 1, 8, 24)
    with torch.no_grad():
        z = net(x)
        pooled = net.pool(net.features(x)).squeeze(2)  # (N, c, 3)
    weight = net.fc.weight.detach().view(3, 10, -1)  # group j maps position j's c features to its 10 digit scores
    bias = net.fc.bias.detach().view(3, 10)
    for n in range(5):
        scores = [weight[j] @ pooled[n, :, j] + bias[j] for j in range(3)]
        for c in (0, 7, 372, 999):
            digits = [c // 100, (c // 10) % 10, c % 10]
            own = [float(scores[j][d]) for j, d in enumerate(digits)]
            expected = sum(own) if head == "factorised" else math.log(sum(math.exp(v) for v in own))
            assert float(z[n, c]) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("head", ["grid", "global", "factorised", "soft_or"])
def test_every_head_gives_class_logits(head):
    net = DigitsCNN(100, widths=(4,), num_digits=2, head=head)
    assert tuple(net(torch.zeros(2, 1, 8, 16)).shape) == (2, 100)


def test_bad_heads_are_refused_with_the_argument_named():
    with pytest.raises(ValueError, match=r"Expected `head` to be one of \('grid', 'global', 'factorised', 'soft_or'\), but got 'x'"):
        DigitsCNN(100, head="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Expected `num_classes` to be 10 \*\* num_digits = 100 .* but got 50"):
        DigitsCNN(50, num_digits=2, head="factorised")
    with pytest.raises(ValueError, match=r"= 1000 for head='soft_or', but got 100"):
        DigitsCNN(100, num_digits=3, head="soft_or")


def test_logit_statistics_match_naive_loops():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 20, generator=g, dtype=torch.float64) * torch.linspace(0.5, 5, 300, dtype=torch.float64)[:, None]
    y = torch.randint(0, 20, (300,), generator=g)
    s = zoo.logit_statistics(z, y, temperature=4.0, batch_size=128)
    a, labels = z.numpy(), y.numpy()
    stds, tops, ents, p_raw, p_z, hit1, hit5 = [], [], [], [], [], [], []
    for row, label in zip(a, labels):
        stds.append(row.std())
        tops.append((row.max() - row.mean()) / row.std())
        p = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        ents.append(-(p * np.log(p)).sum())
        q = np.exp((row - row.max()) / 4) / np.exp((row - row.max()) / 4).sum()
        p_raw.append(q.max())
        zs = (row - row.mean()) / row.std(ddof=1)  # the library's z-score (sample std)
        r = np.exp((zs - zs.max()) / 4) / np.exp((zs - zs.max()) / 4).sum()
        p_z.append(r.max())
        hit1.append(row.argmax() == label)
        hit5.append(label in np.argsort(-row)[:5])
    below = []
    for start in (0, 128):  # the two full batches of 128; the last 44 rows are left out
        chunk = np.array(ents[start : start + 128])
        below.extend(chunk < chunk.mean())
    assert s["top1"] == pytest.approx(100 * np.mean(hit1))
    assert s["top5"] == pytest.approx(100 * np.mean(hit5))
    assert s["logit_std"] == pytest.approx(np.median(stds))
    assert s["top_z"] == pytest.approx(np.median(tops))
    assert s["entropy"] == pytest.approx(np.mean(ents))
    assert s["entropy_frac"] == pytest.approx(np.mean(ents) / math.log(20))
    assert s["below_mean_entropy"] == pytest.approx(np.mean(below))
    assert s["p_top_raw"] == pytest.approx(np.median(p_raw))
    assert s["p_top_zscored"] == pytest.approx(np.median(p_z), rel=1e-6)


def test_zoo_spans_both_class_counts_with_at_least_four_teachers_each():
    for k in (2, 3):
        specs = [s for s in zoo.ZOO.values() if s.num_digits == k]
        assert len(specs) >= 4
        assert {s.head for s in specs} >= {"grid", "factorised"}
        assert any(s.label_smoothing > 0 for s in specs) and any(s.stop_epoch for s in specs)
    fingerprints = {s.fingerprint() for s in zoo.ZOO.values()}
    assert len(fingerprints) == len(zoo.ZOO)


@pytest.fixture
def tiny_zoo(monkeypatch, tmp_path):
    """Two 1-epoch teachers on 512 images (100 classes), cached under tmp_path/zoo."""
    monkeypatch.setattr(zoo, "TRAIN_SIZE", 512)
    monkeypatch.setattr(zoo, "EVAL_SIZE", 128)
    specs = {
        "t_grid": zoo.TeacherSpec("t_grid", 2, widths=(4, 8), schedule_epochs=1, description="tiny grid"),
        "t_fact": zoo.TeacherSpec("t_fact", 2, head="factorised", widths=(4, 8), schedule_epochs=1),
        "t_sharp": zoo.TeacherSpec("t_sharp", 2, base="t_grid", logit_scale=8.0),
    }
    monkeypatch.setattr(zoo, "ZOO", specs)
    zoo.build(list(specs), tmp_path / "zoo", verbose=False)
    return tmp_path / "zoo"


@pytest.mark.slow
def test_build_caches_measures_and_retrains_a_changed_spec(tiny_zoo, monkeypatch):
    record = json.loads((tiny_zoo / "t_grid.json").read_text())
    assert record["fingerprint"] == zoo.ZOO["t_grid"].fingerprint()
    assert record["test"]["n"] == 128 and record["test"]["num_classes"] == 100
    net = zoo.load(zoo.ZOO["t_grid"], tiny_zoo)
    data = zoo.data_module(2)
    logits, labels = zoo.logits_of(net, data.test_dataloader())
    assert zoo.logit_statistics(logits, labels) == record["test"]  # the cached weights are the measured ones
    changed = zoo.TeacherSpec("t_grid", 2, widths=(4, 8), schedule_epochs=1, label_smoothing=0.1)
    assert zoo.load(changed, tiny_zoo) is None
    records = zoo.table(tiny_zoo)
    assert set(records) == {"t_grid", "t_fact", "t_sharp"}
    text = (tiny_zoo / "zoo_stats.md").read_text()
    assert "| t_fact | 100 |" in text and "| t_grid | 100 | tiny grid |" in text


@pytest.mark.slow
def test_compare_zoo_pairs_runs_per_teacher_and_pooled_and_resumes(tiny_zoo, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    args = ["--zoo", str(tiny_zoo), "--teachers", "t_grid", "t_fact", "--methods", "ce", "cmkd_paper", "cmkd"]
    args += ["--seeds", "0", "1", "--train-size", "256", "--epochs", "1", "--out", str(out), "--baselines", "ce"]
    compare_zoo.main(args)
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 3
    text = (out / "zoo_tables.md").read_text()
    assert "teacher t_grid, 2 paired seeds" in text and "teacher t_fact, 2 paired seeds" in text
    assert "pooled over 2 teachers" in text and "| **mean over teachers (how many)** |" in text
    result = json.loads((out / "zoo_results.json").read_text())
    pooled = result["summaries"]["pooled"]["paired"]["ce"]["top1"]
    assert pooled["n"] == 4  # (teacher, seed) pairs
    diffs = []
    for teacher in ("t_grid", "t_fact"):
        for seed in (0, 1):
            by = {r["method"]: r["top1"] for r in result["runs"] if r["teacher"] == teacher and r["seed"] == seed}
            diffs.append(by["ce"] - by["cmkd"])
    assert sorted(pooled["diffs"]) == pytest.approx(sorted(diffs))

    def no_training(*_args, **_kwargs):
        raise AssertionError("a recorded run was retrained")

    monkeypatch.setattr(compare_zoo, "train_student", no_training)
    compare_zoo.main(args)  # everything is read back from runs.jsonl
    assert len((out / "runs.jsonl").read_text().splitlines()) == 12


@pytest.mark.slow
def test_a_scaled_teacher_is_its_base_times_the_scale(tiny_zoo):
    base, sharp = (json.loads((tiny_zoo / f"{n}.json").read_text())["test"] for n in ("t_grid", "t_sharp"))
    assert not (tiny_zoo / "t_sharp.pt").exists()  # nothing trained or stored: the base's weights
    assert sharp["top1"] == base["top1"] and sharp["top_z"] == pytest.approx(base["top_z"])
    assert sharp["logit_std"] == pytest.approx(8.0 * base["logit_std"])
    assert sharp["p_top_zscored"] == pytest.approx(base["p_top_zscored"])  # z-scoring removes the scale
    net, base_net = zoo.load(zoo.ZOO["t_sharp"], tiny_zoo), zoo.load(zoo.ZOO["t_grid"], tiny_zoo)
    x = torch.randn(3, 1, 8, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), 8.0 * base_net(x))
    assert zoo.ZOO["t_sharp"].fingerprint() != zoo.TeacherSpec("t_sharp", 2, base="t_grid", logit_scale=4.0).fingerprint()


def test_margin_table_is_reference_minus_the_best_baseline():
    rows = [
        {"teacher": "a", "method": m, "seed": s, "top1": v}
        for m, s, v in [("kd", 0, 80.0), ("kd", 1, 82.0), ("dist", 0, 85.0), ("dist", 1, 85.0), ("cmkd", 0, 84.0)]
    ] + [{"teacher": "a", "method": "cmkd", "seed": 1, "top1": 84.5}]
    rows += [{"teacher": "b", "method": m, "seed": 0, "top1": v} for m, v in [("kd", 70.0), ("cmkd", 72.0)]]
    text = compare_zoo.margin_table(rows, ["kd", "dist", "cmkd"], "cmkd", ["kd", "dist"])
    assert "| a | 81.00 | 85.00 | 84.25 | -0.75 |" in text
    assert "| b | 70.00 | - | 72.00 | +2.00 |" in text  # dist did not run on b: the best of what did
    assert "| **mean over teachers (how many)** | 75.50 (2) | 85.00 (1) | 78.12 (2) | +0.62 (2) |" in text


def test_unknown_teacher_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"Expected `teachers` from .*, but got 'nope'"):
        compare_zoo.run(["nope"], ["ce"], [0], zoo=tmp_path, out=tmp_path / "o")
