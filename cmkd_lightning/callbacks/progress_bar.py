"""Lightning's progress bars (TQDM and rich) with the epochs counted as the rest of cmkd counts them: from 1, of N."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from torch import Tensor
from typing_extensions import override

#: The key the bars show the latest training loss under (the name the module logs it as on logging steps).
LOSS_KEY = "train/loss_step"


class _LiveLoss:
    """Keeps the last training step's loss (a device tensor, no read) and adds it to the bar's metrics.

    :class:`~cmkd_lightning.DistillationModule` sends ``train/loss_step`` through ``self.log`` only on the
    logger's steps; the bar reads the step's ``outputs["loss"]`` instead, so it still shows every step's loss.
    The value is read from the device only when the bar redraws (every ``refresh_rate`` steps), as Lightning's
    bars read logged values.
    """

    _live_loss: Tensor | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Keep the step's loss, then Lightning's bar update (which redraws with :meth:`get_metrics`)."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._live_loss = loss if isinstance(loss, Tensor) and loss.numel() == 1 else None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[misc]

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Lightning's bar metrics, with ``train/loss_step`` the last training step's loss."""
        metrics = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        if self._live_loss is not None:
            metrics[LOSS_KEY] = float(self._live_loss)  # the redraw's one read
        return metrics


class EpochProgressBar(_LiveLoss, TQDMProgressBar):
    r"""Lightning's TQDM bar whose training description reads ``Epoch 3/5`` in the third of five epochs.

    Lightning's own bar shows ``Epoch 2`` there (``trainer.current_epoch``, counted from 0); cmkd's
    :class:`~cmkd_lightning.callbacks.RunSummary` lines, callback records and figure files count from 1
    (``logit_correlation_epoch003.png`` is drawn after the third epoch), and so does this bar. Without an epoch
    limit (``max_epochs=-1``) it shows ``Epoch 3``. The description is set before the bar is redrawn, so no
    frame shows Lightning's count or the previous epoch's. It shows every training step's loss
    (``train/loss_step``, from the step's ``outputs``). Everything else is Lightning's
    :class:`~lightning.pytorch.callbacks.TQDMProgressBar`.

    Args:
        refresh_rate: redraw every this many batches (0: no bar).
        process_position: the bar's line, for several bars at once.
        leave: keep each epoch's bar on its own line.

    Example:
        >>> trainer = Trainer(callbacks=[EpochProgressBar()], logger=False)
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.leave = leave

    @staticmethod
    def description(trainer: Trainer) -> str:
        """``Epoch k/N`` in the k-th of N epochs (counted from 1), ``Epoch k`` without an epoch limit."""
        limit = trainer.max_epochs
        total = f"/{limit}" if limit is not None and limit > 0 else ""
        return f"Epoch {trainer.current_epoch + 1}{total}"

    @override
    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        # Lightning's own hook draws "Epoch <current_epoch>" first; here the bar is drawn once, already right.
        if self.leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.set_description(self.description(trainer), refresh=False)
        bar.initial = 0
        bar.reset(total=convert_inf(self.total_train_batches))


class EpochRichProgressBar(_LiveLoss, RichProgressBar):
    r"""Lightning's rich bar whose training description reads ``Epoch 3/5`` in the third of five epochs.

    Lightning's own rich bar shows ``Epoch 2/4`` there (the epoch counted from 0, out of ``max_epochs - 1``); this
    one counts as :class:`EpochProgressBar`, :class:`~cmkd_lightning.callbacks.RunSummary` and the figure files do,
    and shows every training step's loss as :class:`EpochProgressBar` does. Everything else is Lightning's
    :class:`~lightning.pytorch.callbacks.RichProgressBar` (needs ``rich``).

    Args:
        args, kwargs: as :class:`~lightning.pytorch.callbacks.RichProgressBar` (``refresh_rate``, ``leave``,
            ``theme``, ``console_kwargs``).

    Example:
        >>> trainer = Trainer(callbacks=[EpochRichProgressBar(leave=False)], logger=False)
    """

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.progress is None or self.train_progress_bar_id is None:
            return
        description = EpochProgressBar.description(trainer)
        # as Lightning pads it: the same width as "Validation", so the bar does not jump between the two
        description = f"{description:{len(self.validation_description)}}"
        self.progress.update(self.train_progress_bar_id, description=description)
        self.refresh()
