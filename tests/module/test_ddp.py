"""DDP on CPU (gloo, 2 processes) against a single process over the same global batches.

Lightning gives each rank a ``DistributedSampler`` (for training always with ``shuffle=True``, seed 0): both
ranks draw the same permutation ``perm`` and rank ``r`` takes ``perm[r], perm[r + 2], ...``. With ``B`` samples
per rank, step ``j`` of the two ranks together covers ``perm[2jB : 2jB + 2B]``, exactly the ``j``-th batch of a
single process with batch ``2B`` over the same permutation (``DistributedSampler(num_replicas=1, seed=0)``). DDP averages the
gradients of the two shard means, which equals the gradient of the full-batch mean whenever the loss is a mean
of per-sample terms (CE, KD, and CMKD with an all-reduced entropy threshold). CMKD's default per-device
threshold is a statistic of each shard, so that run is checked against a per-shard computation instead.

Every worker writes what it saw (pre-step weights, all-reduced gradients, losses, CMKD's per-sample hard mask,
final weights, logged metrics) to ``tmp_path``; the test process compares. The model has no BatchNorm, so
forward passes do not depend on the batch split.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import cmkd_lightning.losses.cmkd as cmkd_loss_module
from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import CMKDLoss, KDLoss

pytestmark = [
    pytest.mark.slow,  # two processes per test
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
    pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(), reason="ddp_fork needs the fork start method"
    ),
    pytest.mark.filterwarnings("ignore:It is recommended to use .* sync_dist=True"),
    pytest.mark.filterwarnings("ignore:The '(train|val)_dataloader' does not have many workers"),
]

NUM_CLASSES = 10
DIM = 12
PER_RANK = 4  # B
STEPS = 3
N_TRAIN = 2 * PER_RANK * STEPS
N_VAL = 16
TEMPERATURE = 4.0


# ---------------------------------------------------------------------------------------------------------------
# data, models, module


def _dataset(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs, labels and sample indices; odd samples get a sharp teacher (a spike at their label).

    The teacher below reads the first ``NUM_CLASSES`` input features as its logits (plus a little mixing), so
    even samples have flat teacher distributions (high entropy) and odd ones sharp (low entropy). A shard's mean
    entropy then depends strongly on its mix of the two, and per-device and global thresholds disagree on some
    samples (asserted in the per-device test, so the threshold tests can tell the two modes apart).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    odd = torch.arange(n) % 2 == 1
    x[odd, y[odd]] += 5.0
    return x, y, torch.arange(n)


def _models() -> tuple[nn.Module, nn.Module]:
    g = torch.Generator().manual_seed(1)
    student = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, NUM_CLASSES))
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    teacher = nn.Linear(DIM, NUM_CLASSES)
    with torch.no_grad():
        weight = torch.zeros(NUM_CLASSES, DIM)
        weight[:, :NUM_CLASSES] = torch.eye(NUM_CLASSES)
        teacher.weight.copy_(weight + 0.1 * torch.randn(weight.shape, generator=g))
        teacher.bias.zero_()
    return student, teacher


def _module(loss: str) -> DistillationModule:
    student, teacher = _models()
    if loss == "kd":
        losses, weights, ce_weight = [KDLoss(temperature=TEMPERATURE)], [0.9], 0.1
    else:
        sync = loss == "cmkd_sync"
        losses, weights, ce_weight = [CMKDLoss(temperature=TEMPERATURE, sync_entropy_threshold=sync)], [1.0], 1.0
    return DistillationModule(
        student, teacher, losses=losses, loss_weights=weights, ce_weight=ce_weight, num_classes=NUM_CLASSES,
        optimizer=functools.partial(torch.optim.SGD, lr=0.2, momentum=0.9, weight_decay=5e-4), lr_scheduler=None,
    )


def _student_state(module: LightningModule) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.student.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# recording


_TERMS_FUNCTIONS = ("cmkd_terms", "cmkd_fused_terms")  # the general and the fused path of CMKDLoss


class _Recorder(Callback):
    """Writes, per rank, what training saw to ``<out>/<tag>_rank<r>.pt``.

    CMKD's per-sample hard mask is internal to ``CMKDLoss.forward``; the recorder wraps the ``cmkd_terms`` and
    ``cmkd_fused_terms`` functions that ``CMKDLoss`` calls (in this process only) to keep the last ``hard`` vector.
    """

    def __init__(self, out: Path, tag: str) -> None:
        self.out, self.tag = out, tag
        self.rec: dict[str, Any] = {}
        self._last_hard: Tensor | None = None
        self._original = {name: getattr(cmkd_loss_module, name) for name in _TERMS_FUNCTIONS}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        def recording(original: Any) -> Any:
            def inner(*args: Any, **kwargs: Any) -> Any:
                terms = original(*args, **kwargs)
                self._last_hard = terms.hard.detach().clone()
                return terms

            return inner

        for name, original in self._original.items():
            setattr(cmkd_loss_module, name, recording(original))
        self.rec = {"idx": [], "pre_state": [], "grads": [], "loss": [], "hard": []}

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for name, original in self._original.items():
            setattr(cmkd_loss_module, name, original)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.rec["idx"].append(batch[2].clone())
        self.rec["pre_state"].append(_student_state(pl_module))
        self._last_hard = None

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        # after backward: under DDP the gradients are already all-reduced (averaged over ranks)
        self.rec["grads"].append({n: p.grad.detach().clone() for n, p in pl_module.student.named_parameters()})

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.rec["loss"].append(outputs["loss"].detach().clone())
        self.rec["hard"].append(self._last_hard)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rec["final_state"] = _student_state(pl_module)
        self.rec["metrics"] = {k: v.detach().clone() for k, v in trainer.callback_metrics.items()}
        self.rec["world_size"] = trainer.world_size
        torch.save(self.rec, self.out / f"{self.tag}_rank{trainer.global_rank}.pt")


def _fit(loss: str, out: Path, devices: int) -> list[dict[str, Any]]:
    """Train ``STEPS`` steps (one epoch) plus one validation epoch; return each rank's record."""
    x, y, idx = _dataset(N_TRAIN, seed=0)
    xv, yv, iv = _dataset(N_VAL, seed=2)
    batch = 2 * PER_RANK // devices
    tag = f"{loss}_{devices}"
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[_Recorder(out, tag)],
    )
    train_set = TensorDataset(x, y, idx)
    # under DDP Lightning installs its own shuffled DistributedSampler, seeded from PL_GLOBAL_SEED (which an
    # earlier seed_everything in this process may have set: pin it); one process replays the same permutation
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=0) if devices == 1 else None
    previous = os.environ.get("PL_GLOBAL_SEED")
    os.environ["PL_GLOBAL_SEED"] = "0"
    try:
        trainer.fit(
            _module(loss),
            DataLoader(train_set, batch_size=batch, sampler=sampler, shuffle=False),
            DataLoader(TensorDataset(xv, yv, iv), batch_size=batch, shuffle=False),
        )
    finally:
        if previous is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = previous
    return [torch.load(out / f"{tag}_rank{r}.pt", weights_only=False) for r in range(devices)]


