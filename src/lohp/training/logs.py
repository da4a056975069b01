"""What a run records: ``log.csv`` (:class:`TrainLog`, one row per logged iteration; rank 0
writes it), the diagnostics and held-out accuracy in its rows, and ``curves.png``; with
``tensorboard=DIR`` the same numbers as TensorBoard scalars (:class:`TensorBoardLog`)."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lohp.errors import LohpError
from lohp.extras import require_module
from lohp.plotting import accuracy_limits, pyplot, save_figure
from lohp.policy import LohpPolicy
from lohp.training.data import OfflineData

LOG = "log.csv"
CURVES = "curves.png"
# the log's columns that are not a metric (kept out of a result read back from the log)
_CLOCK_COLUMNS = ("iteration", "seconds", "train_seconds", "iterations_per_second")


def log_rows(out: Path, iteration: int) -> list[dict[str, str]]:
    """The rows of ``out``'s log up to ``iteration`` (later rows are past the last
    checkpoint: a resumed run redoes them)."""
    path = out / LOG
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["iteration"]) <= iteration]


class TrainLog:
    """The log of one ``train`` call, opened on the rows kept from a previous run (its
    columns too) and rewritten from them. ``seconds`` in the log is wall time across runs;
    ``train_seconds`` is the training clock (see :class:`lohp.training.clock.TrainClock`);
    ``iterations_per_second`` the iterations per training second since the previous row.
    Processes other than rank 0 (``write=False``) write to ``os.devnull``. ``tensorboard``:
    a folder that receives every row's numbers as TensorBoard scalars too."""

    def __init__(self, out: Path, iteration: int, diagnostics: Sequence[str], method: str, write: bool = True,
                 tensorboard: str | Path | None = None):
        self.method = method
        self.rows = log_rows(out, iteration)  # rows past the last checkpoint are dropped: they will be redone
        self.fieldnames = ["iteration", "seconds", "train_seconds", "loss", *diagnostics,
                           "logpf_real", "cos_real", "dist", "dist_final", "heldout_accuracy", "iterations_per_second"]
        if self.rows:  # a resumed log keeps its own columns too
            self.fieldnames += [k for k in self.rows[0] if k not in self.fieldnames]
        rows = self.rows
        self.elapsed0 = float(rows[-1]["seconds"]) if rows else 0.0
        self.train0 = float(rows[-1].get("train_seconds") or rows[-1]["seconds"]) if rows else 0.0
        self.start = time.perf_counter()
        # the last held-out accuracy measured (reported at the end even when the last
        # iteration did not evaluate), from the log when resuming
        self.last_accuracy = next((float(r["heldout_accuracy"]) for r in reversed(rows)
                                   if r.get("heldout_accuracy") not in (None, "")), None)
        # the training speed of each row: iterations per training second since the previous row
        self._previous = (iteration, self.train0)  # where the run resumes, on the training clock
        self._tensorboard = TensorBoardLog(tensorboard, iteration, rows) if (tensorboard is not None and write) \
            else None
        self._fh = open(out / LOG, "w", newline="") if write else open(os.devnull, "w")
        self._writer = csv.DictWriter(self._fh, fieldnames=self.fieldnames, extrasaction="raise")
        self._writer.writeheader()
        self._writer.writerows(rows)
        self._fh.flush()

    def seconds(self) -> float:
        """Wall seconds of the run so far, earlier runs included."""
        return self.elapsed0 + time.perf_counter() - self.start

    def write(self, iteration: int, train_seconds: float, values: dict[str, float]) -> None:
        last_iteration, last_seconds = self._previous
        rate = {"iterations_per_second": (iteration - last_iteration) / (train_seconds - last_seconds)} \
            if train_seconds > last_seconds and iteration > last_iteration else {}
        self._previous = (iteration, train_seconds)
        row = {"iteration": iteration, "seconds": self.seconds(), "train_seconds": train_seconds, **values, **rate}
        try:
            self._writer.writerow(row)
        except ValueError:
            extra = sorted(set(values) - set(self.fieldnames))
            raise LohpError(f"the {self.method} loss returned diagnostics "
                            f"{', '.join(extra)} that its class does not declare in `diagnostics`; "
                            "add them there") from None
        self._fh.flush()
        if self._tensorboard is not None:
            self._tensorboard.write(row)
        if "heldout_accuracy" in values:
            self.last_accuracy = values["heldout_accuracy"]

    def result(self, iteration: int, train_seconds: float, last: dict[str, float]) -> dict[str, Any]:
        """What ``train`` returns: the last iteration's metrics (with the last held-out
        accuracy measured), or, when nothing was left to train, the last row of the log."""
        if not last and self.rows:  # nothing left to train (a finished run re-opened): report its last log row
            last = {k: float(v) for k, v in self.rows[-1].items()
                    if k not in _CLOCK_COLUMNS and v not in ("", None)}
            return {"iteration": iteration, "seconds": self.elapsed0, "train_seconds": self.train0, **last}
        if self.last_accuracy is not None and "heldout_accuracy" not in last:
            last["heldout_accuracy"] = self.last_accuracy
        return {"iteration": iteration, "seconds": self.seconds(), "train_seconds": train_seconds, **last}

    def close(self) -> None:
        self._fh.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> "TrainLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summary_writer() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or one line naming the extra to install."""
    require_module("tensorboard", "lohp train --tensorboard")
    return require_module("torch.utils.tensorboard", "lohp train --tensorboard").SummaryWriter


