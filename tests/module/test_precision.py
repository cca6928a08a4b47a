"""Mixed precision, channels-last and torch.compile on CPU.

The module runs the networks under the precision plugin's autocast but computes every loss in float32 with
autocast disabled (``DistillationModule.compute_losses``); these tests check that on CPU with bfloat16.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import pytest
import torch
from lightning import Trainer
from torch import Tensor, nn

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import CMKDLoss, DistillationLoss, DISTLoss, DKDLoss, KDLoss, LSKDLoss, NKDLoss
from cmkd_lightning.models.digits_cnn import digits_student, digits_teacher
from datamodules.composed_digits import ComposedDigitsDataModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:The '(train|val)_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
]

HAS_TORCHSORT = importlib.util.find_spec("torchsort") is not None

LOSSES: dict[str, Callable[[], DistillationLoss]] = {
    "kd": lambda: KDLoss(temperature=4.0),
    "dkd": lambda: DKDLoss(warmup_epochs=0),
    "dist": lambda: DISTLoss(),
    "lskd": lambda: LSKDLoss(),
    "nkd": lambda: NKDLoss(),
    "cmkd_torch": lambda: CMKDLoss(rank_backend="torch"),
    "cmkd_torchsort": lambda: CMKDLoss(rank_backend="torchsort"),
}


def _loss_param(name: str) -> Any:
    marks = [pytest.mark.skipif(not HAS_TORCHSORT, reason="torchsort not installed")] if "torchsort" in name else []
    return pytest.param(name, marks=marks, id=name)


def _trainer(**kwargs: Any) -> Trainer:
    return Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, **kwargs,
    )


def _digits(batch_size: int = 64) -> ComposedDigitsDataModule:
    return ComposedDigitsDataModule(train_size=3 * batch_size, val_size=32, test_size=32, batch_size=batch_size)


def _params(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


class _Probe(DistillationModule):
    """Records, for every ``compute_losses`` call, the input dtypes, output dtypes and the autocast state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[dict[str, Any]] = []

    def compute_losses(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor) -> dict:
        out = super().compute_losses(student_logits, teacher_logits, targets)
        self.seen.append({
            "autocast": torch.is_autocast_enabled("cpu"),
            "inputs": (student_logits.dtype, teacher_logits.dtype),
            "outputs": {k: v.dtype for k, v in out.items()},
            "finite": all(bool(torch.isfinite(v).all()) for v in out.values()),
        })
        return out


# ---------------------------------------------------------------------------------------------------------------
# bf16-mixed training


def test_bf16_mixed_trains_on_composed_digits() -> None:
    module = _Probe(
        digits_student(), digits_teacher(), losses=[KDLoss(), DKDLoss(warmup_epochs=0), CMKDLoss()],
        loss_weights=[0.5, 0.5, 1.0], lr_scheduler=None,
    )
    before = _params(module.student)
    teacher_before = _params(module.teacher)
    _trainer(precision="bf16-mixed", max_steps=3).fit(module, _digits())

    assert len(module.seen) == 3
    for call in module.seen:
        # the networks ran under autocast (bf16 logits), the losses did not (float32 outputs, finite)
        assert call["inputs"] == (torch.bfloat16, torch.bfloat16)
        assert call["autocast"] is True
        assert set(call["outputs"].values()) == {torch.float32}, call["outputs"]
        assert call["finite"]
    after = _params(module.student)
    assert all(v.dtype == torch.float32 for v in after.values())  # master weights stay float32
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == list(before)
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in teacher_before.items())


# ---------------------------------------------------------------------------------------------------------------
# every loss in float32 under autocast


def _tiny_module(loss: DistillationLoss, num_classes: int = 20) -> DistillationModule:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, num_classes))
    teacher = nn.Linear(8, num_classes)
    return DistillationModule(student, teacher, losses=[loss], num_classes=num_classes)


