"""Meta-training and meta-testing of the coordinate-wise LSTM optimizer.

Meta-training (L2O-DM): each *episode* samples ``meta_batch`` source tasks of the family
and a fresh ``theta_0`` per task (the family head's standard init), then unrolls the
learned optimizer for ``horizon`` steps on minibatches of each task's training split, all
tasks at once (``[R, d]`` weights, vmapped forward). The unroll is cut into segments of
``truncation`` steps (truncated back-propagation through time): after each segment the
meta-loss, the optimizee's minibatch loss summed (averaged) over the segment's new
weights ``theta_{t+1}``, is back-propagated into the LSTM, one Adam step is taken, and
the weights and LSTM states are detached and carried into the next segment. The
optimizee gradients fed to the LSTM are constants (the paper's first-order choice).

Optional flatness regularizers (:mod:`lohp.l2o.regularizers`) act on the optimizee's
loss during the unroll and/or on the meta-objective, each with its own weight.

A non-finite meta-loss or meta-gradient stops training with a :class:`LohpError`
before the bad update is applied; the last good weights are saved (if an output folder
was given) and kept in the optimizer object.

Meta-testing runs the learned optimizer like any other optimizer
(:func:`lohp.optim.runs.train_runs`) on held-out tasks, for the trained
horizon or longer ones (:func:`run_optimizee`, :func:`meta_test`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lohp.config import Config
from lohp.errors import LohpError
from lohp.flatness import local_entropy_mean, task_loss_fn
from lohp.io import ensure_writable_dir
from lohp.l2o.lstm import L2OConfig, LearnedOptimizer
from lohp.l2o.regularizers import Regularizer, make_regularizer
from lohp.optim.runs import evaluate_checkpoints, train_runs
from lohp.tasks import Task, TaskBatch, make_family


def check_unroll(horizon: int, truncation: int) -> None:
    """Unroll length (horizon) and truncation must be positive and fit together."""
    for name, v in (("horizon (unroll length)", horizon), ("truncation", truncation)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise LohpError(f"{name} must be a positive whole number of steps (got {v!r})")
    if truncation > horizon:
        raise LohpError(f"truncation {truncation} is longer than the horizon {horizon}; "
                        f"use a truncation <= {horizon}")
    if horizon % truncation:
        divisors = [k for k in range(1, horizon + 1) if horizon % k == 0]
        raise LohpError(f"truncation {truncation} does not divide the horizon {horizon}; "
                        f"choose one of {', '.join(map(str, divisors))}")


@dataclass
class MetaConfig(Config):
    """Everything meta-training needs; JSON-able (stored with the checkpoint)."""

    what = "meta-training"

    family: str = "digits"
    family_config: dict[str, Any] = field(default_factory=lambda: {"n_way": 5, "head": "linear"})
    horizon: int = 32          # optimizee steps per episode (the unroll length)
    truncation: int = 8        # steps per truncated-BPTT segment (one meta-update each)
    iterations: int = 400      # meta-updates (segments)
    meta_batch: int = 8        # source tasks per episode
    batch_size: int = 32       # optimizee minibatch
    meta_lr: float = 3e-3      # Adam on the LSTM weights
    clip: float = 1.0          # meta-gradient norm clip (0 = off)
    init: str = "standard"     # optimizee theta_0 scheme
    seed: int = 0
    optimizee_regularizer: dict[str, Any] | None = None
    meta_regularizer: dict[str, Any] | None = None
    checkpoint_every: int = 50  # meta-updates between checkpoints (with an output folder)

    def __post_init__(self) -> None:
        check_unroll(self.horizon, self.truncation)
        for key in ("iterations", "meta_batch", "batch_size", "checkpoint_every"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise LohpError(f"{key} must be a positive whole number (got {v!r})")
        if not (math.isfinite(self.meta_lr) and self.meta_lr > 0):
            raise LohpError(f"meta_lr must be > 0 (got {self.meta_lr})")
        if not (math.isfinite(self.clip) and self.clip >= 0):
            raise LohpError(f"clip must be >= 0 (got {self.clip})")
        # Normalise regularizers (validates names and settings).
        for key in ("optimizee_regularizer", "meta_regularizer"):
            reg = make_regularizer(getattr(self, key))
            setattr(self, key, None if reg is None else reg.to_dict())

    @property
    def segments_per_episode(self) -> int:
        return self.horizon // self.truncation



@dataclass
class MetaResult:
    optimizer: LearnedOptimizer
    history: list[dict[str, float]]
    seconds: float
    iterations: int


class _Episode:
    """The tasks, data and minibatch schedule of one unrolled optimizee training."""

    def __init__(self, tasks: Sequence[Task], theta0: torch.Tensor, horizon: int, batch_size: int,
                 gen: torch.Generator):
        batch = TaskBatch.stack(tasks)
        self.x, self.y = batch.x_train, batch.y_train
        r = len(tasks)
        self.rows = torch.arange(r)[:, None]
        # One minibatch per step t = 0..horizon (b_t: gradient at theta_t and loss of theta_t).
        u = torch.rand(horizon + 1, r, batch_size, generator=gen)
        self.idx = (u * batch.n_train[None, :, None]).long()
        self.f = tasks[0].layout.batched(tasks[0].model())
        self.loss = tasks[0].loss_fn
        self.full_loss = task_loss_fn(tasks, "train")
        self.theta0 = theta0

    def minibatch_loss(self, theta: torch.Tensor, t: int) -> torch.Tensor:
        i = self.idx[t]
        return self.loss(self.f(theta, self.x[self.rows, i]), self.y[self.rows, i]).mean(-1)  # [R]


class MetaTrainer:
    """Meta-trains a :class:`LearnedOptimizer` (see the module docstring)."""

    def __init__(self, config: MetaConfig | None = None, optimizer: LearnedOptimizer | None = None,
                 l2o_config: L2OConfig | None = None):
        self.config = config or MetaConfig()
        self.optimizer = optimizer or LearnedOptimizer(l2o_config, seed=self.config.seed)
        self.family = make_family(self.config.family, **self.config.family_config)
        self.opt_reg = make_regularizer(self.config.optimizee_regularizer)
        self.meta_reg = make_regularizer(self.config.meta_regularizer)
        self.params = list(self.optimizer.parameters())
        self.meta_opt = torch.optim.Adam(self.params, lr=self.config.meta_lr)
        self.gen = torch.Generator().manual_seed(int(self.config.seed))
        self.rng = np.random.default_rng([int(self.config.seed), 7])
        self.history: list[dict[str, float]] = []
        self.iteration = 0

    # ----------------------------------------------------------------- episodes
    def new_episode(self) -> _Episode:
        c = self.config
        seeds = self.rng.integers(0, 2**31 - 1, size=2 * c.meta_batch)
        tasks = [self.family.sample(int(s), "source") for s in seeds[:c.meta_batch]]
        theta0 = torch.stack([t.init_theta(int(s), c.init) for t, s in zip(tasks, seeds[c.meta_batch:])])
        return _Episode(tasks, theta0, c.horizon, c.batch_size, self.gen)

    def segment(self, ep: _Episode, start: int, theta: torch.Tensor, state: dict[str, torch.Tensor],
                weights: dict[str, torch.Tensor] | None = None, regularize: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Unroll ``truncation`` steps from step ``start``.

        Returns (data meta-loss, optimizee penalty, final weights, final LSTM state); the
        data meta-loss is the mean minibatch loss of theta_{start+1..start+K}.
        """
        k = self.config.truncation
        theta = theta.detach().requires_grad_(True)
        loss = ep.minibatch_loss(theta, start)
        terms, penalties = [], []
        reg = self.opt_reg if regularize else None
        for j in range(k):
            (g,) = torch.autograd.grad(loss.sum(), theta, retain_graph=True)
            upd, state = self.optimizer.update(g.detach(), state, weights)
            theta = theta + upd
            loss = ep.minibatch_loss(theta, start + j + 1)
            terms.append(loss)
            if reg is not None and reg.weight > 0 and (start + j + 1) % reg.every == 0:
                penalties.append(reg.optimizee_penalty(ep.full_loss, theta, self.gen))
        data = torch.stack(terms).mean()
        penalty = torch.stack(penalties).mean() if penalties else data.new_zeros(())
        return data, penalty, theta, state

    # ----------------------------------------------------------------- meta-level entropy
    def _meta_entropy_grads(self, reg: Regularizer, ep: _Episode, start: int, theta: torch.Tensor,
                            state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``gamma (phi - mu_phi)`` per LSTM tensor (Entropy-SGD on the optimizer's weights)."""

        names = [n for n, _ in self.optimizer.net.named_parameters()]
        shapes = [p.shape for p in self.params]
        sizes = [p.numel() for p in self.params]
        phi = torch.cat([p.detach().reshape(-1) for p in self.params])
        state0 = {k: v.detach() for k, v in state.items()}

        def grad_fn(flat: torch.Tensor) -> torch.Tensor:
            leaves = [t.reshape(s).detach().requires_grad_(True) for t, s in zip(flat.split(sizes), shapes)]
            with torch.enable_grad():
                data, _, _, _ = self.segment(ep, start, theta, dict(state0), dict(zip(names, leaves)),
                                             regularize=False)
                gs = torch.autograd.grad(data, leaves)
            return torch.cat([g.reshape(-1) for g in gs])

        mu = local_entropy_mean(None, phi, reg.gamma, reg.temperature, reg.steps, reg.lr, self.gen, grad_fn)
        return [(reg.gamma * (phi - mu)).split(sizes)[i].reshape(s) for i, s in enumerate(shapes)]

    # ----------------------------------------------------------------- training
    def _fail(self, what: str, out: Path | None) -> None:
        where = ""
        if out is not None:
            self.save(out)
            where = f"; the last good weights (after {self.iteration} meta-updates) are saved in {out}"
        else:
            where = f"; the optimizer keeps the last good weights (after {self.iteration} meta-updates)"
        raise LohpError(f"non-finite {what} at meta-update {self.iteration + 1}; meta-training stopped{where}. "
                        "Lower the meta learning rate or the regularizer weight")

    def meta_step(self, ep: _Episode, start: int, theta: torch.Tensor, state: dict[str, torch.Tensor],
                  out: Path | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        """One truncated segment and one meta-update; returns the detached carry-over."""
        theta_in, state_in = theta.detach(), {k: v.detach() for k, v in state.items()}
        data, penalty, theta_out, state_out = self.segment(ep, start, theta_in, dict(state_in))
        total = data
        if self.opt_reg is not None and self.opt_reg.weight > 0:
            total = total + self.opt_reg.weight * penalty
        meta_pen = data.new_zeros(())
        mreg = self.meta_reg
        if mreg is not None and mreg.weight > 0 and mreg.name == "hessian":
            meta_pen = mreg.meta_hessian(data, self.params, self.gen)
            total = total + mreg.weight * meta_pen
        if not torch.isfinite(total):
            self._fail("meta-loss", out)
        self.meta_opt.zero_grad(set_to_none=True)
        total.backward()
        if mreg is not None and mreg.weight > 0 and mreg.name == "entropy":
            extra = self._meta_entropy_grads(mreg, ep, start, theta_in, state_in)
            meta_pen = sum(0.5 / mreg.gamma * (e ** 2).sum() for e in extra)  # gamma/2 ||phi - mu||^2
            for p, e in zip(self.params, extra):
                p.grad = e * mreg.weight if p.grad is None else p.grad + mreg.weight * e
        grads = [p.grad for p in self.params if p.grad is not None]
        if not all(torch.isfinite(g).all() for g in grads):
            self._fail("meta-gradient", out)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.clip if self.config.clip > 0 else float("inf"))
        self.meta_opt.step()
        self.iteration += 1
        record = {"iteration": self.iteration, "meta_loss": data.item(), "optimizee_penalty": penalty.item(),
                  "meta_penalty": float(meta_pen.detach()), "grad_norm": norm.item()}
        self.history.append(record)
        return theta_out.detach(), {k: v.detach() for k, v in state_out.items()}, record

    def train(self, out: str | Path | None = None,
              progress: Callable[[int, int], None] | None = None) -> MetaResult:
        """Run ``config.iterations`` meta-updates (continuing from ``self.iteration``)."""
        c = self.config
        out = Path(out) if out is not None else None
        if out is not None:
            ensure_writable_dir(out)
        start_time = time.perf_counter()
        was_training = self.optimizer.net.training
        self.optimizer.net.train()
        try:
            while self.iteration < c.iterations:
                ep = self.new_episode()
                theta, state = ep.theta0, self.optimizer.init(ep.theta0)
                for s in range(c.segments_per_episode):
                    if self.iteration >= c.iterations:
                        break
                    theta, state, _ = self.meta_step(ep, s * c.truncation, theta, state, out)
                    if out is not None and self.iteration % c.checkpoint_every == 0:
                        self.save(out)
                    if progress is not None:
                        progress(self.iteration, c.iterations)
        finally:
            self.optimizer.net.train(was_training)
        seconds = time.perf_counter() - start_time
        if out is not None:
            self.save(out)
        self._record_info(seconds)
        return MetaResult(self.optimizer, self.history, seconds, self.iteration)

    def _record_info(self, seconds: float | None = None) -> None:
        tail = self.history[-20:]
        info = {"meta_config": self.config.to_dict(), "meta_updates": self.iteration,
                "final_meta_loss": float(np.mean([h["meta_loss"] for h in tail])) if tail else None}
        if seconds is not None:
            info["meta_train_seconds"] = seconds
        self.optimizer.info.update(info)

    def save(self, out: str | Path) -> Path:
        self._record_info()
        return self.optimizer.save(out)


def meta_train(config: MetaConfig | None = None, l2o_config: L2OConfig | None = None,
               out: str | Path | None = None, progress: Callable[[int, int], None] | None = None,
               name: str = "l2o") -> MetaResult:
    """Meta-train a fresh LSTM optimizer; see :class:`MetaTrainer`."""
    trainer = MetaTrainer(config, l2o_config=l2o_config)
    trainer.optimizer.name = name
    return trainer.train(out, progress)


# --------------------------------------------------------------------------- meta-testing
def run_optimizee(optimizer: Any, tasks: Sequence[Task], steps: int, seed: int = 0, batch_size: int = 32,
                  init: str = "standard", record_every: int = 1) -> dict[str, Any]:
    """Train one run per task with ``optimizer`` (any object with the Optimizer face).

    ``theta_0`` of task ``i`` is its head's standard init under seed ``1000 * seed + i``
    and the minibatch stream is seeded by ``seed``, so different optimizers given the same
    seed start from the same weights. Returns the recorded weights, full-split train loss,
    eval loss and eval metric of every record, and the training wall time.
    """

    theta0 = torch.stack([t.init_theta(1000 * int(seed) + i, init) for i, t in enumerate(tasks)])
    thetas, rec, seconds = train_runs(tasks, optimizer, theta0, steps, batch_size, record_every, seed)
    if not torch.isfinite(thetas).all():
        raise LohpError(f"optimizer {getattr(optimizer, 'name', '?')} diverged (non-finite weights) "
                        f"within {steps} steps")
    metrics = evaluate_checkpoints(tasks, thetas)
    return {"thetas": thetas, "steps": rec, "train_loss": metrics["train_loss"], "eval_loss": metrics["eval_loss"],
            "eval_metric": metrics["eval_metric"], "seconds": seconds}


def meta_test(optimizer: Any, tasks: Sequence[Task], horizons: Sequence[int] = (32, 128), seed: int = 0,
              batch_size: int = 32, init: str = "standard") -> dict[int, dict[str, float]]:
    """Mean eval metric and train loss at each horizon (one run to the longest one)."""
    horizons = sorted({int(h) for h in horizons})
    if not horizons or horizons[0] <= 0:
        raise LohpError("meta-test horizons must be positive step counts")
    res = run_optimizee(optimizer, tasks, horizons[-1], seed, batch_size, init)
    return {h: {"metric": float(res["eval_metric"][:, h].mean()), "train_loss": float(res["train_loss"][:, h].mean()),
                "eval_loss": float(res["eval_loss"][:, h].mean())} for h in horizons}


__all__ = ["MetaConfig", "MetaResult", "MetaTrainer", "check_unroll", "meta_test", "meta_train", "run_optimizee"]
