"""Which soft-rank regularisation strength ``eps`` suits CMKD's Spearman term on z-scored logits?

Usage::

    python benchmarks/soft_rank_epsilon.py [--rows 512] [--noise 3.0] [--seed 0] [--backend torch]
    python benchmarks/soft_rank_epsilon.py --timing [--threads 1]

For C in {10, 100, 1000} classes and eps in {0.3/C, 1/C, 3/C, 0.1, 0.3, 1.0}, on correlated teacher / student
logits (teacher = 3 * randn, student = teacher + noise * randn), with
``zscore(x) = (x - mean) / (std + 1e-7)`` per row (unbiased std), the table reports, averaged over rows:

- ``soft``: the soft Spearman correlation r(soft_rank(zscore(student), eps), rank(teacher)), the quantity
  CMKD's Spearman term is built on, next to ``exact``, the exact Spearman correlation;
- ``pearson``: r(zscore(student), rank(teacher)), what the soft Spearman collapses to in the affine regime;
- ``affine``: the fraction of rows whose soft rank is one isotonic block, i.e. an affine map of the input
  (the "Spearman" term then equals a Pearson term exactly);
- ``grad>0``: the fraction of z-scored student logits that receive a non-zero gradient from the soft
  Spearman loss (entries alone in their block get exactly zero: the soft rank is flat there).

``--timing`` instead measures forward + backward of ``soft_rank`` with the pure-PyTorch backend against
torchsort, side by side (interleaved calls, medians), on z-scored randn inputs.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

from cmkd_lightning.functional.rank import rank
from cmkd_lightning.functional.soft_rank import soft_rank, soft_rank_affine_rows
from cmkd_lightning.functional.zscore import zscore

CLASSES = (10, 100, 1000)


def eps_grid(c: int) -> list[tuple[str, float]]:
    return [("0.3/C", 0.3 / c), ("1/C", 1.0 / c), ("3/C", 3.0 / c), ("0.1", 0.1), ("0.3", 0.3), ("1.0", 1.0)]


def pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))


def measure(rows: int, c: int, noise: float, seed: int, backend: str) -> list[dict[str, float | str]]:
    g = torch.Generator().manual_seed(seed + c)
    teacher = 3.0 * torch.randn(rows, c, generator=g, dtype=torch.float64)
    student = teacher + noise * torch.randn(rows, c, generator=g, dtype=torch.float64)
    zs, zt = zscore(student), zscore(teacher)
    target = rank(zt)
    exact = pearson_rows(rank(zs), target).mean().item()
    pearson = pearson_rows(zs, target).mean().item()
    out = []
    for label, eps in eps_grid(c):
        leaf = zs.clone().requires_grad_(True)
        soft = pearson_rows(soft_rank(leaf, eps, backend=backend), target)
        (1 - soft).mean().backward()
        out.append(
            {
                "C": c,
                "eps": label,
                "eps_value": eps,
                "soft": soft.mean().item(),
                "exact": exact,
                "pearson": pearson,
                "affine": soft_rank_affine_rows(zs, eps).double().mean().item(),
                "grad_nonzero": (leaf.grad != 0).double().mean().item(),
            }
        )
    return out


def print_table(results: list[dict[str, float | str]]) -> None:
    head = f"{'C':>5} {'eps':>6} {'value':>8} {'soft':>8} {'exact':>8} {'soft-exact':>10} {'pearson':>8}"
    print(head + f" {'affine':>7} {'grad>0':>7}")
    for r in results:
        print(
            f"{r['C']:>5} {r['eps']:>6} {r['eps_value']:>8.4f} {r['soft']:>8.4f} {r['exact']:>8.4f} "
            f"{r['soft'] - r['exact']:>+10.4f} {r['pearson']:>8.4f} {r['affine']:>7.3f} "
            f"{r['grad_nonzero']:>7.3f}"
        )


def timing(threads: int | None, reps: dict[tuple[int, int], int]) -> None:
    import torchsort  # noqa: F401  (the comparison needs it; fail early with the usual ImportError)

    if threads:
        torch.set_num_threads(threads)
    # eps = 0.1 and 1 are in the affine regime on purpose: silence soft_rank's warning about it
    importlib.import_module("cmkd_lightning.functional.soft_rank")._affine_warned = True
    print(f"forward + backward, torch backend vs torchsort, {torch.get_num_threads()} thread(s), float32")
    print(f"{'N x n':>10} {'eps':>8} {'torchsort ms':>13} {'torch ms':>9} {'ratio':>6}")
    for (n_rows, n), n_reps in reps.items():
        x = zscore(torch.randn(n_rows, n))
        upstream = torch.randn(n_rows, n)
        for eps in (1.0 / n, 3.0 / n, 0.1, 1.0):

            def step(backend: str, eps: float = eps, x: torch.Tensor = x, upstream: torch.Tensor = upstream):
                leaf = x.detach().requires_grad_(True)
                soft_rank(leaf, eps, backend=backend).backward(upstream)

            for backend in ("torchsort", "torch"):  # warm-up
                for _ in range(3):
                    step(backend)
            times: dict[str, list[float]] = {"torchsort": [], "torch": []}
            for _ in range(n_reps):  # interleaved, so that load drifts hit both alike
                for backend in times:
                    t0 = time.perf_counter()
                    step(backend)
                    times[backend].append(time.perf_counter() - t0)
            ts, tt = (statistics.median(times[b]) for b in ("torchsort", "torch"))
            print(f"{f'{n_rows}x{n}':>10} {eps:>8.4g} {ts * 1e3:>13.3f} {tt * 1e3:>9.3f} {tt / ts:>6.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=512, help="samples per class count")
    p.add_argument("--noise", type=float, default=3.0, help="student = teacher + noise * randn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="torch", choices=("auto", "torch", "torchsort"))
    p.add_argument("--timing", action="store_true", help="time the torch backend against torchsort instead")
    p.add_argument("--threads", type=int, default=None, help="torch threads for --timing")
    args = p.parse_args()
    if args.timing:
        timing(args.threads, {(64, 100): 300, (512, 1000): 20})
        return
    # the table shows the affine regime on purpose: silence soft_rank's once-per-process warning about it
    importlib.import_module("cmkd_lightning.functional.soft_rank")._affine_warned = True
    results = []
    for c in CLASSES:
        results.extend(measure(args.rows, c, args.noise, args.seed, args.backend))
    print(f"rows per C: {args.rows}, student = teacher + {args.noise} * randn, teacher = 3 * randn, float64")
    print_table(results)


if __name__ == "__main__":
    main()