# ---------------------------------------------------------------------------------------------------------------
# independent references


def _reference_hard(teacher_logits: Tensor) -> Tensor:
    """Eq. 14-15 written out: entropy of the teacher's softmax(z_t) (CMKDLoss's default entropy source) at or
    above its mean over these samples."""
    log_p = F.log_softmax(teacher_logits.double(), dim=1)
    entropy = -(log_p.exp() * log_p).sum(1)
    return entropy >= entropy.mean()


def _teacher_logits(idx: Tensor) -> Tensor:
    x, _, _ = _dataset(N_TRAIN, seed=0)
    _, teacher = _models()
    with torch.no_grad():
        return teacher(x[idx])


def _expected_accuracy(records: list[dict[str, Any]]) -> dict[str, float]:
    """Top-1/Top-5 over every sample all ranks trained on (with the weights of that step) and over val."""
    x, y, _ = _dataset(N_TRAIN, seed=0)
    xv, yv, _ = _dataset(N_VAL, seed=2)
    student, _ = _models()
    hits1 = hits5 = count = 0
    for rec in records:
        for idx, state in zip(rec["idx"], rec["pre_state"]):
            student.load_state_dict(state)
            with torch.no_grad():
                top5 = student(x[idx]).topk(5, dim=1).indices
            hits1 += int((top5[:, 0] == y[idx]).sum())
            hits5 += int((top5 == y[idx, None]).any(1).sum())
            count += len(idx)
    student.load_state_dict(records[0]["final_state"])
    with torch.no_grad():
        top5v = student(xv).topk(5, dim=1).indices
    return {
        "train/acc_top1": hits1 / count,
        "train/acc_top5": hits5 / count,
        "val/acc_top1": float((top5v[:, 0] == yv).float().mean()),
        "val/acc_top5": float((top5v == yv[:, None]).any(1).float().mean()),
    }


def _by_sample(records: list[dict[str, Any]], step: int, key: str) -> dict[int, Any]:
    out = {}
    for rec in records:
        for i, value in zip(rec["idx"][step].tolist(), rec[key][step].tolist()):
            out[i] = value
    return out


def _assert_same_states(a: dict[str, Tensor], b: dict[str, Tensor], **tol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tol, msg=lambda m, key=key: f"{key}: {m}")


