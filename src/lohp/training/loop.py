"""Stage II's trainer: builds a run from its parts and owns the training loop.

:class:`Trainer` wires the data (:mod:`.data`), the loss (:mod:`lohp.losses`), the
network (:mod:`lohp.policy`) and the per-group AdamW together; ``train`` is the loop,
one short sequence per iteration: a step, the ranks' agreement on the clock, the log
(with diagnostics and held-out evaluation), a checkpoint. Checkpoints, the log, the
clock and data parallelism live in their own modules.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from lohp.errors import LohpError
from lohp.io import OutputLock, ensure_writable_dir, sha256_file
from lohp.losses import LossConfig, get_method, loss_config, loss_diagnostics, make_loss
from lohp.policy import LohpPolicy, PolicyConfig, make_structure
from lohp.provenance import provenance
from lohp.trajectories import TrajectoryStore
from lohp.training.checkpoints import (
    CHECKPOINT,
    diverged,
    load_checkpoint,
    prepare_out,
    save_checkpoint,
)
from lohp.training.clock import TrainClock
from lohp.training.config import TrainConfig
from lohp.training.data import OfflineData, iteration_generator
from lohp.training.distributed import Distributed, LossModule
from lohp.training.logs import TrainLog, diagnostics, heldout_accuracy, log_rows, plot_curves, summary_writer


class Trainer:
    """One policy's training run: built from a store, a loss config and the policy and
    training settings (resuming ``out``'s checkpoint when it holds the same run); ``train``
    runs the loop."""

    def __init__(self, store: TrajectoryStore | str | Path, out: str | Path, loss_config: LossConfig,
                 policy_config: PolicyConfig | None = None, train_config: TrainConfig | None = None,
                 device: str = "cpu", overwrite: bool = False, family_options: dict[str, Any] | None = None):
        self.store = store if isinstance(store, TrajectoryStore) else TrajectoryStore.open(
            store, family_options=family_options)
        if not self.store.complete:
            raise LohpError(f"the store {self.store.path} is incomplete; finish it by re-running lohp prepare "
                            "with the same arguments")
        self.out = ensure_writable_dir(Path(out))
        self.train_config = tc = train_config or TrainConfig()
        self.dist = Distributed.from_env(device)
        if self.dist.active and str(device).startswith("cuda"):
            device = f"cuda:{self.dist.local_rank}"
        if self.dist.active and tc.batch_size % self.dist.world:
            raise LohpError(f"--batch-size {tc.batch_size} does not split over {self.dist.world} "
                            f"processes; use a multiple of {self.dist.world}")
        self.device = device

        method = get_method(loss_config.method)
        if method.whole_trajectory:  # one step over the whole trajectory (k = T)
            loss_config = loss_config.replace(k=self.store.config["steps"])
        if tc.online_steps is not None and tc.matching == "uniform":  # N given directly: k = T / N
            total = self.store.config["steps"]
            if total % tc.online_steps:
                raise LohpError(f"uniform matching needs N to divide T={total} (got --online-steps "
                                f"{tc.online_steps}); use a divisor of {total} or --matching adaptive")
            loss_config = loss_config.replace(k=total // tc.online_steps)
        self.loss_config = loss_config
        # P_B's kind is the policy's (the loss reads it there); without a policy config, the
        # method's policy preset (lo-hp-literal: learned) over the defaults
        self.policy_config = pc = policy_config or PolicyConfig.from_dict(method.policy_preset)
        self.data = OfflineData(self.store, loss_config.k, tc.optimizers, device, tc.in_memory_gb,
                                pc.condition_points, tc.matching, tc.online_steps, tc.matching_measure)
        structure = make_structure(self.store.layout, {"features": pc.features}, kind=pc.structure)
        with torch.random.fork_rng(devices=[]):  # the policy's initialisation depends on the seed only
            torch.manual_seed(tc.seed)
            self.policy = LohpPolicy(structure, self.data.n_steps, pc, self.data.step_scale.cpu(),
                                     self.data.theta_scale, self.data.cond_scale, self.data.init_scale,
                                     self.data.condition["points"]).to(device)
        self.loss = make_loss(loss_config)
        groups = self.policy.parameter_groups()
        self.optimizer = torch.optim.AdamW(
            [{"params": groups["policy"], "lr": tc.lr, "name": "policy"},
             {"params": groups["backward"], "lr": tc.lr_backward, "name": "backward"},
             {"params": groups["flow"], "lr": tc.lr_flow, "name": "flow", "weight_decay": 0.0}],
            weight_decay=tc.weight_decay)
        self.meta = self._meta()
        self.iteration = 0
        if self.dist.main and prepare_out(self.out, self.meta, overwrite):
            self._load_checkpoint()
        self.dist.barrier()
        if not self.dist.main and (self.out / CHECKPOINT).exists():
            self._load_checkpoint()  # every rank resumes from rank 0's last checkpoint
        self.step_module: torch.nn.Module = self.dist.wrap(LossModule(self.policy, self.loss), self.device)

    # -- bookkeeping --------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        st = self.store

        return {"method": self.loss_config.method, "loss_config": self.loss_config.record(self.policy_config.backward),
                "policy_config": asdict(self.policy_config), "train_config": asdict(self.train_config),
                "condition": self.data.condition, "matching": self.data.matched(),
                "k": self.data.k, "n_steps": self.data.n_steps, "total_steps": self.data.total_steps,
                "layout": st.layout.to_dict(), "structure": self.policy.structure.to_dict(),
                "family": st.config["family"], "family_config": self.data.family.config(),
                "init": st.config["init"], "init_sigma": st.config["init_sigma"],
                "store": str(st.path), "store_manifest_sha": sha256_file(st.path / "manifest.json"),
                "store_optimizers": self.data.optimizers, "trajectories": len(self.data),
                "store_hparams": {o["name"]: dict(o["hparams"]) for o in st.config["optimizers"]},
                "store_batch_size": st.config.get("batch_size"),
                "parameters": sum(p.numel() for p in self.policy.parameters()),
                "provenance": {**provenance(), "processes": self.dist.world}}

    def _save_checkpoint(self) -> None:
        if self.dist.main:  # rank 0 writes checkpoints, logs and the policy
            save_checkpoint(self.out, self.policy, self.optimizer, self.iteration, self.meta)

    def _load_checkpoint(self) -> None:
        self.iteration = load_checkpoint(self.out, self.policy, self.optimizer, self.device)

    # -- the loop -----------------------------------------------------------------
    def train(self, progress: Callable[[int, int, dict[str, float]], None] | None = None,
              tensorboard: str | Path | None = None) -> dict[str, Any]:
        """Run (or resume) the loop. ``seconds`` in the log is wall time; ``train_seconds`` counts
        only the training steps (diagnostics, evaluation and checkpoints are off that clock),
        and is what ``time_limit`` and ``eval_every_seconds`` measure. ``progress(i, n, m)``
        after every iteration; with a time limit ``m`` also holds ``train_seconds`` and
        ``time_limit`` (progress in seconds). ``tensorboard``: a folder for the log's numbers
        as TensorBoard scalars."""
        tc = self.train_config
        log = TrainLog(self.out, self.iteration, loss_diagnostics(self.loss), self.loss_config.method,
                       write=self.dist.main, tensorboard=tensorboard)
        clock = TrainClock(log.train0, tc.time_limit, tc.eval_every_seconds)
        last: dict[str, float] = {}
        out_of_time = False
        with log:
            self.policy.train()
            while self.iteration < tc.iterations and not out_of_time:
                last = self._step(self.iteration + 1, clock)
                i = self.iteration
                # every rank stops at the same iteration: when any rank's clock ran out
                out_of_time = self.dist.any(clock.out_of_time())
                timed_eval = clock.eval_due(out_of_time)
                # a held-out evaluation that falls due is logged even between log intervals
                if self.dist.main and (i % tc.log_every == 0 or i % tc.eval_every == 0 or i == tc.iterations
                                       or timed_eval or out_of_time):
                    last.update(self._evaluate(i, clock, timed_eval))
                    log.write(i, clock.seconds, last)
                if i % tc.checkpoint_every == 0 or i == tc.iterations:
                    self._save_checkpoint()
                if progress is not None and self.dist.main:
                    progress(i, tc.iterations, last if tc.time_limit is None else
                             {**last, "train_seconds": clock.seconds, "time_limit": tc.time_limit})
        if out_of_time:  # stopped early: checkpointed where it stopped
            self._save_checkpoint()
        self.policy.eval()
        if self.dist.main:
            self.plot_curves()
        self.dist.barrier()
        return log.result(self.iteration, clock.seconds, last)

    def _step(self, i: int, clock: TrainClock) -> dict[str, float]:
        """Iteration ``i``'s training step, on ``clock``; its loss and loss terms, averaged
        over ranks. A non-finite loss (on any rank) or gradient stops the run."""
        tc = self.train_config
        t0 = time.perf_counter()
        gen = iteration_generator(tc.seed, i, self.device)
        batch = self.data.sample(tc.batch_size, gen, self.dist.rank, self.dist.world)
        loss, parts = self.step_module(batch)
        if self.dist.any(not bool(torch.isfinite(loss))):
            bad = [k for k, v in parts.items() if not math.isfinite(v)]
            raise diverged(self.out, f"non-finite loss{' term ' + ', '.join(bad) if bad else ''} at iteration {i}",
                           "lower --lr or raise --sigma-f")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), tc.clip)
        if not torch.isfinite(gnorm):
            raise diverged(self.out, f"non-finite gradient at iteration {i}", "lower --lr")
        self.optimizer.step()
        clock.add(time.perf_counter() - t0)
        self.iteration = i
        return {"loss": self.dist.mean(loss.item()), **{k: self.dist.mean(v) for k, v in parts.items()}}

    def _evaluate(self, i: int, clock: TrainClock, timed_eval: bool) -> dict[str, float]:
        """The diagnostics of iteration ``i`` and, when due, the held-out accuracy (off the clock)."""
        tc = self.train_config
        self.policy.eval()
        out = diagnostics(self.policy, self.data, tc.diagnostic_trajectories)
        if i % tc.eval_every == 0 or i == tc.iterations or timed_eval:
            out["heldout_accuracy"] = heldout_accuracy(
                self.policy, self.data.family, tc.eval_tasks, self.meta["init"], self.meta["init_sigma"],
                self.device)
            clock.evaluated()
        self.policy.train()
        return out

    def plot_curves(self) -> Path | None:
        return plot_curves(self.out, log_rows(self.out, self.iteration), f"{self.meta['method']} (k={self.data.k})")


def train(store: str | Path | TrajectoryStore, out: str | Path, method: str = "lo-hp", k: int = 2,
          loss_options: dict[str, Any] | None = None, policy_options: dict[str, Any] | None = None,
          train_options: dict[str, Any] | None = None, device: str = "cpu", overwrite: bool = False,
          progress: Callable[[int, int, dict[str, float]], None] | None = None,
          family_options: dict[str, Any] | None = None, progress_context: Callable[[], Any] | None = None,
          tensorboard: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume) a policy; returns the final iteration's metrics.

    ``progress_context()`` (a context manager yielding the progress callback) is entered only
    once every input is validated, so a progress bar never precedes an error. ``tensorboard``:
    a folder that receives the log's numbers as TensorBoard scalars (needs the
    ``tensorboard`` extra; checked before any work)."""

    loss_options, policy_options = dict(loss_options or {}), dict(policy_options or {})
    if "backward" in loss_options:  # where callers gave it before it was the policy's setting alone
        given = loss_options.pop("backward")
        if policy_options.setdefault("backward", given) != given:
            raise LohpError(f"backward given twice: {given!r} (loss options) and {policy_options['backward']!r} "
                            "(policy options); it is a policy setting")
    lc = loss_config(method, k=k, **loss_options)
    # unset policy settings take the method's policy preset (lo-hp-literal: a learned P_B)
    pc = PolicyConfig.from_dict({**get_method(method).policy_preset, **policy_options})
    tc = TrainConfig.from_dict(train_options or {})
    if tensorboard is not None:
        summary_writer()  # a missing extra is refused before any work
    # one writer per policy folder (in a data-parallel run, rank 0 is the writer)
    lock = OutputLock(Path(out), "lohp train") if os.environ.get("RANK", "0") == "0" \
        else nullcontext()
    with lock:
        trainer = Trainer(store, out, lc, pc, tc, device=device, overwrite=overwrite, family_options=family_options)
        if progress_context is None:
            return trainer.train(progress, tensorboard)
        with progress_context() as bar:
            return trainer.train(bar, tensorboard)
