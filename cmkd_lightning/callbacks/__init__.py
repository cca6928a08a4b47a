"""Lightning callbacks that produce the paper's evidence, one per file.

- :class:`CorrelationMonitor`: teacher–student Pearson / Spearman / top-1 agreement / KL (Fig. 3).
- :class:`LogitCorrelationHeatmap`: gap between the class-correlation matrices of the logits (Fig. 9).
- :class:`EmbeddingProjection`: t-SNE of the student's penultimate features (Fig. 10).
- :class:`CorruptionRobustness`: CIFAR-100-C accuracy and drop from clean (Table V).
- :class:`TrainingCost`: time per epoch, throughput, peak memory, parameter counts (Fig. 7).
- :class:`CheckpointGuard`: a writable checkpoint folder, a file after every save, no non-finite weights saved.
- :class:`PublishCheckpoint`: a stable link to the checkpoint of the run that finished last.
- :class:`Preemption`: SIGTERM / SIGUSR1 save a resumable checkpoint and end the run with exit code 128 + signal.
- :class:`RunSummary`: what a run produced, printed when fit / validate / test ends (``cmkd`` adds it).
- :class:`EpochProgressBar`, :class:`EpochRichProgressBar`: Lightning's TQDM and rich bars counting epochs from 1
  ("Epoch 3/5"), as the others do.

The arithmetic lives in :mod:`cmkd_lightning.metrics` (torchmetrics metrics); the callbacks decide when to run, what
to plot and what to log, and keep their history across a resume. The two figure callbacks need the ``figures`` extra
(matplotlib, scikit-learn): they are imported on first use, so
the others work without it, and a missing extra is named in the error.
"""

import importlib
from typing import TYPE_CHECKING, Any

from cmkd_lightning.callbacks.checkpoint_guard import CheckpointGuard, CheckpointWriteError, NonFiniteCheckpointError
from cmkd_lightning.callbacks.checkpoint_link import PublishCheckpoint
from cmkd_lightning.callbacks.correlation_monitor import CorrelationMonitor, correlation_sums
from cmkd_lightning.callbacks.corruption_robustness import CorruptionRobustness
from cmkd_lightning.callbacks.preemption import Preemption
from cmkd_lightning.callbacks.progress_bar import EpochProgressBar, EpochRichProgressBar
from cmkd_lightning.callbacks.run_summary import RunSummary
from cmkd_lightning.callbacks.training_cost import TrainingCost
from cmkd_lightning.metrics.class_gap import class_correlation, correlation_gap
from cmkd_lightning.utilities.optional import require

if TYPE_CHECKING:
    from cmkd_lightning.callbacks.embedding_projection import EmbeddingProjection
    from cmkd_lightning.callbacks.logit_heatmap import LogitCorrelationHeatmap

_NEEDS_MATPLOTLIB = {
    "EmbeddingProjection": "embedding_projection",
    "LogitCorrelationHeatmap": "logit_heatmap",
}


def __getattr__(name: str) -> Any:
    """Import the figure callbacks on first access (PEP 562), naming the ``figures`` extra when it is missing."""
    if name not in _NEEDS_MATPLOTLIB:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require("matplotlib", extra="figures", purpose=f"cmkd_lightning.callbacks.{name}")
    return getattr(importlib.import_module(f"{__name__}.{_NEEDS_MATPLOTLIB[name]}"), name)


__all__ = [
    "CheckpointGuard",
    "CheckpointWriteError",
    "NonFiniteCheckpointError",
    "PublishCheckpoint",
    "Preemption",
    "CorrelationMonitor",
    "CorruptionRobustness",
    "EmbeddingProjection",
    "EpochProgressBar",
    "EpochRichProgressBar",
    "LogitCorrelationHeatmap",
    "RunSummary",
    "TrainingCost",
    "class_correlation",
    "correlation_gap",
    "correlation_sums",
]
