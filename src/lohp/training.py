"""Stage II: train a policy on a trajectory store with any method's loss.

The trainer owns the loop and nothing else: data comes from :class:`OfflineData`, the
loss from :mod:`lohp.losses`, the network from :mod:`lohp.policy`. It checkpoints the
policy *and* its optimizer state to safetensors every ``checkpoint_every`` iterations
(atomically), so ``kill -9`` loses at most one interval; re-running the same command
resumes. Randomness of iteration i comes from a generator seeded with (seed, i), so a
resumed run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lohp.condition import DEFAULT_POINTS, check_points, class_rows, default_points
from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.flatness import task_loss_fn
from lohp.io import (
    POLICY_FORMAT,
    OutputLock,
    atomic_save_tensors,
    atomic_write_json,
    check_finite,
    ensure_writable_dir,
    load_tensors,
    read_json,
    sha256_file,
)
from lohp.losses import Batch, LossConfig, get_method, loss_config, loss_diagnostics, make_loss
from lohp.plotting import pyplot, save_figure
from lohp.policy import LohpPolicy, PolicyConfig, make_structure
from lohp.policy.io import META, WEIGHTS, condition_points, load_state, save_policy
from lohp.trajectories import TrajectoryStore
from lohp.trajectories.matching import MATCHINGS, MEASURES, adaptive_indices, loss_progress, path_progress

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
LOG = "log.csv"


# --------------------------------------------------------------------------- data
def resolve_condition(requested: int | None, tasks: dict[int, Any]) -> dict[str, Any]:
    """The condition a policy trains on, from the requested points per class (None: the
    default, capped at the smallest class's training rows; an explicit m above that is
    refused in one line) and the training tasks (seed -> Task); what policy.json records."""
    rows, where = None, None
    for seed, task in tasks.items():
        counts = class_rows(task.condition_rows()[1], task.n_classes) if requested != 1 else [1]
        if rows is None or min(counts) < rows:
            rows, where = min(counts), (seed, counts.index(min(counts)))
    rows = rows if rows is not None else 1
    if requested is None:
        points = default_points(rows)
    else:
        points = check_points(requested)
        if points > rows:
            raise LohpError(f"condition points {points} is more than the {rows} training row(s) of class {where[1]} "
                            f"of source task {where[0]}; use --condition-points {rows} or fewer, or leave it unset "
                            f"(the default, {DEFAULT_POINTS}, is capped at the smallest class)")
    return {"kind": "means" if points == 1 else "coreset", "points": points, "requested": requested,
            "min_class_rows": rows if requested != 1 else None,
            "capped": requested is None and points < DEFAULT_POINTS}


class OfflineData:
    """Offline trajectories at online times (stride k), their conditions, and scales.

    Up to ``in_memory_gb`` the stride-k trajectories are held as one tensor; a larger store
    (or ``in_memory_gb=0``) is *streamed*: each batch reads its trajectories from the
    memory-mapped shards, so Stage II needs memory for a batch, not for the store. Both
    modes draw the same batches from the same generator."""

    def __init__(self, store: TrajectoryStore, k: int, optimizers: list[str] | None = None,
                 device: str = "cpu", in_memory_gb: float | None = None, condition_points: int | None = 1,
                 matching: str = "uniform", online_steps: int | None = None, measure: str = "path"):
        cfg = store.config
        total = cfg["steps"]
        if matching not in MATCHINGS or measure not in MEASURES:
            raise LohpError(f"unknown matching {matching!r} / measure {measure!r}; choose matching from "
                            f"{', '.join(MATCHINGS)} and measure from {', '.join(MEASURES)}")
        recorded = store.steps(0) if len(store) else []
        if matching == "adaptive":
            n = online_steps if online_steps is not None else total // k
            if n < 1:
                raise LohpError(f"--online-steps must be >= 1 (got {n})")
            self.k, self.n_steps, self.total_steps = max(total // n, 1), int(n), total  # k: nominal (T / N)
            idx = None
        else:
            if online_steps is not None and online_steps * k != total:
                raise LohpError(f"uniform matching takes k (N = T / k = {total // max(k, 1)}); --online-steps "
                                f"{online_steps} needs --matching adaptive, or --k {total // online_steps}")
            if k > total:
                raise LohpError(f"the store has T={total} steps, fewer than k={k}; prepare a store with "
                                f"--steps of at least {k} (a multiple of k), or lower --k")
            if total % k:
                raise LohpError(f"T={total} steps is not divisible by k={k}, so online step j cannot be matched "
                                f"to offline step k*j; use a k that divides {total} or prepare with --steps "
                                f"{(total // k + 1) * k}")
            self.k, self.n_steps, self.total_steps = k, total // k, total
            pos = {s: i for i, s in enumerate(recorded)}
            missing = [s for s in range(0, total + 1, k) if s not in pos]
            if missing:
                raise LohpError(f"the store records every {cfg['record_every']} steps but k={k} needs step "
                                f"{missing[0]}; use a k that is a multiple of {cfg['record_every']}")
            idx = [pos[s] for s in range(0, total + 1, k)]
        self.matching, self.measure = matching, measure
        if optimizers is not None:
            have = sorted({tr["optimizer"] for tr in store})
            missing = [o for o in optimizers if o not in have]
            if missing:  # one typo would otherwise silently train on fewer optimizers than asked
                raise LohpError(f"the store holds no trajectory of optimizer(s) {', '.join(missing)}; "
                                f"it has {', '.join(have)}")
        chosen = [i for i, tr in enumerate(store) if optimizers is None or tr["optimizer"] in optimizers]
        if not chosen:
            have = sorted({tr["optimizer"] for tr in store})
            raise LohpError(f"the store holds no trajectory of optimizer(s) {optimizers}; it has {', '.join(have)}")
        self.optimizers = sorted({store.trajectories[i]["optimizer"] for i in chosen})
        self.store, self.device, self._chosen = store, device, chosen
        # the records each trajectory's online steps are matched to (one list for uniform)
        size_gb = len(chosen) * (self.n_steps + 1) * store.layout.size * 4 / 2 ** 30
        self.streamed = in_memory_gb is not None and size_gb > in_memory_gb
        if self.streamed:
            self._idx = {i: idx for i in chosen} if idx is not None else self._adaptive(chosen)
            self.thetas = None
            self._scales_streaming()
        else:
            full = [store.theta(i) for i in chosen]
            bad = torch.tensor([not torch.isfinite(t).all() for t in full])  # anywhere, not only at stride k
            if bad.any():
                self._refuse_non_finite(chosen[int(bad.nonzero()[0])])
            self._idx = {i: idx for i in chosen} if idx is not None else self._adaptive(chosen, full)
            thetas = torch.stack([t[self._idx[i]] for i, t in zip(chosen, full)])
            del full
            self.thetas = thetas.to(device)
            steps = self.thetas[:, 1:] - self.thetas[:, :-1]
            self.step_scale = steps.square().mean((0, 2)).sqrt().clamp_min(1e-8)  # [N]
            self.theta_scale = self.thetas.square().mean().sqrt().clamp_min(1e-8).item()
            self.init_scale = self.thetas[:, 0].square().mean().sqrt().clamp_min(1e-8).item()
        family = store.family()
        tasks: dict[int, Any] = {}
        for i in chosen:
            seed = store.trajectories[i]["task_seed"]
            if seed not in tasks:
                tasks[seed] = family.sample(seed, store.config["split"])
        self.condition = resolve_condition(condition_points, tasks)
        m = self.condition["points"]
        conds = {}
        for seed, task in tasks.items():
            conds[seed] = task.condition(m)
            check_finite(conds[seed], f"task {task.name}'s condition (from its training split)",
                         "its features hold NaN or inf: clean the data")
        self.cond = torch.stack([conds[store.trajectories[i]["task_seed"]] for i in chosen]).to(device)
        self.family = family
        self.trajectory_ids = [store.trajectories[i]["id"] for i in chosen]
        self.task_seeds = torch.tensor([store.trajectories[i]["task_seed"] for i in chosen])
        self._tasks: dict[int, Any] = {}  # sampled again on demand (not kept: their data)
        # RMS of the class means the conditions carry (the same number for every m)
        means = self.cond if m == 1 else (self.cond[..., :-1] * self.cond[..., -1:]).sum(-2)
        self.cond_scale = means.square().mean().sqrt().clamp_min(1e-8).item()

    def _adaptive(self, chosen: list[int], full: list[torch.Tensor] | None = None) -> dict[int, list[int]]:
        """Each trajectory's own N + 1 records at equal shares of its progress (matching.py);
        ``full``: the trajectories already in memory (else each is read once, streaming)."""
        out = {}
        for n, i in enumerate(chosen):
            if self.measure == "loss":
                progress = loss_progress(self.store.metrics(i)["train_loss"])
            else:
                t = full[n] if full is not None else self.store.theta(i)
                if not torch.isfinite(t).all():
                    self._refuse_non_finite(i)
                progress = path_progress(t)
            out[i] = adaptive_indices(progress, self.n_steps)
        return out

    def matched(self) -> dict[str, Any]:
        """What policy.json records of the matching: kind, measure, N and, when adaptive, each
        trajectory's matched offline steps."""
        info: dict[str, Any] = {"kind": self.matching, "steps": self.n_steps}
        if self.matching == "adaptive":
            info["measure"] = self.measure
            info["offline_steps"] = {self.store.trajectories[i]["id"]: [self.store.steps(i)[r] for r in self._idx[i]]
                                     for i in self._chosen}
        return info

    def _refuse_non_finite(self, i: int) -> None:
        tid = self.store.trajectories[i]["id"]
        raise LohpError(f"trajectory {tid} of {self.store.path} contains NaN or inf; re-prepare the store "
                        "with a lower learning rate for its optimizer")

    def _scales_streaming(self) -> None:
        """The finiteness check and the scales in one pass, one trajectory in memory at a time
        (float64 sums: the same means as the in-memory path up to rounding)."""
        n, d = self.n_steps, self.store.layout.size
        sq_steps, sq_all, sq_init = torch.zeros(n, dtype=torch.float64), 0.0, 0.0
        for i in self._chosen:
            t = self.store.theta(i)
            if not torch.isfinite(t).all():
                self._refuse_non_finite(i)
            s = t[self._idx[i]].double()
            sq_steps += (s[1:] - s[:-1]).square().sum(1)
            sq_all += s.square().sum().item()
            sq_init += s[0].square().sum().item()
        r = len(self._chosen)
        self.step_scale = (sq_steps / (r * d)).sqrt().float().clamp_min(1e-8).to(self.device)
        self.theta_scale = max((sq_all / (r * (n + 1) * d)) ** 0.5, 1e-8)
        self.init_scale = max((sq_init / (r * d)) ** 0.5, 1e-8)

    def __len__(self) -> int:
        return len(self._chosen)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Trajectories ``idx`` at online times, ``[len(idx), N+1, d]`` (read from the shards
        when streamed)."""
        if self.thetas is not None:
            return self.thetas[idx.to(self.thetas.device)]
        return torch.stack([self._read(self._chosen[i]) for i in idx.tolist()]).to(self.device)

    def _read(self, i: int) -> torch.Tensor:
        """Trajectory i at online times: only those records are read when they are evenly
        spaced (every stride-k store: k is a multiple of record_every)."""
        idx = self._idx[i]
        first, stride = idx[0], (idx[1] - idx[0]) if len(idx) > 1 else 1
        if idx == list(range(first, first + stride * len(idx), stride)):
            return self.store.theta(i, first, idx[-1] + 1, stride)
        return self.store.theta(i)[idx]

    def sample(self, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> Batch:
        """``batch_size`` trajectories drawn with replacement; with ``world > 1`` processes,
        rank r keeps rows r, r + world, ... of the same global draw (data parallel)."""
        idx = torch.randint(len(self), (batch_size,), generator=generator)[rank::world]
        cond_idx = idx.to(self.cond.device)
        return Batch(self.rows(idx), self.cond[cond_idx], generator,
                     task_loss=lambda rows: self.task_loss(self.task_seeds[idx[rows.cpu()]].tolist()))

    def task_loss(self, seeds: list[int]):
        """``f(theta [len(seeds), d]) -> [len(seeds)]``: each task's full training-split loss."""

        return task_loss_fn([self._task(s) for s in seeds])

    def _task(self, seed: int):
        if seed not in self._tasks:
            self._tasks[seed] = self.family.sample(seed, self.store.config["split"])
        return self._tasks[seed]


