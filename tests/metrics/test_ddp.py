"""Two CPU processes (gloo), outside Lightning: the synced metrics equal one process over the same samples."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmkd_lightning.metrics import ClassLogitGap, LogitAgreement

pytestmark = [
    pytest.mark.slow,  # two processes
    pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed"),
]


def _data():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(40, 6, generator=g) * 2
    student = teacher + torch.randn(40, 6, generator=g)
    targets = torch.randint(0, 6, (40,), generator=g)
    return student, teacher, targets


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        student, teacher, targets = _data()
        share = slice(0, 13) if rank == 0 else slice(13, 40)  # unequal shares: the sums, not the means, are synced
        agreement, gap = LogitAgreement(), ClassLogitGap(num_classes=6)
        agreement.update(student[share], teacher[share])
        gap.update(student[share], teacher[share], targets[share])
        result = {k: v.clone() for k, v in agreement.compute().items()}
        result["gap"] = gap.compute().clone()
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    student, teacher, targets = _data()
    agreement, gap = LogitAgreement(), ClassLogitGap(num_classes=6)
    agreement.update(student, teacher)
    gap.update(student, teacher, targets)
    expected = {**agreement.compute(), "gap": gap.compute()}
    for rank in (0, 1):
        got = torch.load(tmp_path / f"out.{rank}")
        assert set(got) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0, msg=key)
