"""Subclass DistillationModule to add a loss term on features (a FitNet-style hint next to CMKD).

    python examples/subclass_script.py          # 36 s on a shared 2-core CPU, 1 torch thread
    python examples/subclass_script.py --fast   # a few seconds (what the tests run)

Everything else (frozen teacher, logging, checkpoints, CLI) is inherited. The projection head added here is
trained because ``configure_optimizers`` optimises every trainable parameter except the teacher's.
"""

import argparse
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import CMKDLoss
from cmkd_lightning.models import extract_features, get_classifier
from cmkd_lightning.runtime import quiet_lightning, set_cpu_threads
from datamodules import ComposedDigitsDataModule


class HintDistillationModule(DistillationModule):
    """CMKD on logits plus ``feature_weight * MSE(proj(student features), teacher features)``.

    Logged metrics (in addition to the parent's): ``train/hint``.
    """

    def __init__(self, *args: Any, feature_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feature_weight = feature_weight
        s_dim = get_classifier(self.student).in_features
        t_dim = get_classifier(self.teacher).in_features
        self.proj = nn.Linear(s_dim, t_dim)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        fs, zs = extract_features(self.student, x)
        with torch.no_grad():
            ft, zt = extract_features(self.teacher, x)
        terms = self.compute_losses(zs, zt, y)
        hint = F.mse_loss(self.proj(fs), ft)
        self.log("train/hint", hint)
        self.log("train/loss", terms["loss"], prog_bar=True)
        return terms["loss"] + self.feature_weight * hint


def main(fast: bool = False, threads: int | None = None) -> dict[str, float]:
    set_cpu_threads(threads)  # 1 torch thread unless $CMKD_CPU_THREADS says otherwise: fastest for tiny CNNs
    L.seed_everything(0)
    data = ComposedDigitsDataModule(
        train_size=512 if fast else 10000,
        val_size=256 if fast else 2000,
        test_size=256 if fast else 2000,
        batch_size=128,
    )
    kw = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        max_epochs=1 if fast else 5,
        enable_progress_bar=not fast,
    )
    teacher = DistillationModule("digits_teacher", num_classes=data.num_classes, lr_schedule="cosine")
    L.Trainer(**kw).fit(teacher, data)
    module = HintDistillationModule(
        "digits_student",
        teacher=teacher.student,
        losses=[CMKDLoss()],
        num_classes=data.num_classes,
        lr_schedule="cosine",
        feature_weight=0.5,
    )
    trainer = L.Trainer(**kw)
    trainer.fit(module, data)
    results = trainer.test(module, data)[0]
    print({k: round(v, 4) for k, v in results.items()})
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $CMKD_CPU_THREADS or 1)")
    args = parser.parse_args()
    with quiet_lightning():  # drop Lightning's litlogger tip and known deprecation noise, for this run only
        main(args.fast, args.threads)
