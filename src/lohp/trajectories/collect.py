"""Stage I, vectorised: train R runs of one optimizer at once and record checkpoints.

The batched engine (R runs as one ``[R, d]`` tensor, one vmapped pass per step) is
:mod:`lohp.optim.runs`, shared with generation, the L2O meta-trainer and the benchmarks;
this module bundles one Stage I batch of runs: train, evaluate every recorded checkpoint,
refuse a diverged optimizer. Its names stay importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lohp.errors import LohpError
from lohp.optim import Optimizer
from lohp.optim.runs import batched_runs, evaluate_checkpoints, recorded_steps, train_runs, vmappable
from lohp.tasks import Task

__all__ = ["RunResult", "batched_runs", "collect", "evaluate_checkpoints", "recorded_steps", "train_runs",
           "vmappable"]


@dataclass
class RunResult:
    thetas: torch.Tensor        # [R, n_records, d]
    steps: torch.Tensor         # [n_records] optimizer step of each record
    train_loss: torch.Tensor    # [R, n_records] full training-split loss
    eval_loss: torch.Tensor     # [R, n_records]
    eval_metric: torch.Tensor   # [R, n_records]
    train_seconds: float        # wall time of the training loop alone


def collect(tasks: Sequence[Task], optimizer: Optimizer, theta0: torch.Tensor, steps: int,
            batch_size: int = 32, record_every: int = 1, seed: int = 0,
            device: str | torch.device = "cpu",
            on_step: Callable[[int], None] | None = None) -> RunResult:
    """Train, then evaluate every recorded checkpoint: one Stage I batch of runs."""
    thetas, rec, seconds = train_runs(tasks, optimizer, theta0, steps, batch_size, record_every,
                                      seed, device, on_step)
    metrics = evaluate_checkpoints(tasks, thetas, device)
    if not torch.isfinite(thetas).all():
        bad = sorted({i for i in range(len(tasks)) if not torch.isfinite(thetas[i]).all()})
        raise LohpError(f"optimizer {optimizer.name} diverged (non-finite weights) on {len(bad)} "
                        f"run(s), e.g. task {tasks[bad[0]].name}; lower its learning rate")
    return RunResult(thetas.cpu(), rec, metrics["train_loss"], metrics["eval_loss"],
                     metrics["eval_metric"], seconds)
