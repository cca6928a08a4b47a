"""A zoo of composed-digits teachers with different logit structures: train, cache and measure them.

CMKD's defaults were once chosen on one teacher per class count; this zoo gives several teachers per class count
(100 and 1000 classes) whose logits differ in the ways that matter to logit distillation: the spread of a row
(per-row logit std), how far the top class stands out of its row (top z-score), how flat the teacher's softmax
is (entropy) and how accurate it is. The structures come from the head (one feature column per digit position,
a global pool, or a factorised head whose class logit is the sum of per-position digit scores) and from the
training (long training without weight decay, label smoothing, early stopping).

Every teacher is trained with plain PyTorch (SGD, momentum 0.9, cosine over ``schedule_epochs``, batch 128) on the
30,000-image composed-digits training split that ``cmkd-compare`` uses, and cached as
``<out>/<name>.pt`` (state_dict) with ``<name>.json`` (its spec and measured statistics). A cached teacher whose
spec changed is retrained.

    python benchmarks/teacher_zoo/zoo.py build --out /work/zoo_runs/zoo              # train all, write the table
    python benchmarks/teacher_zoo/zoo.py build --out runs/zoo --names d3_grid d3_factorised
    python benchmarks/teacher_zoo/zoo.py table --out runs/zoo                        # table of the cached ones

``table`` writes ``<out>/zoo_stats.md`` and ``<out>/zoo_stats.json``; ``docs/TEACHER_ZOO.md`` holds the measured
table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_lightning.functional.cmkd import teacher_stats
from cmkd_lightning.models.digits_cnn import DigitsCNN
from datamodules import ComposedDigitsDataModule

TRAIN_SIZE = 30000
EVAL_SIZE = 5000
BATCH_SIZE = 128


@dataclass(frozen=True)
class TeacherSpec:
    """How one zoo teacher is built and trained.

    Args:
        name: file stem and table label (``d3_grid``: 3 digits, grid head).
        num_digits: 2 (100 classes) or 3 (1000 classes).
        head: :class:`~cmkd_lightning.models.digits_cnn.DigitsCNN` head.
        widths: conv stage widths (two convs per stage).
        schedule_epochs: length of the cosine learning-rate schedule.
        stop_epoch: epochs actually trained (``< schedule_epochs``: early stopping, the learning rate still high);
            ``None`` trains the whole schedule.
        label_smoothing: cross-entropy label smoothing.
        weight_decay: SGD weight decay.
        lr: SGD learning rate.
        seed: initial weights.
        logit_scale: with ``base``, the teacher is ``base``'s network with its logits multiplied by this (an
            over- or under-confident teacher with the same ranking and accuracy); nothing is trained.
        base: name of the trained zoo teacher a scaled teacher wraps; ``None`` for a trained teacher.
        description: one line for the table.
    """

    name: str
    num_digits: int
    head: str = "grid"
    widths: tuple[int, ...] = (16, 32, 64)
    schedule_epochs: int = 15
    stop_epoch: int | None = None
    label_smoothing: float = 0.0
    weight_decay: float = 5e-4
    lr: float = 0.05
    seed: int = 1234
    logit_scale: float = 1.0
    base: str | None = None
    description: str = ""

    @property
    def num_classes(self) -> int:
        """``10 ** num_digits``."""
        return 10**self.num_digits

    @property
    def epochs(self) -> int:
        """Epochs trained."""
        return self.schedule_epochs if self.stop_epoch is None else self.stop_epoch

    def fingerprint(self) -> str:
        """A short hash of every training setting (not the description) and the data sizes (and the base's)."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k != "description"}
        if self.base is None:  # trained teachers keep the hash they had before scaled teachers existed
            settings.pop("logit_scale")
            settings.pop("base")
        else:
            settings["base_fingerprint"] = ZOO[self.base].fingerprint()
        settings.update(train_size=TRAIN_SIZE, batch_size=BATCH_SIZE)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def build(self) -> DigitsCNN:
        """The untrained network (of ``base`` for a scaled teacher)."""
        spec = ZOO[self.base] if self.base is not None else self
        return DigitsCNN(spec.num_classes, widths=spec.widths, num_digits=spec.num_digits, head=spec.head)


class ScaledLogits(nn.Module):
    """``net``'s logits times ``scale``: the same ranking and accuracy, a sharper (> 1) or flatter (< 1) softmax.

    Example:
        >>> net = ScaledLogits(nn.Linear(3, 4), 8.0)
        >>> x = torch.randn(2, 3)
        >>> torch.allclose(net(x), 8.0 * net.net(x))
        True
    """

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: Tensor) -> Tensor:
        """``scale * net(x)``."""
        return self.net(x) * self.scale


