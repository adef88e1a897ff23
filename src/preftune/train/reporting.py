"""Mirror metrics to TensorBoard or Weights & Biases (optional extras, imported only when asked)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..callbacks import Callback, TrainState


class TensorBoard(Callback):
    def __init__(self, out: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--report-to tensorboard needs the tensorboard package: "
                              "pip install 'preftune[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def on_step_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, state.step)

    def on_train_end(self, state: TrainState) -> None:
        self.writer.close()


class WandB(Callback):
    """Logs to W&B; set WANDB_MODE=offline (the default here when no API key is set) to log locally."""

    def __init__(self, out: Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ConfigError("--report-to wandb needs the wandb package: pip install 'preftune[wandb]'") from None
        if not os.environ.get("WANDB_API_KEY"):
            os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(dir=str(out), config=config, project=os.environ.get("WANDB_PROJECT", "preftune"))

    def on_step_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        self.run.log({k: v for k, v in metrics.items() if k != "step"}, step=state.step)

    def on_train_end(self, state: TrainState) -> None:
        self.run.finish()


def make_reporters(names: list[str], out: Path, config: dict[str, Any] | None = None) -> list[Callback]:
    cbs: list[Callback] = []
    for n in names:
        cbs.append(TensorBoard(out) if n == "tensorboard" else WandB(out, config or {}))
    return cbs
