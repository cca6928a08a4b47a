"""EpochMeans (the module's epoch loss means) against plain Python sums, one process and two (gloo, CPU)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmkd_lightning.module.epoch_metrics import EpochMeans, epoch_metrics


def _updates(seed: int, n: int, names: tuple[str, ...]) -> list[tuple[dict[str, float], int]]:
    """``n`` updates, each with a random non-empty subset of ``names`` and a random batch size."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        keys = [k for k in names if rng.random() < 0.7] or [names[0]]
        out.append(({k: rng.uniform(-3, 3) for k in keys}, rng.randint(1, 9)))
    return out


def _reference(updates: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Sample-weighted means, a plain loop."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for values, n in updates:
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value * n
            counts[key] = counts.get(key, 0) + n
    return {k: sums[k] / counts[k] for k in sorted(sums)}


def _feed(metric: EpochMeans, updates: list[tuple[dict[str, float], int]]) -> None:
    for values, n in updates:
        metric.update({k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}, n)


@pytest.mark.parametrize("known", [(), ("loss", "ce"), ("loss", "ce", "kd/loss", "never")])
def test_means_equal_a_plain_loop(known):
    updates = _updates(0, 30, ("loss", "ce", "kd/loss", "kd/warmup", "hint"))
    metric = EpochMeans(known)
    _feed(metric, updates)
    got = metric.compute()
    expected = _reference(updates)
    assert list(got) == list(expected)  # sorted names, and none without samples ("never")
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-5), key


def test_reset_keeps_the_names_and_forgets_the_values():
    metric = EpochMeans(["loss"])
    _feed(metric, [({"loss": 1.0, "ce": 5.0}, 2)])
    metric.reset()
    assert metric.keys == ("ce", "loss") and metric.sums.tolist() == [0.0, 0.0] and not metric.update_called
    _feed(metric, [({"loss": 3.0}, 4)])
    assert metric.compute() == {"loss": 3.0}  # "ce" had no sample this epoch: left out


def test_a_new_name_keeps_the_sums_so_far():
    metric = EpochMeans(["b"])
    _feed(metric, [({"b": 2.0}, 1), ({"a": 4.0, "b": 4.0, "c": 1.0}, 3)])
    assert metric.keys == ("a", "b", "c")
    assert metric.compute() == {"a": 4.0, "b": 3.5, "c": 1.0}


def test_updates_read_nothing_from_the_device():
    """On the meta device every read would fail: the updates, new names included, only queue device work."""
    metric = EpochMeans(["loss"]).to("meta")
    metric.update({"loss": torch.ones((), device="meta")}, 8)
    metric.update({"loss": torch.ones((), device="meta"), "ce": torch.ones((), device="meta")}, 8)
    metric.update({"ce": torch.ones((), device="meta")}, 8)
    assert metric.sums.device.type == "meta" and metric.keys == ("ce", "loss")


def test_a_vector_update_equals_the_mapping_update():
    updates = _updates(3, 20, ("loss", "ce", "kd/loss"))
    by_mapping, by_vector = EpochMeans(["loss", "ce", "kd/loss"]), EpochMeans(["loss", "ce", "kd/loss"])
    for values, n in updates:
        terms = {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}
        by_mapping.update(terms, n)
        vector = by_vector.vector(terms)
        if vector is None:  # a name missing from this step: only the mapping can say which
            assert len(terms) < 3
            by_vector.update(terms, n)
        else:
            assert vector.dtype == torch.float32 and vector.tolist() == pytest.approx(
                [values[k] for k in by_vector.keys]
            )
            by_vector.update(vector, n)
    assert by_vector.compute() == pytest.approx(by_mapping.compute())
    assert by_vector.compute() == pytest.approx(_reference(updates), rel=1e-6, abs=1e-5)


def test_vector_gives_new_names_slots_in_sorted_order():
    metric = EpochMeans(["loss"])
    vector = metric.vector({"loss": torch.tensor(1.0), "ce": torch.tensor(2.0)})
    assert metric.keys == ("ce", "loss") and vector.tolist() == [2.0, 1.0]
    assert metric.vector({"loss": torch.tensor(1.0)}) is None  # "ce" has no value: not a full vector


def test_a_vector_of_the_wrong_length_is_refused():
    metric = EpochMeans(["loss", "ce"])
    with pytest.raises(
        ValueError,
        match=r"Expected `terms` as a tensor to hold one value per name \['ce', 'loss'\] "
        r"\(shape \(2,\), from `EpochMeans.vector`\), but got shape \(3,\)\.",
    ):
        metric.update(torch.zeros(3), 4)


def test_states_reset_under_inference_mode_still_update_outside_it():
    # Lightning evaluates under inference_mode: the means reset there must still take the next training updates
    metric = EpochMeans(["loss"])
    with torch.inference_mode():
        metric.reset()
    metric.update({"loss": torch.tensor(2.0)}, 3)
    metric.update(metric.vector({"loss": torch.tensor(4.0)}), 1)
    metric.update({"ce": torch.tensor(1.0)}, 1)  # a new name, and a step without "loss"
    assert metric.compute() == {"ce": 1.0, "loss": 2.5}


def test_states_stay_out_of_the_checkpoint():
    metric = EpochMeans(["loss"])
    _feed(metric, [({"loss": 1.0}, 2)])
    assert metric.state_dict() == {}


@pytest.mark.parametrize("keys", ["loss", ["loss", 3]])
def test_keys_must_be_strings(keys):
    with pytest.raises(TypeError, match=r"Expected `keys` to be strings, but got"):
        EpochMeans(keys)


def test_all_module_metrics_are_one_container():
    metrics = epoch_metrics(3, ["loss"])
    assert sorted(metrics) == sorted(
        [f"{s}_top{k}" for s in ("train", "val", "test", "teacher") for k in (1, 5)]
        + ["train_means", "val_means", "test_means"]
    )
    assert metrics["train_top5"].top_k == 3  # never more than the classes


# ---------------------------------------------------------------------------------------------------------------
# two processes with different names per rank

NAMES = {0: ("loss", "ce", "kd/loss", "rank0_only"), 1: ("loss", "ce", "rank1_only", "kd/warmup")}


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # different known names and different seen names per rank, a different number of updates
        metric = EpochMeans(["loss"] if rank == 0 else ["ce", "other_known"])
        _feed(metric, _updates(rank, 7 + 5 * rank, NAMES[rank]))
        first = metric.compute()
        metric.reset()
        _feed(metric, _updates(10 + rank, 4, ("loss",)))  # second epoch: only "loss" on both ranks
        torch.save({"first": first, "second": metric.compute(), "keys": metric.keys}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes
@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")
def test_two_processes_with_different_names_equal_one(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    first = _reference(_updates(0, 7, NAMES[0]) + _updates(1, 12, NAMES[1]))
    second = _reference(_updates(10, 4, ("loss",)) + _updates(11, 4, ("loss",)))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"out.{rank}")
        for name, expected in (("first", first), ("second", second)):
            assert list(got[name]) == list(expected), (rank, name)
            for key, value in expected.items():
                assert got[name][key] == pytest.approx(value, rel=1e-6, abs=1e-5), (rank, name, key)
        assert got["keys"] == tuple(sorted({*NAMES[0], *NAMES[1], "other_known"}))  # one layout on both ranks