@pytest.mark.parametrize("name", [_loss_param(n) for n in LOSSES])
def test_losses_compute_in_float32_under_bf16_autocast(name: str) -> None:
    module = _tiny_module(LOSSES[name]())
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 20, (32,), generator=g)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        zs, zt = module.student(x), module.teacher_forward(x)
        terms = module.compute_losses(zs, zt, y)
        direct = module.losses[0](zs, zt, y)  # the loss module on its own, autocast still on
    assert zs.dtype == zt.dtype == torch.bfloat16  # autocast was active for the networks
    for key, value in {**terms, **{f"direct/{k}": v for k, v in direct.items()}}.items():
        assert value.dtype == torch.float32, f"{key}: {value.dtype}"
        assert torch.isfinite(value).all(), key

    # the same bf16 logits, upcast by hand, outside autocast: identical results
    upcast = module.compute_losses(zs.float(), zt.float(), y)
    assert terms.keys() == upcast.keys()
    for key in terms:
        torch.testing.assert_close(terms[key], upcast[key], rtol=0, atol=0, msg=key)

    # against a float32 run of the networks: equal up to the rounding of the logits to bfloat16 (8 bits)
    reference = module.compute_losses(module.student(x), module.teacher_forward(x), y)
    torch.testing.assert_close(terms["loss"], reference["loss"], rtol=2e-2, atol=2e-3)

    # backward w.r.t. the bf16 logits: the float32 gradient at the upcast logits, rounded to bfloat16
    zs_leaf, zt_fixed = zs.detach().requires_grad_(True), zt.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (grad_bf16,) = torch.autograd.grad(module.compute_losses(zs_leaf, zt_fixed, y)["loss"], zs_leaf)
    zs32 = zs.detach().float().requires_grad_(True)
    (grad32,) = torch.autograd.grad(module.compute_losses(zs32, zt_fixed.float(), y)["loss"], zs32)
    assert grad_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(grad_bf16, grad32.to(torch.bfloat16), rtol=0, atol=0)

    # parameter gradients through the whole bf16 forward are float32 and close to the float32 ones. CMKD's soft
    # rank has a piecewise-constant Jacobian (I - B) / eps with eps = 1/C, whose blocks move when the logits are
    # rounded, so its gradient differs more (measured 8-11 % here vs 0.2-0.5 % for the other losses).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.compute_losses(module.student(x), module.teacher_forward(x), y)["loss"]
    grads = torch.autograd.grad(loss, list(module.student.parameters()))
    ref_grads = torch.autograd.grad(reference["loss"], list(module.student.parameters()))
    tolerance = 0.25 if name.startswith("cmkd") else 0.02
    for g_bf16, g_ref in zip(grads, ref_grads):
        assert g_bf16.dtype == torch.float32
        assert (g_bf16 - g_ref).norm() <= tolerance * g_ref.norm()


# ---------------------------------------------------------------------------------------------------------------
# channels-last and torch.compile


def test_channels_last_converts_both_networks_and_matches_contiguous() -> None:
    torch.manual_seed(0)
    student, teacher = digits_student(), digits_teacher()
    plain = DistillationModule(
        digits_student(), digits_teacher(), losses=[CMKDLoss()], lr_scheduler=None, channels_last=False
    )
    plain.student.load_state_dict(student.state_dict())
    plain.teacher.load_state_dict(teacher.state_dict())
    module = DistillationModule(student, teacher, losses=[CMKDLoss()], lr_scheduler=None, channels_last=True)

    conv_weights = [p for net in (module.student, module.teacher) for p in net.parameters() if p.ndim == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert any(not p.is_contiguous() for p in conv_weights)  # the conversion really changed the layout

    dm = _digits(batch_size=32)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    module.train()
    plain.train()
    torch.testing.assert_close(module.student(x), plain.student(x), rtol=1e-4, atol=1e-5)
    # Compare the loss without Eq. 16's entropy split: a sample whose teacher entropy sits at the batch mean may
    # change branch on the ~1e-6 differences of the conv kernels, a jump of (beta - gamma) times its terms.
    smooth = CMKDLoss(dynamic_weighting=False)
    module_loss, plain_loss = module.losses[0], plain.losses[0]
    module.losses[0], plain.losses[0] = smooth, smooth
    torch.testing.assert_close(
        module.compute_losses(module.student(x), module.teacher_forward(x), y)["loss"],
        plain.compute_losses(plain.student(x), plain.teacher_forward(x), y)["loss"],
        rtol=1e-3, atol=1e-5,  # the soft rank (eps = 1/C) amplifies the ~1e-6 differences of the conv kernels
    )
    module.losses[0], plain.losses[0] = module_loss, plain_loss

    before = _params(module.student)
    _trainer(max_steps=2).fit(module, dm)
    after = _params(module.student)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in module.student.parameters() if p.ndim == 4)


@pytest.mark.slow
def test_compile_trains_and_keeps_state_dict_keys() -> None:
    """``compile=True`` on CPU (inductor, needs a C compiler): ~35 s cold, ~5 s with a warm inductor cache."""
    torch.manual_seed(0)
    student, teacher = digits_student(), digits_teacher()
    eager = DistillationModule(digits_student(), digits_teacher(), losses=[KDLoss()], lr_scheduler=None)
    eager.student.load_state_dict(student.state_dict())
    eager.teacher.load_state_dict(teacher.state_dict())
    module = DistillationModule(student, teacher, losses=[KDLoss()], lr_scheduler=None, compile=True)
    assert module.state_dict().keys() == eager.state_dict().keys()  # compiled in place: no `_orig_mod.` prefix

    dm = _digits(batch_size=32)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    module.eval()
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.student(x), eager.student(x), rtol=1e-4, atol=1e-4)

    before = _params(module.student)
    _trainer(max_steps=2).fit(module, dm)
    after = _params(module.student)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert module.student._compiled_call_impl is not None
