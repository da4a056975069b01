"""Which recorded checkpoints a policy's online steps are matched to (the paper's open question 2).

*Uniform* matching pairs online step j with offline step k j (N = T / k online steps): the
same records for every trajectory. *Adaptive* matching takes N directly and chooses each
trajectory's own N + 1 records so that consecutive pairs cover equal shares of its
*progress*, so a small N spends its steps where the optimizer moved most:

- ``path``: distance travelled, the running sum of ||theta_{r+1} - theta_r|| over records;
- ``loss``: the drop of the running minimum of the recorded training loss.

Both are monotone along a trajectory by construction. Rounding rule: the first and last
records are always chosen; online step j (0 < j < N) takes the first record whose progress
reaches j / N of the total, then moves later if needed so the chosen records increase
strictly (and earlier if fewer than the remaining steps' records are left). A trajectory
with no progress at all falls back to uniform spacing over its records.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lohp.errors import LohpError

MATCHINGS = ("uniform", "adaptive")
MEASURES = ("path", "loss")


def path_progress(thetas: torch.Tensor) -> torch.Tensor:
    """Cumulative distance travelled ``[R]`` (0 at the first record) of records ``[R, d]``."""
    steps = (thetas[1:] - thetas[:-1]).double().norm(dim=-1)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])


def loss_progress(losses: Sequence[float]) -> torch.Tensor:
    """Drop of the running minimum of the training loss ``[R]`` (0 at the first record)."""
    x = torch.as_tensor(list(losses), dtype=torch.float64)
    return x[0] - torch.cummin(x, 0).values


def adaptive_indices(progress: torch.Tensor, n_steps: int) -> list[int]:
    """N + 1 strictly increasing record indices covering equal shares of ``progress`` (see the
    module doc for the rounding rule)."""
    r = len(progress)
    if n_steps < 1:
        raise LohpError(f"adaptive matching needs at least 1 online step (got {n_steps})")
    if r < n_steps + 1:
        raise LohpError(f"adaptive matching with N = {n_steps} online steps needs at least {n_steps + 1} recorded "
                        f"checkpoints per trajectory; this store records {r}: use fewer steps (--online-steps "
                        f"{r - 1} or less) or prepare with a smaller --record-every")
    total = float(progress[-1] - progress[0])
    if not total > 0:
        return [round(j * (r - 1) / n_steps) for j in range(n_steps + 1)]
    idx = [0]
    for j in range(1, n_steps):
        target = float(progress[0]) + total * j / n_steps
        first = int(torch.searchsorted(progress, torch.tensor(target, dtype=progress.dtype)))  # first >= target
        idx.append(min(max(first, idx[-1] + 1), r - 1 - (n_steps - j)))
    idx.append(r - 1)
    return idx


def uniform_indices(recorded: Sequence[int], total: int, k: int) -> list[int]:
    """Record positions of offline steps 0, k, 2k, ..., T (each must be recorded)."""
    pos = {s: i for i, s in enumerate(recorded)}
    missing = [s for s in range(0, total + 1, k) if s not in pos]
    if missing:
        raise LohpError(f"the store does not record step {missing[0]}, which k={k} needs; use a k that is a "
                        "multiple of the store's record_every")
    return [pos[s] for s in range(0, total + 1, k)]
