"""The training clock: seconds of training steps only (diagnostics, evaluation and
checkpoints are off it), which ``time_limit`` and ``eval_every_seconds`` measure, so
methods of different iteration costs compare on training time."""

from __future__ import annotations

import math


class TrainClock:
    """Training seconds so far (from ``seconds``, a resumed run's count) and when the next
    timed held-out evaluation falls due (every ``eval_every`` training seconds)."""

    def __init__(self, seconds: float = 0.0, time_limit: float | None = None, eval_every: float | None = None):
        self.seconds = seconds
        self.time_limit, self.eval_every = time_limit, eval_every
        self.next_eval = (math.floor(seconds / eval_every) + 1) * eval_every if eval_every else math.inf

    def add(self, seconds: float) -> None:
        """Count ``seconds`` of training."""
        self.seconds += seconds

    def out_of_time(self) -> bool:
        """This process's time limit is reached (the ranks agree on it: Distributed.any)."""
        return self.time_limit is not None and self.seconds >= self.time_limit

    def eval_due(self, out_of_time: bool) -> bool:
        """A timed evaluation is due: its time came, or the run stops early on a learning curve
        (whose last point is the end)."""
        return self.seconds >= self.next_eval or (out_of_time and self.eval_every is not None)

    def evaluated(self) -> None:
        """An evaluation was done now: the next timed one is the next multiple of ``eval_every``."""
        while self.next_eval <= self.seconds:
            self.next_eval += self.eval_every