def _check_against_single_process(ddp: list[dict[str, Any]], single: dict[str, Any]) -> None:
    """Same global batches, same losses (mean over ranks), same gradients, weights and logged accuracies."""
    assert [r["world_size"] for r in ddp] == [2, 2] and single["world_size"] == 1
    for step in range(STEPS):
        # the sampler assumption: rank r holds perm[r], perm[r + 2], ... of the single process's batch
        for rank, rec in enumerate(ddp):
            assert torch.equal(rec["idx"][step], single["idx"][step][rank::2])
        ddp_loss = torch.stack([r["loss"][step] for r in ddp]).mean()
        torch.testing.assert_close(ddp_loss, single["loss"][step], rtol=1e-5, atol=1e-6)
        _assert_same_states(ddp[0]["grads"][step], ddp[1]["grads"][step], rtol=0, atol=0)
        _assert_same_states(ddp[0]["grads"][step], single["grads"][step], rtol=1e-4, atol=1e-6)
    _assert_same_states(ddp[0]["final_state"], ddp[1]["final_state"], rtol=0, atol=0)
    _assert_same_states(ddp[0]["final_state"], single["final_state"], rtol=1e-4, atol=1e-5)
    # a sanity check that the comparison is not vacuous: training moved the weights
    moved = max((ddp[0]["final_state"][k] - ddp[0]["pre_state"][0][k]).abs().max() for k in ddp[0]["final_state"])
    assert moved > 1e-2
    expected = _expected_accuracy(ddp)
    for key, value in expected.items():
        for rec in (*ddp, single):
            assert float(rec["metrics"][key]) == pytest.approx(value, abs=1e-6), key
    for key in ("val/loss", "val/ce"):
        for rec in ddp:
            torch.testing.assert_close(rec["metrics"][key], single["metrics"][key], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# tests


def test_ddp_kd_matches_single_process(tmp_path: Path) -> None:
    ddp = _fit("kd", tmp_path, devices=2)
    single = _fit("kd", tmp_path, devices=1)[0]
    _check_against_single_process(ddp, single)


def test_ddp_cmkd_global_threshold_matches_single_process(tmp_path: Path) -> None:
    ddp = _fit("cmkd_sync", tmp_path, devices=2)
    single = _fit("cmkd_sync", tmp_path, devices=1)[0]
    for step in range(STEPS):
        global_idx = single["idx"][step]
        reference = dict(zip(global_idx.tolist(), _reference_hard(_teacher_logits(global_idx)).tolist()))
        assert _by_sample([single], step, "hard") == reference
        assert _by_sample(ddp, step, "hard") == reference
    _check_against_single_process(ddp, single)


def test_ddp_cmkd_per_device_threshold_matches_per_shard_computation(tmp_path: Path) -> None:
    ddp = _fit("cmkd", tmp_path, devices=2)
    x, y, _ = _dataset(N_TRAIN, seed=0)
    reference_module = _module("cmkd")
    differs_from_global = False
    for step in range(STEPS):
        grads: list[dict[str, Tensor]] = []
        for rec in ddp:
            idx = rec["idx"][step]
            # per-device threshold: the mask is Eq. 15 over this rank's shard only
            shard_hard = _reference_hard(_teacher_logits(idx))
            assert rec["hard"][step].tolist() == shard_hard.tolist()
            # loss and gradient of this shard, from the weights the rank held before the step
            reference_module.student.load_state_dict(rec["pre_state"][step])
            reference_module.student.zero_grad()
            terms = reference_module.compute_losses(
                reference_module.student(x[idx]), reference_module.teacher_forward(x[idx]), y[idx]
            )
            terms["loss"].backward()
            torch.testing.assert_close(rec["loss"][step], terms["loss"].detach(), rtol=1e-5, atol=1e-6)
            grads.append({n: p.grad.clone() for n, p in reference_module.student.named_parameters()})
        averaged = {n: (grads[0][n] + grads[1][n]) / 2 for n in grads[0]}
        for rec in ddp:
            _assert_same_states(rec["grads"][step], averaged, rtol=1e-4, atol=1e-6)
        global_idx = torch.cat([r["idx"][step] for r in ddp])
        global_hard = _reference_hard(_teacher_logits(global_idx))
        differs_from_global |= bool((torch.cat([r["hard"][step] for r in ddp]) != global_hard).any())
    # the data make the two thresholds disagree, so this test tells the modes apart
    assert differs_from_global
    _assert_same_states(ddp[0]["final_state"], ddp[1]["final_state"], rtol=0, atol=0)
    expected = _expected_accuracy(ddp)
    for key, value in expected.items():
        for rec in ddp:
            assert float(rec["metrics"][key]) == pytest.approx(value, abs=1e-6), key


def test_ddp_train_epoch_loss_is_global_mean(tmp_path: Path) -> None:
    ddp = _fit("kd", tmp_path, devices=2)
    global_mean = torch.stack([loss for rec in ddp for loss in rec["loss"]]).mean()
    for rec in ddp:
        torch.testing.assert_close(rec["metrics"]["train/loss"], global_mean, rtol=1e-5, atol=1e-6)
