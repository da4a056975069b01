"""Stage II's settings: :class:`TrainConfig`, checked when built (one-line refusals)."""

from __future__ import annotations

from dataclasses import dataclass

from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.trajectories.matching import MATCHINGS, MEASURES


@dataclass
class TrainConfig(Config):
    what = "training"

    iterations: int = setting(1500, "Training iterations.")
    matching: str = setting("uniform", "Trajectory matching: uniform (online step j <-> offline step k j) or adaptive "
                                       "(each trajectory's records at equal shares of its progress; takes "
                                       "--online-steps).")
    online_steps: int | None = setting(None, "N, the online (policy) steps of adaptive matching (default T / k).")
    matching_measure: str = setting("path", "Progress measure of adaptive matching: path (distance travelled) or "
                                            "loss (drop of the running-minimum training loss).")
    batch_size: int = setting(16, "Trajectories (tasks) per iteration.")
    lr: float = setting(1e-3, "Learning rate of the backbone and forward head.")
    lr_backward: float = setting(1e-3, "Learning rate of the backward head (learned P_B only).")
    # log Z must follow large scales, hence its larger rate
    lr_flow: float = setting(0.1, "Learning rate of log Z (learned log Z only).")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    clip: float = setting(1.0, "Gradient-norm clip.")
    checkpoint_every: int = setting(100, "Checkpoint interval (iterations).")
    log_every: int = setting(25, "Log (diagnostics) interval (iterations).")
    eval_every: int = setting(250, "Held-out accuracy interval (iterations).")
    eval_tasks: int = setting(16, "Held-out tasks of that evaluation.")
    diagnostic_trajectories: int = setting(64, "Trajectories the logged diagnostics are computed on.")
    seed: int = setting(0, "Random seed (initialisation and batches).")
    optimizers: list[str] | None = setting(None, "Use only these optimizers' trajectories, e.g. sgd,adam.")
    time_limit: float | None = setting(None, "Stop after this many training seconds (evaluation off the clock; "
                                             "checkpointed).")
    in_memory_gb: float | None = setting(4.0, "Hold the stride-k trajectories in memory up to this size (GiB); a "
                                              "larger store is read from its memory-mapped shards batch by batch "
                                              "(0: always stream).")
    # learning curves against time compare methods of different iteration costs
    eval_every_seconds: float | None = setting(None, "Also evaluate held-out accuracy every this many training "
                                                     "seconds (a learning curve).")

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "checkpoint_every", "log_every", "eval_every", "eval_tasks",
                     "diagnostic_trajectories"):
            if getattr(self, name) <= 0:
                raise LohpError(f"{name} must be > 0 (got {getattr(self, name)})")
        for name in ("lr", "lr_backward", "lr_flow"):
            if not getattr(self, name) > 0:
                raise LohpError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.in_memory_gb is not None and not self.in_memory_gb >= 0:
            raise LohpError(f"in_memory_gb must be >= 0 (got {self.in_memory_gb})")
        if self.matching not in MATCHINGS:
            raise LohpError(f"unknown matching {self.matching!r}; choose one of {', '.join(MATCHINGS)}")
        if self.matching_measure not in MEASURES:
            raise LohpError(f"unknown matching measure {self.matching_measure!r}; choose one of {', '.join(MEASURES)}")
        if self.online_steps is not None and self.online_steps < 1:
            raise LohpError(f"online_steps must be >= 1 (got {self.online_steps})")
        for name in ("time_limit", "eval_every_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise LohpError(f"{name} must be > 0 seconds (got {value})")
