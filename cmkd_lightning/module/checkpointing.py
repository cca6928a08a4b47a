"""Checkpoint behaviour of :class:`~cmkd_lightning.DistillationModule`: what is saved, restored and asked for."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from cmkd_lightning.module import records as _records


class CheckpointHooks:
    """Best Top-1 and the ``nn.Module`` arguments in the checkpoint; the teacher only when asked to be saved."""

    best_val_top1: float
    _modules_to_pass: dict[str, str]
    hparams: Any
    teacher: Any

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cmkd_best_val_top1"] = self.best_val_top1
        if self._modules_to_pass:
            checkpoint[_records.MODULES_KEY] = dict(self._modules_to_pass)
        if not self.hparams.get("save_teacher_in_checkpoint", False):
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("teacher.")]:
                del state[key]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_top1 = float(checkpoint.get("cmkd_best_val_top1", 0.0))
        state = checkpoint.get("state_dict", {})
        if self.teacher is not None and not any(k.startswith("teacher.") for k in state):
            # The teacher was not saved: keep the one this module was built with, so strict loading succeeds.
            state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, which names the ``nn.Module`` arguments to pass again.

        Passing ``losses`` without ``loss_weights`` gives the new losses their recommended weights.
        """
        if "losses" in kwargs and "loss_weights" not in kwargs:
            kwargs["loss_weights"] = None
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except (TypeError, ValueError) as err:
            hint = _records.reload_hint(cls, checkpoint_path, kwargs)
            if hint is None:
                raise
            raise type(err)(f"{hint} ({err})") from err
