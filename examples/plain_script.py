"""Use DistillationModule from a plain Lightning script: train a teacher, then distil it with CMKD.

python examples/plain_script.py            # 33 s on a shared 2-core CPU, 1 torch thread
python examples/plain_script.py --fast     # a few seconds (what the tests run)
"""

import argparse
import functools

import lightning as L
import torch

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import CMKDLoss, DKDLoss
from cmkd_lightning.schedules import WarmupCosine
from cmkd_lightning.utilities.runtime import quiet_lightning, set_cpu_threads
from datamodules import ComposedDigitsDataModule


def main(fast: bool = False, threads: int | None = None) -> dict[str, float]:
    set_cpu_threads(threads)  # 1 torch thread unless $CMKD_CPU_THREADS says otherwise: fastest for tiny CNNs
    L.seed_everything(0)
    data = ComposedDigitsDataModule(
        num_digits=2,
        train_size=512 if fast else 10000,
        val_size=256 if fast else 2000,
        test_size=256 if fast else 2000,
        batch_size=128,
    )
    trainer_kwargs = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        max_epochs=1 if fast else 5,
        enable_progress_bar=not fast,
    )

    # 1. A teacher is just a DistillationModule without a teacher: cross-entropy only.
    teacher = DistillationModule("digits_teacher", num_classes=data.num_classes, lr_scheduler=WarmupCosine)
    L.Trainer(**trainer_kwargs).fit(teacher, data)

    # 2. Distil it with "DKD + CMKD": losses are objects, weights are numbers: no code to write.
    student = DistillationModule(
        "digits_student",
        teacher=teacher.student,
        losses=[DKDLoss(beta=2.0, warmup_epochs=1), CMKDLoss(temperature=4.0, beta=4.0, gamma=1.0)],
        loss_weights=[1.0, 1.0],
        num_classes=data.num_classes,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),  # any torch optimiser
        lr_scheduler=WarmupCosine,  # a cosine over the trainer's max_epochs
    )
    trainer = L.Trainer(**trainer_kwargs)
    trainer.fit(student, data)
    results = trainer.test(student, data)[0]
    print({k: round(v, 4) for k, v in results.items()})
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $CMKD_CPU_THREADS or 1)")
    args = parser.parse_args()
    with quiet_lightning():  # drop Lightning's litlogger tip and known deprecation noise, for this run only
        main(args.fast, args.threads)
