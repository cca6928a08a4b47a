"""Feature losses inside DistillationModule: composed with logit losses in one list, connectors trained with the
student and saved in checkpoints but not in the exported student, CRD's indices, nothing read from the device."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cmkd_lightning import DistillationModule
from cmkd_lightning.checkpoint import load_weights
from cmkd_lightning.losses import CMKDLoss, CRDLoss, FitNetLoss, KDLoss, OFDLoss, ReviewKDLoss
from cmkd_lightning.models import create_model

N, C = 8, 10


def _module(losses, **kwargs):
    torch.manual_seed(0)
    return DistillationModule(
        "resnet8", "resnet14", losses=losses, num_classes=C, optimizer=torch.optim.SGD, check_finite=False, **kwargs
    )


def _batch(with_indices=True, n=N):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, C, (n,), generator=g)
    return (x, y, torch.arange(n)) if with_indices else (x, y)


class _Indexed(Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, C, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def test_without_feature_losses_nothing_is_hooked():
    module = _module([KDLoss()])
    assert module._feature_layers is None
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: calls.append(m))
    try:
        module._shared_step(_batch(False), "train")
    finally:
        handle.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    assert calls  # the global hook saw the forward, and no module-level hook was left behind


def test_reviewkd_plus_cmkd_in_one_list_equals_the_sum_of_its_parts():
    module = _module([ReviewKDLoss(), CMKDLoss()], loss_weights=[5.0, 1.0], ce_weight=1.0)
    module.train()
    terms = module._shared_step(_batch(False), "train")
    assert {"reviewkd/loss", "reviewkd/hcl_loss", "reviewkd/warmup", "cmkd/loss"} <= set(terms)
    expected = terms["ce"] + terms["reviewkd/loss"] + terms["cmkd/loss"]
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(terms["reviewkd/loss"], 5.0 * 0.05 * terms["reviewkd/hcl_loss"])  # epoch 0 of 20
    terms["loss"].backward()
    assert all(p.grad is not None for p in module.losses[0].parameters())


def test_connectors_are_optimised_with_the_student_and_not_the_teacher():
    module = _module([FitNetLoss(), OFDLoss()])
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in module.losses.parameters()} <= params
    assert {id(p) for p in module.student.parameters()} <= params
    assert not {id(p) for p in module.teacher.parameters()} & params


def test_crd_plus_kd_trains_saves_connectors_and_exports_the_student_alone(tmp_path):
    module = _module([CRDLoss(num_samples=16, num_negatives=8), KDLoss()], ce_weight=1.0, loss_weights=[0.8, 0.9])
    memory = module.losses[0].memory_student.clone()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
    )
    trainer.fit(module, DataLoader(_Indexed(), batch_size=4), DataLoader(_Indexed(8), batch_size=4))
    assert not torch.equal(module.losses[0].memory_student, memory)  # the memory bank moved
    assert "val/crd/loss" not in trainer.callback_metrics and "train/crd/loss" in trainer.callback_metrics
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert {"losses.0.embed_student.linear.weight", "losses.0.memory_student", "losses.0.normalisers"} <= set(state)
    restored = DistillationModule.load_from_checkpoint(path, teacher="resnet14")
    torch.testing.assert_close(restored.losses[0].memory_teacher, module.losses[0].memory_teacher)
    torch.testing.assert_close(
        restored.losses[0].embed_student.linear.weight, module.losses[0].embed_student.linear.weight
    )
    student = load_weights(create_model("resnet8", num_classes=C), path, part="student")
    torch.testing.assert_close(student.fc.weight, module.student.fc.weight)


def test_crd_is_a_training_term_only():
    module = _module([CRDLoss(num_samples=N, num_negatives=4)])
    module.eval()
    terms = module._shared_step(_batch(False), "val")
    assert not any(k.startswith("crd/") for k in terms)


@pytest.mark.parametrize(
    "factory", [FitNetLoss, ReviewKDLoss, OFDLoss, lambda: CRDLoss(num_samples=N, num_negatives=4)]
)
def test_whole_shared_step_with_feature_losses_runs_on_meta(factory):
    """Hooks, connectors, the memory bank and the losses: nothing reads the device (meta has no data)."""
    module = _module([factory(), KDLoss()]).to("meta")
    x = torch.randn(N, 3, 32, 32, device="meta")
    y = torch.randint(0, C, (N,), device="meta")
    terms = module._shared_step((x, y, torch.arange(N, device="meta")), "train", 0)
    terms["loss"].backward()
    assert all(v.device.type == "meta" for v in terms.values())


def test_feature_losses_need_a_teacher():
    with pytest.raises(
        ValueError, match=r"Expected a `teacher` when distillation `losses` are given, but got teacher=None"
    ):
        DistillationModule("resnet8", None, losses=[FitNetLoss()], num_classes=C)