def _specs(num_digits: int) -> list[TeacherSpec]:
    d = f"d{num_digits}"
    return [
        TeacherSpec(f"{d}_grid", num_digits, description="grid head (one feature column per digit), 15 epochs"),
        TeacherSpec(
            f"{d}_factorised",
            num_digits,
            head="factorised",
            description="factorised head: class logit = sum of per-position digit scores, 15 epochs",
        ),
        TeacherSpec(
            f"{d}_long",
            num_digits,
            schedule_epochs=20,
            weight_decay=0.0,
            description="grid head, 20 epochs, no weight decay, no label smoothing",
        ),
        TeacherSpec(
            f"{d}_smooth",
            num_digits,
            schedule_epochs=10,
            label_smoothing=0.3,
            description="grid head, 10 epochs, label smoothing 0.3",
        ),
        TeacherSpec(
            f"{d}_early",
            num_digits,
            stop_epoch=1,
            description="grid head, stopped after 1 of 15 cosine epochs (early stopping)",
        ),
        TeacherSpec(
            f"{d}_factorised_long",
            num_digits,
            head="factorised",
            schedule_epochs=20,
            weight_decay=0.0,
            description="factorised head, 20 epochs, no weight decay",
        ),
        TeacherSpec(
            f"{d}_sharp",
            num_digits,
            base=f"{d}_grid",
            logit_scale=8.0,
            description=f"{d}_grid's logits x 8 (an over-confident teacher: same ranking and accuracy)",
        ),
        TeacherSpec(
            f"{d}_global",
            num_digits,
            head="global",
            description="global average pool (no per-position features), 15 epochs",
        ),
        TeacherSpec(
            f"{d}_soft_or",
            num_digits,
            head="soft_or",
            schedule_epochs=6,
            description="soft-OR head: class logit = log-sum-exp of per-position digit scores, 6 epochs",
        ),
        TeacherSpec(
            f"{d}_soft_or_sharp",
            num_digits,
            base=f"{d}_soft_or",
            logit_scale=8.0,
            description=f"{d}_soft_or's logits x 8 (flat tail, over-confident scale: same ranking and accuracy)",
        ),
    ]


ZOO: dict[str, TeacherSpec] = {s.name: s for k in (2, 3) for s in _specs(k)}


def data_module(num_digits: int, train_size: int | None = None) -> ComposedDigitsDataModule:
    """The composed-digits data of the zoo (``cmkd-compare``'s: seed 0, 5,000 val and test images).

    ``train_size`` defaults to :data:`TRAIN_SIZE`, the teachers' training set.
    """
    train_size = TRAIN_SIZE if train_size is None else train_size
    data = ComposedDigitsDataModule(
        num_digits=num_digits, train_size=train_size, val_size=EVAL_SIZE, test_size=EVAL_SIZE, batch_size=BATCH_SIZE
    )
    data.setup()
    return data


