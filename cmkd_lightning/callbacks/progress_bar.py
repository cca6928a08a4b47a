"""Lightning's TQDM progress bar with the epochs counted as the rest of cmkd counts them: from 1, out of the total."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override


class EpochProgressBar(TQDMProgressBar):
    r"""Lightning's TQDM bar whose training description reads ``Epoch 3/5`` in the third of five epochs.

    Lightning's own bar shows ``Epoch 2`` there (``trainer.current_epoch``, counted from 0); cmkd's
    :class:`~cmkd_lightning.callbacks.RunSummary` lines, callback records and figure files count from 1
    (``logit_correlation_epoch003.png`` is drawn after the third epoch), and so does this bar. Without an epoch
    limit (``max_epochs=-1``) it shows ``Epoch 3``. Everything else is Lightning's
    :class:`~lightning.pytorch.callbacks.TQDMProgressBar`.

    Args:
        args, kwargs: as :class:`~lightning.pytorch.callbacks.TQDMProgressBar` (``refresh_rate``,
            ``process_position``, ``leave``).

    Example:
        >>> trainer = Trainer(callbacks=[EpochProgressBar()], logger=False)
    """

    @override
    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        limit = trainer.max_epochs
        total = f"/{limit}" if limit is not None and limit > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")