# --------------------------------------------------------------------------- config
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



class _LossModule(torch.nn.Module):
    """The loss as a module's forward, so DistributedDataParallel can wrap it (its gradient
    hooks sync every parameter the loss used, whichever policy methods it called)."""

    def __init__(self, policy: LohpPolicy, loss: Any):
        super().__init__()
        self.policy, self.loss = policy, loss

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss(self.policy, batch)


@dataclass
class Distributed:
    """This process's place in a data-parallel run (torchrun's environment), or a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()

        if not dist.is_initialized():
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def mean(self, value: float) -> float:
        """The mean of a number over ranks (the global batch's loss from each rank's share)."""
        if not self.active:
            return value

        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world

    def any(self, flag: bool) -> bool:
        if not self.active:
            return flag

        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


# The parts of a run that must not change on resume (iterations and time limit may).
_RESUME_KEYS = ("method", "loss_config", "policy_config", "store_manifest_sha", "condition_points")


def _with_defaults(meta: dict[str, Any]) -> dict[str, Any]:
    """A saved policy description with settings a newer lohp added filled in by their
    defaults (new settings default to the old behaviour), so a folder trained by an older
    version resumes; a changed or unknown setting still differs."""
    out = dict(meta)
    out["condition_points"] = condition_points(meta)  # 1: saved before coresets
    for key, cls in (("policy_config", PolicyConfig), ("loss_config", LossConfig)):
        if isinstance(out.get(key), dict):
            out[key] = {**asdict(cls()), **out[key]}
    return out


def _iteration_generator(seed: int, iteration: int, device: str) -> torch.Generator:
    s = int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(s)


# --------------------------------------------------------------------------- diagnostics
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


# --------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, store: TrajectoryStore | str | Path, out: str | Path, loss_config: LossConfig,
                 policy_config: PolicyConfig | None = None, train_config: TrainConfig | None = None,
                 device: str = "cpu", overwrite: bool = False, family_options: dict[str, Any] | None = None):
        self.store = store if isinstance(store, TrajectoryStore) else TrajectoryStore.open(
            store, family_options=family_options)
        if not self.store.complete:
            raise LohpError(f"the store {self.store.path} is incomplete; finish it by re-running lohp prepare "
                            "with the same arguments")
        self.out = ensure_writable_dir(Path(out))
        self.train_config = train_config or TrainConfig()
        self.dist = Distributed.from_env(device)
        if self.dist.active and str(device).startswith("cuda"):
            device = f"cuda:{self.dist.local_rank}"
        if self.dist.active and self.train_config.batch_size % self.dist.world:
            raise LohpError(f"--batch-size {self.train_config.batch_size} does not split over {self.dist.world} "
                            f"processes; use a multiple of {self.dist.world}")
        self.device = device


        if get_method(loss_config.method).whole_trajectory:  # one step over the whole trajectory (k = T)
            loss_config = replace(loss_config, k=self.store.config["steps"])
        tc0 = train_config or TrainConfig()
        if tc0.online_steps is not None and tc0.matching == "uniform":  # N given directly: k = T / N
            total = self.store.config["steps"]
            if total % tc0.online_steps:
                raise LohpError(f"uniform matching needs N to divide T={total} (got --online-steps "
                                f"{tc0.online_steps}); use a divisor of {total} or --matching adaptive")
            loss_config = replace(loss_config, k=total // tc0.online_steps)
        self.loss_config = loss_config
        k = loss_config.k
        # the policy's backward kind is the loss's (one setting, copied, the caller's config untouched)
        pc = replace(policy_config or PolicyConfig(), backward=loss_config.backward)
        self.policy_config = pc
        tc = self.train_config
        self.data = OfflineData(self.store, k, tc.optimizers, device, tc.in_memory_gb, pc.condition_points,
                                tc.matching, tc.online_steps, tc.matching_measure)
        structure = make_structure(self.store.layout, {"features": pc.features}, kind=pc.structure)
        with torch.random.fork_rng(devices=[]):  # the policy's initialisation depends on the seed only
            torch.manual_seed(self.train_config.seed)
            self.policy = LohpPolicy(structure, self.data.n_steps, pc, self.data.step_scale.cpu(),
                                     self.data.theta_scale, self.data.cond_scale, self.data.init_scale,
                                     self.data.condition["points"]).to(device)
        self.loss = make_loss(loss_config)
        groups = self.policy.parameter_groups()
        tc = self.train_config
        self.optimizer = torch.optim.AdamW(
            [{"params": groups["policy"], "lr": tc.lr, "name": "policy"},
             {"params": groups["backward"], "lr": tc.lr_backward, "name": "backward"},
             {"params": groups["flow"], "lr": tc.lr_flow, "name": "flow", "weight_decay": 0.0}],
            weight_decay=tc.weight_decay)
        self.meta = self._meta()
        self.iteration = 0
        if self.dist.main:
            self._prepare_out(overwrite)
        self.dist.barrier()
        if not self.dist.main and (self.out / CHECKPOINT).exists():
            self._load_checkpoint()  # every rank resumes from rank 0's last checkpoint
        self.step_module: torch.nn.Module = _LossModule(self.policy, self.loss)
        if self.dist.active:
            ids = [torch.device(self.device).index] if str(self.device).startswith("cuda") else None
            self.step_module = DistributedDataParallel(self.step_module, device_ids=ids,
                                                       find_unused_parameters=True)

    # -- bookkeeping --------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        st = self.store

        return {"method": self.loss_config.method, "loss_config": self.loss_config.to_dict(),
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
                "parameters": sum(p.numel() for p in self.policy.parameters())}

    def _prepare_out(self, overwrite: bool) -> None:
        meta_path = self.out / META
        if overwrite:
            for name in (META, WEIGHTS, CHECKPOINT, CHECKPOINT_META, LOG, "curves.png"):
                (self.out / name).unlink(missing_ok=True)
        elif meta_path.exists():
            old = _with_defaults(read_json(meta_path, "policy description"))
            diff = [k for k in _RESUME_KEYS if old.get(k) != _with_defaults(self.meta).get(k)]
            if diff:
                raise LohpError(f"{self.out} holds a policy trained with other settings ({', '.join(diff)} differ); "
                                "use the same command to resume, another --out, or --overwrite")
            if (self.out / CHECKPOINT).exists():
                self._load_checkpoint()
        if not meta_path.exists() or overwrite:
            atomic_write_json(meta_path, {**self.meta, "format": POLICY_FORMAT, "iteration": 0})

    def _save_checkpoint(self) -> None:
        if not self.dist.main:  # rank 0 writes checkpoints, logs and the policy
            return
        tensors = {f"policy.{k}": v for k, v in self.policy.state_dict().items()}
        state = self.optimizer.state_dict()
        for pid, pstate in state["state"].items():
            for name, value in pstate.items():
                tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
        atomic_save_tensors(self.out / CHECKPOINT, tensors)
        atomic_write_json(self.out / CHECKPOINT_META, {"iteration": self.iteration,
                                                       "param_groups": state["param_groups"]})
        # The servable policy is rewritten with every checkpoint (always the last good one).
        save_policy(self.out, self.policy, {**self.meta, "iteration": self.iteration})

    def _load_checkpoint(self) -> None:
        info = read_json(self.out / CHECKPOINT_META, "checkpoint description")
        fix = (f"delete {self.out / CHECKPOINT} and {self.out / CHECKPOINT_META} to restart this policy from "
               "iteration 0 (or pass --overwrite)")
        load_state(self.policy, self.out / CHECKPOINT, prefix="policy.", fix=fix)
        tensors = load_tensors(self.out / CHECKPOINT, "training checkpoint", fix)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value.to(self.device)
        self.optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        self.iteration = int(info["iteration"])

    def _log_rows(self) -> list[dict[str, str]]:
        path = self.out / LOG
        if not path.exists():
            return []
        with open(path, newline="") as fh:
            return [r for r in csv.DictReader(fh) if int(r["iteration"]) <= self.iteration]

    # -- the loop -----------------------------------------------------------------
    def train(self, progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Run (or resume) the loop. ``seconds`` in the log is wall time; ``train_seconds`` counts
        only the training steps (diagnostics, evaluation and checkpoints are off that clock),
        and is what ``time_limit`` and ``eval_every_seconds`` measure."""
        tc = self.train_config
        rows = self._log_rows()  # rows past the last checkpoint are dropped: they will be redone

        fieldnames = ["iteration", "seconds", "train_seconds", "loss", *loss_diagnostics(self.loss),
                      "logpf_real", "cos_real", "dist", "dist_final", "heldout_accuracy"]
        if rows:  # a resumed log keeps its own columns too
            fieldnames += [k for k in rows[0] if k not in fieldnames]
        elapsed0 = float(rows[-1]["seconds"]) if rows else 0.0
        train0 = float(rows[-1].get("train_seconds") or rows[-1]["seconds"]) if rows else 0.0
        start = time.perf_counter()
        clock = train0  # training seconds so far
        next_eval = (math.floor(clock / tc.eval_every_seconds) + 1) * tc.eval_every_seconds \
            if tc.eval_every_seconds else math.inf
        main = self.dist.main
        log_fh = open(self.out / LOG, "w", newline="") if main else open(os.devnull, "w")
        writer = csv.DictWriter(log_fh, fieldnames=fieldnames, extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
        log_fh.flush()
        last: dict[str, float] = {}
        # the last held-out accuracy measured (reported at the end even when the last
        # iteration did not evaluate), from the log when resuming
        known_accuracy = next((float(r["heldout_accuracy"]) for r in reversed(rows)
                               if r.get("heldout_accuracy") not in (None, "")), None)
        stopped_early = False
        try:
            self.policy.train()
            while self.iteration < tc.iterations:
                i = self.iteration + 1
                t0 = time.perf_counter()
                gen = _iteration_generator(tc.seed, i, self.device)
                batch = self.data.sample(tc.batch_size, gen, self.dist.rank, self.dist.world)
                loss, parts = self.step_module(batch)
                if self.dist.any(not bool(torch.isfinite(loss))):
                    bad = [k for k, v in parts.items() if not math.isfinite(v)]
                    raise LohpError(f"non-finite loss{' term ' + ', '.join(bad) if bad else ''} at iteration {i}; "
                                    f"the last good checkpoint (iteration {self._checkpoint_iteration()}) is kept "
                                    f"in {self.out}; lower --lr or raise --sigma-f, then resume")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), tc.clip)
                if not torch.isfinite(gnorm):
                    raise LohpError(f"non-finite gradient at iteration {i}; the last good checkpoint (iteration "
                                    f"{self._checkpoint_iteration()}) is kept in {self.out}; lower --lr, then resume")
                self.optimizer.step()
                clock += time.perf_counter() - t0
                self.iteration = i
                last = {"loss": self.dist.mean(loss.item()), **{k: self.dist.mean(v) for k, v in parts.items()}}
                # every rank stops at the same iteration: when any rank's clock ran out
                out_of_time = self.dist.any(tc.time_limit is not None and clock >= tc.time_limit)
                timed_eval = clock >= next_eval or (out_of_time and tc.eval_every_seconds is not None)
                if main and (i % tc.log_every == 0 or i == tc.iterations or timed_eval or out_of_time):
                    self.policy.eval()
                    last.update(diagnostics(self.policy, self.data, tc.diagnostic_trajectories))
                    if i % tc.eval_every == 0 or i == tc.iterations or timed_eval:
                        last["heldout_accuracy"] = heldout_accuracy(
                            self.policy, self.data.family, tc.eval_tasks, self.meta["init"], self.meta["init_sigma"],
                            self.device)
                        known_accuracy = last["heldout_accuracy"]
                        while next_eval <= clock:
                            next_eval += tc.eval_every_seconds
                    self.policy.train()
                    try:
                        writer.writerow({"iteration": i, "seconds": elapsed0 + time.perf_counter() - start,
                                         "train_seconds": clock, **last})
                    except ValueError:
                        extra = sorted(set(last) - set(fieldnames))
                        raise LohpError(f"the {self.loss_config.method} loss returned diagnostics "
                                        f"{', '.join(extra)} that its class does not declare in `diagnostics`; "
                                        "add them there") from None
                    log_fh.flush()
                if i % tc.checkpoint_every == 0 or i == tc.iterations:
                    self._save_checkpoint()
                if progress is not None and main:
                    progress(i, tc.iterations, last)
                if out_of_time:
                    stopped_early = True
                    break
        finally:
            log_fh.close()
        if stopped_early:
            self._save_checkpoint()
        self.policy.eval()
        if main:
            self.plot_curves()
        self.dist.barrier()
        if not last and rows:  # nothing left to train (a finished run re-opened): report its last log row
            last = {k: float(v) for k, v in rows[-1].items()
                    if k not in ("iteration", "seconds", "train_seconds") and v not in ("", None)}
            return {"iteration": self.iteration, "seconds": elapsed0, "train_seconds": train0, **last}
        if known_accuracy is not None and "heldout_accuracy" not in last:
            last["heldout_accuracy"] = known_accuracy
        return {"iteration": self.iteration, "seconds": elapsed0 + time.perf_counter() - start,
                "train_seconds": clock, **last}

    def _checkpoint_iteration(self) -> int:
        path = self.out / CHECKPOINT_META
        return int(read_json(path, "checkpoint description")["iteration"]) if path.exists() else 0

    def plot_curves(self) -> Path | None:
        rows = self._log_rows()
        if not rows:
            return None

        plt = pyplot()

        keys = [("loss", "loss"), ("logpf_real", "log P_F of real steps / coord"), ("cos_real", "cos(generated, real step)"),
                ("dist", "rollout distance / step"), ("heldout_accuracy", "held-out accuracy")]
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
        for ax, (key, title) in zip(axes, keys):
            pts = [(int(r["iteration"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
            if pts:
                ax.plot(*zip(*pts), marker="." if key == "heldout_accuracy" else None)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("iteration", fontsize=8)
            if key == "loss" and pts and min(p[1] for p in pts) > 0:
                ax.set_yscale("log")
        fig.suptitle(f"{self.meta['method']} (k={self.data.k})", fontsize=10)
        path = self.out / "curves.png"
        save_figure(fig, path, dpi=100)
        return path


def train(store: str | Path | TrajectoryStore, out: str | Path, method: str = "lo-hp", k: int = 2,
          loss_options: dict[str, Any] | None = None, policy_options: dict[str, Any] | None = None,
          train_options: dict[str, Any] | None = None, device: str = "cpu", overwrite: bool = False,
          progress: Callable[[int, int, dict[str, float]], None] | None = None,
          family_options: dict[str, Any] | None = None, progress_context: Callable[[], Any] | None = None
          ) -> dict[str, Any]:
    """Train (or resume) a policy; returns the final iteration's metrics.

    ``progress_context()`` (a context manager yielding the progress callback) is entered only
    once every input is validated, so a progress bar never precedes an error."""

    lc = loss_config(method, k=k, **(loss_options or {}))
    pc, tc = PolicyConfig.from_dict(policy_options or {}), TrainConfig.from_dict(train_options or {})
    # one writer per policy folder (in a data-parallel run, rank 0 is the writer)
    lock = OutputLock(Path(out), "lohp train") if os.environ.get("RANK", "0") == "0" \
        else nullcontext()
    with lock:
        trainer = Trainer(store, out, lc, pc, tc, device=device, overwrite=overwrite, family_options=family_options)
        if progress_context is None:
            return trainer.train(progress)
        with progress_context() as bar:
            return trainer.train(bar)
