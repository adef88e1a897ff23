"""The trainer: a plain loop over any objective. ``train(TrainConfig(...))``."""
from ..callbacks import Callback, TrainState
from .config import TrainConfig
from .forward import Forward, PolicyLogps
from .loop import Run, RunResult, TrainingError, compute_loss, evaluate, save_final, train, train_step
from .sources import BatchSource, OfflineSource, SourceBatch

__all__ = ["BatchSource", "Callback", "Forward", "OfflineSource", "PolicyLogps", "Run", "RunResult",
           "SourceBatch", "TrainConfig", "TrainState", "TrainingError", "compute_loss", "evaluate", "save_final",
           "train", "train_step"]
