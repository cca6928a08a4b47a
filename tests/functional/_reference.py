"""Naive per-sample references of the losses, written from the formulas (numpy, float64, Python loops)."""

import numpy as np
from scipy import stats


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def kl(p, q):
    return float(sum(pi * (np.log(pi) - np.log(qi)) for pi, qi in zip(p, q) if pi > 0))


def zscore_row(v, eps=1e-7):
    return (v - v.mean()) / (v.std(ddof=1) + eps)


def kd(zs, zt, T):
    return np.array([T**2 * kl(softmax(t / T), softmax(s / T)) for s, t in zip(zs, zt)])


def lskd(zs, zt, T):
    return kd(np.stack([zscore_row(r) for r in zs]), np.stack([zscore_row(r) for r in zt]), T)


def dkd(zs, zt, y, alpha, beta, T):
    out = []
    for s, t, g in zip(zs, zt, y):
        ps, pt = softmax(s / T), softmax(t / T)
        bs, bt = np.array([ps[g], 1 - ps[g]]), np.array([pt[g], 1 - pt[g]])
        rest = [c for c in range(len(s)) if c != g]
        ns, nt = softmax(s[rest] / T), softmax(t[rest] / T)
        out.append(T**2 * (alpha * kl(bt, bs) + beta * kl(nt, ns)))
    return np.array(out)


def nkd(zs, zt, y, T, gamma):
    out = []
    for s, t, g in zip(zs, zt, y):
        target = -softmax(t)[g] * np.log(softmax(s)[g])
        rest = [c for c in range(len(s)) if c != g]
        ns, nt = softmax(s[rest] / T), softmax(t[rest] / T)
        out.append(target - gamma * T**2 * float(np.sum(nt * np.log(ns))))
    return np.array(out)


def pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum()) * np.sqrt((b * b).sum()) + 1e-8))


def dist(zs, zt, T, beta, gamma):
    ys = np.stack([softmax(r / T) for r in zs])
    yt = np.stack([softmax(r / T) for r in zt])
    inter = 1 - np.mean([pearson(ys[i], yt[i]) for i in range(len(ys))])
    intra = 1 - np.mean([pearson(ys[:, c], yt[:, c]) for c in range(ys.shape[1])]) if len(ys) > 1 else 0.0
    return T**2 * (beta * inter + gamma * intra)


def cmkd(zs, zt, T, beta, gamma, soft_ranks, zscore=True, spearman=True, dynamic=True, t2=False, entropy="teacher"):
    """`soft_ranks`: (N, C) soft ranks of the (z-scored) student logits, computed by the caller.

    `entropy`: Eq. 14 on the teacher's own softmax(z_t) ("teacher") or on the loss's p_t ("loss").
    """
    nz = (lambda r: zscore_row(r)) if zscore else (lambda r: r)
    ent, lp, ls = [], [], []
    for i, (s, t) in enumerate(zip(zs, zt)):
        ps, pt = softmax(nz(s) / T), softmax(nz(t) / T)
        q = pt if entropy == "loss" else softmax(t)
        ent.append(-float(np.sum(q * np.log(q))))
        lp.append(1 - pearson(ps, pt))
        ls.append(1 - pearson(soft_ranks[i], stats.rankdata(t)) if spearman else 0.0)
    thr = np.mean(ent)
    out = []
    for h, p, s in zip(ent, lp, ls):
        if not spearman:
            v = beta * p
        elif not dynamic:
            v = beta * p + gamma * s
        elif h >= thr:
            v = beta * p + gamma * s
        else:
            v = gamma * p + beta * s
        out.append(v * (T**2 if t2 else 1.0))
    return np.array(out), np.array(ent) >= thr
