"""Feature-loss functionals against naive loops of the authors' formulas, gradcheck, and values pinned from the
reference code (mdistiller's ``at_loss``, ``rkd_loss``, ``hcl_loss``, OFD ``feat_loss``, CRD ``ContrastLoss`` and
OFD's scipy margin, run outside this repository on the same inputs; docs/FEATURE_BASELINES.md)."""

import itertools
import math

import pytest
import torch
from scipy.stats import norm

from cmkd_lightning import functional as F


def det(*shape, phase=0.0):
    """Deterministic, RNG-free inputs (the pinned reference values were computed on exactly these)."""
    n = math.prod(shape)
    return torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + phase).reshape(shape) * 1.5


def _pool(x, size):
    return torch.nn.functional.adaptive_avg_pool2d(x, size)


# ------------------------------------------------------------------------------------------------------ naive loops
def naive_at(fs_list, ft_list, p=2.0):
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        if fs.shape[2] > ft.shape[2]:
            fs = _pool(fs, ft.shape[2])
        elif fs.shape[2] < ft.shape[2]:
            ft = _pool(ft, fs.shape[2])
        n, _, h, w = fs.shape
        acc = 0.0
        for i in range(n):
            qs = [float(fs[i, :, a, b].pow(p).mean()) for a in range(h) for b in range(w)]
            qt = [float(ft[i, :, a, b].pow(p).mean()) for a in range(h) for b in range(w)]
            ns, nt = math.sqrt(sum(q * q for q in qs)), math.sqrt(sum(q * q for q in qt))
            acc += sum((a / ns - b / nt) ** 2 for a, b in zip(qs, qt))
        total += acc / (n * h * w)
    return total


def _huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def naive_rkd(s, t, wd=25.0, wa=50.0):
    n = s.shape[0]
    dist = lambda e, i, j: 0.0 if i == j else float((e[i] - e[j]).norm())  # noqa: E731
    ds = [[dist(s, i, j) for j in range(n)] for i in range(n)]
    dt = [[dist(t, i, j) for j in range(n)] for i in range(n)]
    ms = sum(v for r in ds for v in r if v > 0) / sum(1 for r in ds for v in r if v > 0)
    mt = sum(v for r in dt for v in r if v > 0) / sum(1 for r in dt for v in r if v > 0)
    ld = sum(_huber(ds[i][j] / ms, dt[i][j] / mt) for i in range(n) for j in range(n)) / n**2

    def cos(e, i, j, k):
        a, b = e[j] - e[i], e[k] - e[i]
        na, nb = max(float(a.norm()), 1e-12), max(float(b.norm()), 1e-12)
        return float(a @ b) / (na * nb)

    la = sum(_huber(cos(s, i, j, k), cos(t, i, j, k)) for i, j, k in itertools.product(range(n), repeat=3)) / n**3
    return wd * ld + wa * la


def naive_partial_l2(s, t, m):
    total = 0.0
    n, c, h, w = s.shape
    for i, ch, a, b in itertools.product(range(n), range(c), range(h), range(w)):
        sv, tv, mv = float(s[i, ch, a, b]), float(t[i, ch, a, b]), float(m[ch])
        if sv > mv and tv <= mv:
            total += (sv - mv) ** 2
        elif sv > tv and mv < tv <= 0:
            total += (sv - tv) ** 2
        elif tv > 0:
            total += (sv - tv) ** 2
    return total / n


def naive_hcl(fs_list, ft_list):
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        loss, weight, norm_ = float((fs - ft).pow(2).mean()), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= fs.shape[2]:
                continue
            weight /= 2
            loss += weight * float((_pool(fs, level) - _pool(ft, level)).pow(2).mean())
            norm_ += weight
        total += loss / norm_
    return total


def naive_nce(x, m_data, eps=1e-7):
    n, k1 = x.shape
    k = k1 - 1
    pn = k / m_data
    total = 0.0
    for i in range(n):
        total += math.log(float(x[i, 0]) / (float(x[i, 0]) + pn + eps))
        total += sum(math.log(pn / (float(x[i, j]) + pn + eps)) for j in range(1, k1))
    return -total / n


