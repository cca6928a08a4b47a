# ruff: noqa: B023  (the per-term lambdas are used within their loop iteration)
"""Why CMKD's paper-literal defaults fail at 1000 classes, measured on composed digits (10, 100, 1000 classes).

Two parts, each regenerating one table of docs/RESULTS.md ("CMKD across class counts"):

``grad``   Gradient norms on the student's logits, per sample (median over a batch of 512 test images), of each
           CMKD term (Pearson, soft Spearman, the Eq. 16 weighted sum, with and without T^2 and with the
           class-count scale), of KD and DIST, as a ratio to cross-entropy's, at initialisation and after training
           the student with cross-entropy; plus the shape of CMKD's target (top-1 probability of
           softmax(zscore(z_t) / T) against KD's softmax(z_t / 4)) and the analytic estimate
           sqrt(1 - r^2) / (sqrt(C - 1) * std(z_s)) of the Pearson term's gradient.
``train``  Test Top-1 / Spearman of CMKD variants (temperature on z-scored logits, T^2, the class-count scale,
           eps, loss weight, z-score, Spearman on/off) trained like every method of ``cmkd-compare``
           (same teacher, paired seeds, SGD + cosine, 4 epochs).

Usage (1 CPU thread; teachers are trained once and cached under --out)::

    python benchmarks/cmkd_class_count.py grad --out runs/cmkd-class-count
    python benchmarks/cmkd_class_count.py train --num-digits 3 --seeds 0 --variants paper t2 sqrtc psqrtc sqrtc_nosp

(variant names: VARIANTS below and the built-in methods of cmkd-compare; results are appended to
``<out>/train-<C>.jsonl``)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cmkd_lightning.experiments.compare import BUILTIN_METHODS, Method, fit_student, train_student, train_teacher  # noqa: E402
from cmkd_lightning.functional import dist_loss  # noqa: E402
from cmkd_lightning.functional.cmkd import cmkd_terms  # noqa: E402
from cmkd_lightning.functional.correlation import _pearson_corr  # noqa: E402
from cmkd_lightning.losses.base import DistillationLoss  # noqa: E402
from cmkd_lightning.models import create_model  # noqa: E402
from datamodules import ComposedDigitsDataModule  # noqa: E402


def _data(num_digits: int, train_size: int, eval_size: int) -> ComposedDigitsDataModule:
    dm = ComposedDigitsDataModule(
        num_digits=num_digits, train_size=train_size, val_size=eval_size, test_size=eval_size, batch_size=128
    )
    dm.setup()
    return dm


def _grad_norm(fn, zs: torch.Tensor) -> torch.Tensor:
    """Per-sample gradient norms of ``sum_i fn(z)_i`` (per-sample losses) with respect to the logits."""
    z = zs.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(z).sum(), z)
    return g.norm(dim=1)


def cmkd_per_sample(zs, zt, **kw):
    return cmkd_terms(zs, zt, **kw).loss


def grad_table(args: argparse.Namespace) -> dict:  # noqa: C901
    out = Path(args.out)
    rows = {}
    for k in args.num_digits:
        dm = _data(k, args.train_size, args.eval_size)
        C = dm.num_classes
        teacher = train_teacher(dm, args.teacher_epochs, out)
        x, y = next(iter(torch.utils.data.DataLoader(dm.datasets["test"], batch_size=512)))
        with torch.no_grad():
            zt = teacher(x)
        students = {}
        L.seed_everything(0, verbose=False)
        students["init"] = create_model("digits_student", num_classes=C, num_digits=k).eval()
        students["ce_trained"] = fit_student(Method("ce"), 0, dm, teacher, args.epochs, out).student.eval()
        for when, student in students.items():
            with torch.no_grad():
                zs = student(x)
            ce = _grad_norm(lambda z: F.cross_entropy(z, y, reduction="none"), zs)
            zhat = (zt - zt.mean(1, keepdim=True)) / zt.std(1, keepdim=True)
            paper = {"pearson_scale": "paper", "entropy_source": "loss"}  # Eq. 16 as written (preset="paper")
            terms = {
                "pearson_T4": lambda z: cmkd_terms(z, zt, temperature=4.0, spearman=False, beta=1.0, **paper).pearson,
                "pearson_T1": lambda z: cmkd_terms(z, zt, temperature=1.0, spearman=False, beta=1.0, **paper).pearson,
                "spearman": lambda z: cmkd_terms(z, zt, temperature=4.0).spearman,
                "eq16_T4": lambda z: cmkd_per_sample(z, zt, temperature=4.0, **paper),
                "eq16_T4_T2": lambda z: cmkd_per_sample(z, zt, temperature=4.0, temperature_squared=True, **paper),
                "eq16_T1": lambda z: cmkd_per_sample(z, zt, temperature=1.0, **paper),
                "eq16_default": lambda z: cmkd_per_sample(z, zt),  # CMKDLoss() now: Pearson x sqrt(C)
                "kd_T4": lambda z: (
                    16.0 * (F.softmax(zt / 4, 1) * (F.log_softmax(zt / 4, 1) - F.log_softmax(z / 4, 1))).sum(1)
                ),
            }
            ratios = {}
            for name, fn in terms.items():
                g = _grad_norm(fn, zs)
                ratios[name] = float((g / ce).median())
            # DIST is a batch loss: compare its batch-gradient norm (x N for a per-sample scale) with CE's.
            zz = zs.detach().clone().requires_grad_(True)
            (gd,) = torch.autograd.grad(2.0 * dist_loss(zz, zt, temperature=4.0), zz)
            ratios["dist_w2"] = float((gd.norm(dim=1) * len(zs) / ce).median())
            r = _pearson_corr(
                F.softmax(((zs - zs.mean(1, keepdim=True)) / zs.std(1, keepdim=True)) / 4, 1), F.softmax(zhat / 4, 1)
            )
            # softmax(zhat / T) is near-affine in zhat at T = 4 and Pearson ignores affine maps: no 1 / T factor
            analytic = (1 - r**2).clamp_min(0).sqrt() / (math.sqrt(C - 1) * zs.std(1))
            ratios["pearson_T4_analytic"] = float((analytic / ce).median())
            ratios["ce_grad_norm"] = float(ce.median())
            ratios["student_logit_std"] = float(zs.std(1).median())
            rows[f"{C}/{when}"] = ratios
        pt = {}
        for T in (0.25, 0.5, 1.0, 2.0, 4.0):
            p = F.softmax(zhat / T, 1)
            pt[f"zscore_T{T:g}"] = {
                "top1_prob": float(p.max(1).values.median()),
                "entropy_over_lnC": float((-(p * p.clamp_min(1e-30).log()).sum(1) / math.log(C)).median()),
            }
        p = F.softmax(zt / 4, 1)
        pt["raw_T4 (KD)"] = {
            "top1_prob": float(p.max(1).values.median()),
            "entropy_over_lnC": float((-(p * p.clamp_min(1e-30).log()).sum(1) / math.log(C)).median()),
        }
        pt["teacher_logit_std"] = float(zt.std(1).median())
        pt["teacher_top_zscore"] = float(zhat.max(1).values.median())
        rows[f"{C}/target"] = pt
    return rows


class ProtoCMKD(DistillationLoss):
    """CMKD variants for the experiments (the library's terms, plus a class-count scale and raw-logit Pearson).

    ``scale``: a number, ``"sqrt_c"`` (sqrt(C)) or ``"c"``; ``pearson_input="raw"`` takes the Pearson term (and
    the entropy) on ``softmax(z / T)`` of the raw logits (DIST's inter-class term) instead of z-scored ones.
    """

    name = "cmkd"

    def __init__(
        self,
        temperature=4.0,
        beta=4.0,
        gamma=1.0,
        eps_rank=None,
        zscore=True,
        spearman=True,
        scale=1.0,
        t2=False,
        pearson_input="zscore",
        pearson_scale=None,
        entropy_source="teacher",
    ):
        super().__init__()
        self.kw = dict(
            temperature=temperature,
            beta=beta,
            gamma=gamma,
            regularization_strength=eps_rank,
            zscore=zscore,
            spearman=spearman,
            temperature_squared=t2,
            pearson_scale="paper",  # the variants apply their own scales below
            entropy_source=entropy_source,
        )
        self.scale, self.pearson_input, self.pearson_scale = scale, pearson_input, pearson_scale

    def forward(self, zs, zt, targets=None):
        C = zs.shape[1]
        factor = {"sqrt_c": math.sqrt(C), "c": float(C)}.get(self.scale, self.scale)
        if self.pearson_input == "zscore" and self.pearson_scale is not None:
            terms = cmkd_terms(zs, zt, **self.kw)
            b, g = self.kw["beta"], self.kw["gamma"]
            wp, ws = torch.where(terms.hard, b, g), torch.where(terms.hard, g, b)
            ps = {"sqrt_c": math.sqrt(C)}.get(self.pearson_scale, self.pearson_scale)
            loss = ps * wp * terms.pearson + ws * terms.spearman
        elif self.pearson_input == "zscore":
            terms = cmkd_terms(zs, zt, **self.kw)
            loss = terms.loss
        else:
            T = self.kw["temperature"]
            pt = F.softmax(zt / T, 1)
            ent = -(pt * F.log_softmax(zt / T, 1)).sum(1)
            pearson = 1 - _pearson_corr(F.softmax(zs / T, 1), pt)
            sp = cmkd_terms(zs, zt, **{**self.kw, "beta": 1.0, "gamma": 1.0, "dynamic_weighting": False}).spearman
            hard = ent >= ent.mean()
            b, g = self.kw["beta"], self.kw["gamma"]
            loss = torch.where(hard, b * pearson + g * sp, g * pearson + b * sp)
            if self.kw["temperature_squared"]:
                loss = loss * T**2
        return {"loss": factor * loss.mean()}


# name -> (ProtoCMKD kwargs, loss weight); CE weight 1 everywhere
VARIANTS = {
    "paper": ({"entropy_source": "loss"}, 1.0),  # Eq. 16 as written: what CMKDLoss(preset="paper") computes
    "t2": ({"t2": True}, 1.0),
    "w16": ({}, 16.0),
    "sqrtc": ({"scale": "sqrt_c"}, 1.0),
    "t1": ({"temperature": 1.0}, 1.0),
    "t1_sqrtc": ({"temperature": 1.0, "scale": "sqrt_c"}, 1.0),
    "t2_nosp": ({"t2": True, "spearman": False}, 1.0),
    "t2_eps1": ({"t2": True, "eps_rank": 1.0}, 1.0),
    "t2_eps3c": ({"t2": True, "eps_rank": "3/C"}, 1.0),
    "raw_t4_t2": ({"t2": True, "pearson_input": "raw"}, 1.0),
    "noz_nosp_t2": ({"t2": True, "zscore": False, "spearman": False}, 1.0),
    "t05_sqrtc": ({"temperature": 0.5, "scale": "sqrt_c"}, 1.0),
    "t2_sqrtc": ({"temperature": 2.0, "scale": "sqrt_c"}, 1.0),
    "sqrtc_nosp": ({"scale": "sqrt_c", "spearman": False}, 1.0),
    "c": ({"scale": "c"}, 1.0),
    "psqrtc": ({"pearson_scale": "sqrt_c"}, 1.0),  # what CMKDLoss() computes now
    "psqrtc_eps8c": ({"pearson_scale": "sqrt_c", "eps_rank": "8/C"}, 1.0),
    "sqrtc_eps3c": ({"scale": "sqrt_c", "eps_rank": "3/C"}, 1.0),
    "sqrtc_eps8c": ({"scale": "sqrt_c", "eps_rank": "8/C"}, 1.0),
    "t1_sqrtc_nosp": ({"temperature": 1.0, "scale": "sqrt_c", "spearman": False}, 1.0),
}


def _method(name: str, num_classes: int) -> Method:
    kw, w = VARIANTS[name]
    kw = dict(kw)
    if isinstance(kw.get("eps_rank"), str):
        kw["eps_rank"] = float(kw["eps_rank"].split("/")[0]) / num_classes
    return Method(f"cmkd_{name}", lambda: [ProtoCMKD(**kw)], [w], 1.0, name)


def train_table(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    results = {}
    for k in args.num_digits:
        dm = _data(k, args.train_size, args.eval_size)
        teacher = train_teacher(dm, args.teacher_epochs, out)
        for seed in args.seeds:
            for name in args.variants:
                method = BUILTIN_METHODS[name] if name in BUILTIN_METHODS else _method(name, dm.num_classes)
                row = train_student(method, seed, dm, teacher, args.epochs, out)
                results.setdefault(f"{dm.num_classes}/{name}", []).append(row)
                print(
                    f"C={dm.num_classes} seed {seed} {name:>14}: Top-1 {row['top1']:6.2f}  "
                    f"Spearman {row['spearman']:.3f} ({row['seconds']:.0f} s)",
                    flush=True,
                )
                log = out / f"train-{dm.num_classes}.jsonl"
                with log.open("a") as f:
                    f.write(json.dumps({"variant": name, "epochs": args.epochs, **row}) + "\n")
    for key, rows in results.items():
        t1 = [r["top1"] for r in rows]
        sp = [r["spearman"] for r in rows]
        print(
            f"{key:>22}: Top-1 {statistics.fmean(t1):6.2f} ({min(t1):.1f}-{max(t1):.1f})  "
            f"Spearman {statistics.fmean(sp):.3f}"
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=["grad", "train"])
    p.add_argument("--out", default="runs/cmkd-class-count")
    p.add_argument("--num-digits", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--train-size", type=int, default=30000)
    p.add_argument("--eval-size", type=int, default=5000)
    p.add_argument("--teacher-epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.part == "grad":
        result = grad_table(args)
        print(json.dumps(result, indent=1))
    else:
        result = train_table(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.part}.json").write_text(json.dumps(result, indent=1))
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