class TensorBoardLog:
    """The log's rows as TensorBoard scalars in ``directory``, one tag per column of
    ``log.csv`` (loss, each diagnostic, ``heldout_accuracy``, ``iterations_per_second``,
    the clocks) at step = iteration: the same numbers as the log. Written through
    ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard`` extra), flushed with
    every row so ``tensorboard --logdir`` shows a run live.

    A resumed run mirrors its log: the event files start over at step 0 (TensorBoard hides
    the earlier ones' steps from there, its "purge"), then the rows kept from the log are
    written again, then the new ones."""

    def __init__(self, directory: str | Path, iteration: int = 0, rows: Sequence[dict[str, str]] = ()):
        writer_cls = summary_writer()
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise LohpError(f"--tensorboard {self.directory} is a file; give a folder for the event files")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LohpError(f"cannot write to --tensorboard folder {self.directory} ({exc.strerror or exc}); "
                            "choose a writable folder") from None
        self._writer = writer_cls(log_dir=str(self.directory), purge_step=0)
        for r in rows:  # the rows kept from the log (a resumed run)
            self.write(r)

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["iteration"])
        for key, value in row.items():
            if key == "iteration" or value in (None, ""):
                continue
            number = float(value)
            if np.isfinite(number):
                self._writer.add_scalar(key, number, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


@torch.no_grad()
def diagnostics(policy: LohpPolicy, data: OfflineData, n: int = 64) -> dict[str, float]:
    """What tells whether the policy learned, beyond its loss (fixed trajectories 0..n-1).

    logpf_real: mean log P_F of a real stride-k step, per coordinate (nats);
    cos_real: cosine between the policy's mean step and the real step at real states;
    dist: RMS distance of the mean rollout to the matched checkpoints, relative to the
    RMS size of the real steps; dist_final: ||s_N - theta_T|| / ||theta_T - theta_0||.
    """
    n = min(n, len(data))
    th, cond = data.rows(torch.arange(n)), data.cond[:n]
    b, n1, d = th.shape
    nn_ = n1 - 1
    states, nxt = th[:, :-1].reshape(-1, d), th[:, 1:].reshape(-1, d)
    jj = torch.arange(nn_, device=th.device).repeat(b)
    mu = policy(states, jj, cond.repeat_interleave(nn_, 0))
    real = nxt - states
    logpf = policy.log_pf(states, nxt, jj, mu).mean().item() / d
    cos = torch.nn.functional.cosine_similarity(mu, real, dim=-1).mean().item()
    roll = policy.rollout(th[:, 0], cond, return_states=True)
    err = (roll - th).norm(dim=-1)  # [b, N+1]
    step_norm = real.norm(dim=-1).mean().clamp_min(1e-12)
    total = (th[:, -1] - th[:, 0]).norm(dim=-1).clamp_min(1e-12)
    return {"logpf_real": logpf, "cos_real": cos, "dist": (err[:, 1:].mean() / step_norm).item(),
            "dist_final": (err[:, -1] / total).mean().item()}


@torch.no_grad()
def heldout_accuracy(policy: LohpPolicy, family, n_tasks: int, init: str, init_sigma: float,
                     device: str = "cpu", init_scale: float = 1.0, seed: int = 0) -> float:
    tasks = family.heldout_tasks(n_tasks)
    s0 = torch.stack([t.init_theta(10_000 + seed * 1000 + i, init, init_sigma) for i, t in enumerate(tasks)])
    cond = torch.stack([t.condition(policy.condition_points) for t in tasks])
    out = policy.rollout(s0.to(device) * init_scale, cond.to(device)).cpu()
    return float(np.mean([t.evaluate(th)[t.metric_name] for t, th in zip(tasks, out)]))


def plot_curves(out: Path, rows: list[dict[str, str]], title: str) -> Path | None:
    """``curves.png`` in ``out``: :func:`curves_figure` of the log's rows."""
    fig = curves_figure(rows, title)
    if fig is None:
        return None
    path = out / CURVES
    save_figure(fig, path, dpi=100)
    return path


def curves_figure(rows: list[dict[str, str]], title: str, columns: int = 5) -> Any:
    """Loss, diagnostics and held-out accuracy against iteration, in ``columns`` panels a
    row (None without rows); the accuracy axis spans at least 0.05 (a small change does not
    fill it)."""
    if not rows:
        return None

    plt = pyplot()

    keys = [("loss", "loss"), ("logpf_real", "log P_F of real steps / coord"), ("cos_real", "cos(generated, real step)"),
            ("dist", "rollout distance / step"), ("heldout_accuracy", "held-out accuracy")]
    n_rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(4 * columns, 3 * n_rows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    for ax, (key, label) in zip(axes, keys):
        pts = [(int(r["iteration"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if pts:
            ax.plot(*zip(*pts), marker="." if key == "heldout_accuracy" else None)
        ax.set_title(label + (f" ({len(pts)} evaluations)" if key == "heldout_accuracy" else ""), fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        if key == "loss" and pts and min(p[1] for p in pts) > 0:
            ax.set_yscale("log")
        if key == "heldout_accuracy" and pts:
            ax.set_ylim(*accuracy_limits([p[1] for p in pts]))
    fig.suptitle(title, fontsize=10)
    return fig