def naive_margin(w, b):
    out = []
    for s, m in zip(w.tolist(), b.tolist()):
        s = abs(s)
        cdf = norm.cdf(-m / s)
        out.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + m if cdf > 0.001 else -3 * s)
    return torch.tensor(out, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------ the tests
AT_IN = ([det(3, 4, 8, 8), det(3, 8, 4, 4, phase=1.0)], [det(3, 6, 8, 8, phase=2.0), det(3, 5, 2, 2, phase=3.0)])
RKD_IN = (det(5, 7), det(5, 3, phase=0.5))
HCL_IN = (
    [det(2, 3, 8, 8), det(2, 4, 2, 2, phase=1.0), det(2, 5, 1, 1, phase=2.0)],
    [det(2, 3, 8, 8, phase=0.3), det(2, 4, 2, 2, phase=1.3), det(2, 5, 1, 1, phase=2.3)],
)
OFD_IN = (det(2, 3, 4, 4), det(2, 3, 4, 4, phase=0.7) - 0.3, torch.tensor([-0.5, -0.2, -1.0], dtype=torch.float64))
NCE_IN = det(4, 9).abs() * 0.01 + 0.001
MARGIN_IN = (torch.tensor([1.0, 0.5, 2.0, 0.1]), torch.tensor([0.0, 0.3, -1.0, 0.5]))

# Values of the reference code (mdistiller a08d46f) on the inputs above, float64.
PINNED = {
    "at": 0.0025302478816560483,
    "rkd": 12.216296654546984,
    "hcl": 0.2442458944345391,
    "ofd_partial_l2": 18.2732794825971,
    "nce": 4.090656093434372,
    "margin": [-0.7978845608028654, -0.3075128801187717, -2.018320867674067, -0.30000000000000004],
}


def test_at_equals_naive_loop_and_reference():
    value = F.at_loss(*AT_IN)
    assert value.item() == pytest.approx(naive_at(*AT_IN), rel=1e-12)
    assert value.item() == pytest.approx(PINNED["at"], rel=1e-12)


def test_rkd_equals_naive_loop_and_reference():
    value = F.rkd_loss(*RKD_IN)
    assert value.item() == pytest.approx(naive_rkd(*RKD_IN), rel=1e-10)
    assert value.item() == pytest.approx(PINNED["rkd"], rel=1e-12)


def test_hcl_equals_naive_loop_and_reference():
    value = F.hcl_loss(*HCL_IN)
    assert value.item() == pytest.approx(naive_hcl(*HCL_IN), rel=1e-12)
    assert value.item() == pytest.approx(PINNED["hcl"], rel=1e-12)


def test_ofd_partial_l2_equals_naive_loop_and_reference():
    value = F.ofd_partial_l2(*OFD_IN)
    assert value.item() == pytest.approx(naive_partial_l2(*OFD_IN), rel=1e-12)
    assert value.item() == pytest.approx(PINNED["ofd_partial_l2"], rel=1e-12)


def test_ofd_loss_weighs_stages_by_powers_of_two_and_pools_the_teacher():
    s, t, m = OFD_IN
    t_big = t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # pools back to t exactly
    value = F.ofd_loss([s, s], [t_big, t], [m, m])
    assert value.item() == pytest.approx(1.5 * naive_partial_l2(s, t, m), rel=1e-12)


def test_ofd_margin_equals_scipy_and_reference():
    w, b = MARGIN_IN
    torch.testing.assert_close(F.ofd_margin(w.double(), b.double()), naive_margin(w, b), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        F.ofd_margin(w.double(), b.double()), torch.tensor(PINNED["margin"], dtype=torch.float64)
    )


def test_crd_nce_equals_naive_loop_and_reference():
    value = F.crd_nce_loss(NCE_IN, 100)
    assert value.item() == pytest.approx(naive_nce(NCE_IN, 100), rel=1e-12)
    assert value.item() == pytest.approx(PINNED["nce"], rel=1e-12)


def test_fitnet_is_the_mean_squared_error():
    s, t = det(2, 3, 4, 4), det(2, 3, 4, 4, phase=1.0)
    naive = sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())) / s.numel()
    assert F.fitnet_loss(s, t).item() == pytest.approx(naive, rel=1e-12)


