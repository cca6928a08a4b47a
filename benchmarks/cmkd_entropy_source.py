"""How CMKD's two entropy inputs (Eq. 14, left open by the paper) split the batches of a real teacher.

For each composed-digits teacher given, on batches of its validation split: the spread of the "loss" entropies
(softmax of the z-scored logits at T) relative to log C, and the fraction of samples whose Eq. 16 branch (entropy
at or above the batch mean) differs between ``entropy_source="loss"`` and ``"teacher"``.

    python benchmarks/cmkd_entropy_source.py --teacher 2=runs/h15/teacher-digits_teacher-2d-30000-15ep.pt \
        --teacher 3=runs/h15/teacher-digits_teacher-3d-30000-15ep.pt

The teachers are ``digits_teacher`` state_dicts as ``cmkd-compare`` writes them (``--teacher-checkpoint``).
"""

from __future__ import annotations

import argparse
import math

import torch

from cmkd_lightning.functional.cmkd import teacher_stats
from cmkd_lightning.models import create_model
from datamodules import ComposedDigitsDataModule


def measure(num_digits: int, path: str, temperature: float, batch_size: int) -> dict[str, float]:
    data = ComposedDigitsDataModule(num_digits=num_digits, batch_size=batch_size)
    data.setup("fit")
    teacher = create_model("digits_teacher", num_classes=data.num_classes, num_digits=num_digits)
    teacher.load_state_dict(torch.load(path, weights_only=True))
    teacher.eval()
    log_c = math.log(data.num_classes)
    differ, total, spread = 0, 0, []
    with torch.no_grad():
        for x, _ in data.val_dataloader():
            if x.shape[0] < batch_size:
                continue
            z = teacher(x).double()
            loss_side = teacher_stats(z, temperature=temperature, entropy_source="loss").entropy
            raw = teacher_stats(z, temperature=temperature, entropy_source="teacher").entropy
            differ += int(((loss_side >= loss_side.mean()) != (raw >= raw.mean())).sum())
            total += z.shape[0]
            spread.append(float((loss_side.max() - loss_side.min()) / log_c))
    return {
        "classes": data.num_classes,
        "T": temperature,
        "batch": batch_size,
        "samples": total,
        "branch differs %": 100 * differ / total,
        "loss-entropy spread / log C % (mean over batches)": 100 * sum(spread) / len(spread),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", action="append", required=True, help="NUM_DIGITS=PATH of a digits_teacher")
    parser.add_argument("--temperature", type=float, action="append")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| classes | T | batch | samples | branch differs % | loss-entropy spread / log C % |")
    print("|---|---|---|---|---|---|")
    for spec in args.teacher:
        digits, _, path = spec.partition("=")
        for t in args.temperature or [4.0, 1.0]:
            row = measure(int(digits), path, t, args.batch_size)
            print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
