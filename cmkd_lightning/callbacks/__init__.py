"""Lightning callbacks that produce the paper's evidence, one per file.

- :class:`CorrelationMonitor`: teacher–student Pearson / Spearman / top-1 agreement / KL (Fig. 3).
- :class:`LogitCorrelationHeatmap`: gap between the class-correlation matrices of the logits (Fig. 9).
- :class:`EmbeddingProjection`: t-SNE of the student's penultimate features (Fig. 10).
- :class:`CorruptionRobustness`: CIFAR-100-C accuracy and drop from clean (Table V).
- :class:`TrainingCost`: time per epoch, throughput, peak memory, parameter counts (Fig. 7).
- :class:`CheckpointGuard`: a writable checkpoint folder, a file after every save, no non-finite weights saved.
- :class:`PublishCheckpoint`: a stable link to the checkpoint of the run that finished last.
- :class:`RunSummary`: what a run produced, printed when fit / validate / test ends (``cmkd`` adds it).
"""

from cmkd_lightning.callbacks.checkpoint_guard import CheckpointGuard, CheckpointWriteError, NonFiniteCheckpointError
from cmkd_lightning.callbacks.checkpoint_link import PublishCheckpoint
from cmkd_lightning.callbacks.correlation_monitor import CorrelationMonitor, correlation_sums
from cmkd_lightning.callbacks.corruption_robustness import CorruptionRobustness
from cmkd_lightning.callbacks.embedding_projection import EmbeddingProjection
from cmkd_lightning.callbacks.logit_heatmap import LogitCorrelationHeatmap, class_correlation, correlation_gap
from cmkd_lightning.callbacks.run_summary import RunSummary
from cmkd_lightning.callbacks.training_cost import TrainingCost

__all__ = [
    "CheckpointGuard",
    "CheckpointWriteError",
    "NonFiniteCheckpointError",
    "PublishCheckpoint",
    "CorrelationMonitor",
    "CorruptionRobustness",
    "EmbeddingProjection",
    "LogitCorrelationHeatmap",
    "RunSummary",
    "TrainingCost",
    "class_correlation",
    "correlation_gap",
    "correlation_sums",
]