def test_attention_maps_have_unit_norm():
    q = F.attention_map(det(2, 3, 4, 4))
    torch.testing.assert_close(q.norm(dim=1), torch.ones(2, dtype=torch.float64))


def test_pairwise_distances_equal_cdist_with_zero_diagonal():
    e = det(6, 4)
    torch.testing.assert_close(F.pairwise_distances(e), torch.cdist(e, e).fill_diagonal_(0.0), rtol=1e-10, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["at", "rkd", "hcl", "ofd", "nce", "fitnet"],
)
def test_gradcheck(name):
    cases = {
        "at": (lambda s: F.at_loss([s], [det(2, 2, 4, 4, phase=1.0)]), det(2, 3, 4, 4)),
        "rkd": (lambda s: F.rkd_loss(s, det(4, 2, phase=1.0)), det(4, 3)),
        "hcl": (lambda s: F.hcl_loss([s], [det(1, 2, 8, 8, phase=1.0)]), det(1, 2, 8, 8)),
        "ofd": (lambda s: F.ofd_loss([s], [det(2, 3, 2, 2, phase=0.7) - 0.3], [OFD_IN[2]]), det(2, 3, 2, 2) + 0.013),
        "nce": (lambda s: F.crd_nce_loss(s, 50), det(3, 5).abs() + 0.1),
        "fitnet": (lambda s: F.fitnet_loss(s, det(2, 3, 2, 2, phase=1.0)), det(2, 3, 2, 2)),
    }
    fn, x = cases[name]
    assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(True),))


def test_no_gradient_reaches_the_teacher():
    s, t = det(2, 3, 4, 4).requires_grad_(True), det(2, 3, 4, 4, phase=1.0).requires_grad_(True)
    (F.at_loss([s], [t]) + F.fitnet_loss(s, t) + F.hcl_loss([s], [t]) + F.rkd_loss(s, t)).backward()
    assert t.grad is None and s.grad is not None


def test_errors_name_the_argument_and_the_values():
    with pytest.raises(
        ValueError,
        match=r"Expected `student_hint` and `teacher_hint` to have the same shape, but got \(2, 3, 4, 4\) and \(2, 3, 2, 2\)",
    ):
        F.fitnet_loss(det(2, 3, 4, 4), det(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"non-empty lists of the same length, but got 2 and 1"):
        F.at_loss([det(1, 2, 2, 2)] * 2, [det(1, 2, 2, 2)])
    with pytest.raises(ValueError, match=r"Expected `student_features\[0\]` to be 4-D, but got shape \(2, 3\)"):
        F.at_loss([det(2, 3)], [det(2, 3)])
    with pytest.raises(ValueError, match=r"Expected one margin per stage \(1\), but got 2 margins"):
        F.ofd_loss([det(1, 2, 2, 2)], [det(1, 2, 2, 2)], [torch.zeros(2)] * 2)
    with pytest.raises(
        ValueError, match=r"level-0 features to have the same shape, but got \(1, 2, 2, 2\) and \(1, 3, 2, 2\)"
    ):
        F.hcl_loss([det(1, 2, 2, 2)], [det(1, 3, 2, 2)])
    with pytest.raises(
        ValueError, match=r"Expected `scores` to hold a positive and >= 1 negative per row, but got \(2, 1\)"
    ):
        F.crd_nce_loss(det(2, 1), 10)
    with pytest.raises(
        TypeError, match=r"Expected `student_features\[0\]` to be a floating-point tensor, but got dtype torch.int64"
    ):
        F.at_loss([torch.ones(1, 1, 2, 2, dtype=torch.long)], [det(1, 1, 2, 2)])