def train(spec: TeacherSpec, data: ComposedDigitsDataModule, verbose: bool = True) -> nn.Module:
    """Train ``spec``'s network with cross-entropy (plain PyTorch, deterministic given the spec)."""
    torch.manual_seed(spec.seed)
    net = spec.build()
    opt = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=0.9, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.schedule_epochs)
    loader = data.train_dataloader()
    for epoch in range(spec.epochs):
        loader.sampler.set_epoch(epoch)
        net.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        for x, y in loader:
            loss = F.cross_entropy(net(x), y, label_smoothing=spec.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(y), seen + len(y)
        sched.step()
        if verbose:
            print(
                f"  {spec.name} epoch {epoch + 1}/{spec.epochs}: loss {total / seen:.4f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return net.eval()


@torch.no_grad()
def logits_of(net: nn.Module, loader: Any) -> tuple[Tensor, Tensor]:
    """``(logits, labels)`` over a loader, in order."""
    net.eval()
    zs, ys = [], []
    for x, y in loader:
        zs.append(net(x))
        ys.append(y)
    return torch.cat(zs).double(), torch.cat(ys)


def logit_statistics(logits: Tensor, labels: Tensor, temperature: float = 4.0, batch_size: int = 128) -> dict:
    """The statistics of the zoo table, from ``(N, C)`` teacher logits and ``(N,)`` labels.

    - ``top1``, ``top5``: accuracy in %.
    - ``logit_std``: median over rows of the per-row standard deviation of the logits (``correction=0``).
    - ``top_z``: median over rows of the top logit's z-score, ``(max z - mean z) / std z``.
    - ``entropy``: mean entropy (nats) of ``softmax(z)``; ``entropy_frac``: that over ``log C``.
    - ``below_mean_entropy``: fraction of samples below their batch's mean entropy (batches of ``batch_size``
      in loader order), the "easy" branch of Eq. 16 with ``entropy_source="teacher"``.
    - ``p_top_raw``: median top probability of ``softmax(z / T)`` (what KD and DIST match at ``T``).
    - ``p_top_zscored``: median top probability of ``softmax(zscore(z) / T)`` (what CMKD's Pearson term matches).

    Example:
        >>> z = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
        >>> s = logit_statistics(z, torch.tensor([0, 2]))
        >>> s["top1"], round(s["top_z"], 3)
        (50.0, 1.732)
    """
    z = logits.double()
    n, c = z.shape
    std = z.std(dim=1, correction=0)
    top = z.max(dim=1).values
    top_z = (top - z.mean(dim=1)) / std
    log_p = F.log_softmax(z, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    below = [
        float((chunk < chunk.mean()).double().mean()) * len(chunk)
        for chunk in entropy.split(batch_size)
        if len(chunk) == batch_size
    ]
    full = sum(len(ch) for ch in entropy.split(batch_size) if len(ch) == batch_size)
    k = min(5, c)
    zscored = teacher_stats(z, temperature=temperature).probs
    return {
        "n": n,
        "num_classes": c,
        "top1": 100 * float((z.argmax(1) == labels).double().mean()),
        "top5": 100 * float((z.topk(k, dim=1).indices == labels[:, None]).any(1).double().mean()),
        "logit_std": float(std.quantile(0.5)),
        "top_z": float(top_z.quantile(0.5)),
        "entropy": float(entropy.mean()),
        "entropy_frac": float(entropy.mean()) / math.log(c),
        "below_mean_entropy": sum(below) / full if full else math.nan,
        "p_top_raw": float(F.softmax(z / temperature, dim=1).max(dim=1).values.quantile(0.5)),
        "p_top_zscored": float(zscored.max(dim=1).values.quantile(0.5)),
    }


def load(spec: TeacherSpec, out: str | Path) -> nn.Module | None:
    """The cached teacher of ``spec`` under ``out``, or ``None`` when absent or trained from another spec.

    A scaled teacher (``spec.base``) is its base's cached network wrapped in :class:`ScaledLogits`.
    """
    out = Path(out)
    if spec.base is not None:
        base = load(ZOO[spec.base], out)
        return None if base is None else ScaledLogits(base, spec.logit_scale).eval()
    meta_path, weights = out / f"{spec.name}.json", out / f"{spec.name}.pt"
    if not (meta_path.is_file() and weights.is_file()):
        return None
    if json.loads(meta_path.read_text()).get("fingerprint") != spec.fingerprint():
        return None
    net = spec.build()
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval()


def build(
    names: list[str] | None = None, out: str | Path = "runs/zoo", threads: int = 1, verbose: bool = True
) -> dict[str, dict]:
    """Train (or load) the named teachers (default: all of :data:`ZOO`), measure and cache them.

    Returns:
        ``{name: {"spec": ..., "fingerprint": ..., "seconds": ..., "test": stats, "val": stats}}``.
    """
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(ZOO) if names is None else names
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise ValueError(f"Expected teacher names from {sorted(ZOO)}, but got {unknown}.")
    records: dict[str, dict] = {}
    data: dict[int, ComposedDigitsDataModule] = {}
    for name in names:
        spec = ZOO[name]
        if spec.num_digits not in data:
            data[spec.num_digits] = data_module(spec.num_digits)
        dm = data[spec.num_digits]
        net = load(spec, out)
        meta = out / f"{name}.json"
        if net is not None and meta.is_file() and json.loads(meta.read_text())["fingerprint"] == spec.fingerprint():
            records[name] = json.loads(meta.read_text())
            if verbose:
                print(f"{name}: cached", flush=True)
            continue
        start = time.perf_counter()
        if spec.base is not None:  # nothing to train: the base's network, scaled
            if net is None:
                build([spec.base], out, threads, verbose)
                net = load(spec, out)
        else:
            if verbose:
                print(f"{name}: training {spec.description}", flush=True)
            net = train(spec, dm, verbose)
        seconds = time.perf_counter() - start
        record = {
            "spec": dataclasses.asdict(spec),
            "fingerprint": spec.fingerprint(),
            "seconds": seconds,
            "torch": torch.__version__,
            "test": logit_statistics(*logits_of(net, dm.test_dataloader())),
            "val": logit_statistics(*logits_of(net, dm.val_dataloader())),
        }
        if spec.base is None:
            torch.save(net.state_dict(), out / f"{name}.pt")
        (out / f"{name}.json").write_text(json.dumps(record, indent=2))
        records[name] = record
        if verbose:
            t = record["test"]
            print(
                f"{name}: Top-1 {t['top1']:.2f}%, logit std {t['logit_std']:.1f}, top z {t['top_z']:.2f} "
                f"({seconds:.0f} s)",
                flush=True,
            )
    return records


def format_table(records: dict[str, dict]) -> str:
    """The zoo's statistics (test split) as a markdown table."""
    lines = [
        "| teacher | classes | how it was trained | Top-1 % | Top-5 % | logit std | top z | entropy / log C "
        "| below mean H | p_top softmax(z/4) | p_top softmax(zscore(z)/4) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in records.items():
        t = r["test"]
        lines.append(
            f"| {name} | {t['num_classes']} | {r['spec'].get('description', '')} | {t['top1']:.2f} | {t['top5']:.2f} "
            f"| {t['logit_std']:.2f} | {t['top_z']:.2f} | {t['entropy_frac']:.3f} | {t['below_mean_entropy']:.2f} "
            f"| {t['p_top_raw']:.3f} | {t['p_top_zscored']:.4f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def table(out: str | Path, names: list[str] | None = None, verbose: bool = True) -> dict[str, dict]:
    """Write ``<out>/zoo_stats.{md,json}`` from the cached teachers (those whose spec still matches)."""
    out = Path(out)
    records = {}
    for name in names or list(ZOO):
        path = out / f"{name}.json"
        if path.is_file() and load(ZOO[name], out) is not None:
            record = json.loads(path.read_text())
            if record["fingerprint"] == ZOO[name].fingerprint():
                records[name] = record
    if not records:
        raise FileNotFoundError(f"Expected cached zoo teachers under {out}, but found none; run `build` first.")
    text = format_table(records)
    (out / "zoo_stats.md").write_text(text)
    (out / "zoo_stats.json").write_text(json.dumps(records, indent=2))
    if verbose:
        print(text)
    return records


def main(argv: list[str] | None = None) -> None:
    """``build`` (train, cache, table) or ``table`` (from the cache)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("build", "table", "list"))
    p.add_argument("--out", default="runs/zoo", help="cache folder (default: %(default)s)")
    p.add_argument("--names", nargs="+", default=None, help=f"teachers (default: all): {', '.join(ZOO)}")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.command == "list":
        for spec in ZOO.values():
            print(f"{spec.name:>14}  {spec.num_classes:>5} classes  {spec.description}")
        return
    if a.command == "build":
        build(a.names, a.out, a.threads)
    table(a.out, a.names)


if __name__ == "__main__":
    sys.exit(main())
