"""Subclass DistillationModule through its extension hook: a FitNet-style feature hint next to CMKD.

    python examples/subclass_script.py          # 5 epochs on 10k images, 1 torch thread
    python examples/subclass_script.py --fast   # a few seconds (what the tests run)

The subclass only adds a loss term: ``extra_losses`` returns it, and the module adds it to the total loss, logs it
(``train/hint``, ``val/hint``, ``test/hint``), averages it over each epoch and DDP ranks and checks it with
``check_finite``, exactly like its own terms; everything else (frozen teacher, accuracies, checkpoints, CLI) is
inherited. ``capture_features = True`` gives the hook the penultimate features of both networks (one forward
pass each). The projection head is trained because the optimiser gets every trainable parameter but the teacher's.
"""

import argparse
from typing import Any

import lightning as L
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import CMKDLoss
from cmkd_lightning.models import get_classifier
from cmkd_lightning.module import Features
from cmkd_lightning.schedules import WarmupCosine
from cmkd_lightning.utilities.runtime import quiet_lightning, set_cpu_threads
from datamodules import ComposedDigitsDataModule


class HintDistillationModule(DistillationModule):
    r"""CMKD on logits plus a FitNet hint on features: :math:`w\,\lVert r(f_s) - f_t \rVert_2^2 / D_t`.

    ``r`` is a linear projection from the student's penultimate features ``f_s`` (dimension ``D_s``) to the
    teacher's ``f_t`` (``D_t``), trained with the student. Logged metrics: the parent's, plus
    ``<stage>/hint`` (weighted).
    """

    capture_features = True

    def __init__(self, *args: Any, hint_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hint_weight = hint_weight
        self.proj = nn.Linear(get_classifier(self.student).in_features, get_classifier(self.teacher).in_features)

    def extra_losses(
        self, batch: Any, student_logits: Tensor, teacher_logits: Tensor | None, features: Features | None
    ) -> dict[str, Tensor]:
        if features is None or features.teacher is None:  # e.g. logits from a teacher cache: no features
            return {}
        return {"hint": self.hint_weight * F.mse_loss(self.proj(features.student), features.teacher)}


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
    teacher = DistillationModule("digits_teacher", num_classes=data.num_classes, lr_scheduler=WarmupCosine)
    L.Trainer(**kw).fit(teacher, data)
    module = HintDistillationModule(
        "digits_student",
        teacher=teacher.student,
        losses=[CMKDLoss()],
        num_classes=data.num_classes,
        lr_scheduler=WarmupCosine,
        hint_weight=0.5,
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
