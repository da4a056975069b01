"""Stage II's data: offline trajectories at the online times of a matching, their
conditions and scales (:class:`OfflineData`), and the generator each iteration draws its
batch from (seeded by (seed, i), so a resumed run draws the same batches as an
uninterrupted one)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lohp.condition import DEFAULT_POINTS, check_points, class_rows, default_points
from lohp.errors import LohpError
from lohp.flatness import task_loss_fn
from lohp.io import check_finite
from lohp.losses import Batch
from lohp.trajectories import TrajectoryStore
from lohp.trajectories.matching import MATCHINGS, MEASURES, adaptive_indices, loss_progress, path_progress


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
        if matching not in MATCHINGS or measure not in MEASURES:
            raise LohpError(f"unknown matching {matching!r} / measure {measure!r}; choose matching from "
                            f"{', '.join(MATCHINGS)} and measure from {', '.join(MEASURES)}")
        self.store, self.device, self.matching, self.measure = store, device, matching, measure
        idx = self._match(k, online_steps)
        chosen = self._choose(optimizers)
        self.optimizers = sorted({store.trajectories[i]["optimizer"] for i in chosen})
        self._chosen = chosen
        size_gb = len(chosen) * (self.n_steps + 1) * store.layout.size * 4 / 2 ** 30
        self.streamed = in_memory_gb is not None and size_gb > in_memory_gb
        if self.streamed:
            self._idx = {i: idx for i in chosen} if idx is not None else self._adaptive(chosen)
            self.thetas = None
            self._scales_streaming()
        else:
            self._load(chosen, idx)
        self.family = store.family()
        self._conditions(condition_points, chosen)
        self.trajectory_ids = [store.trajectories[i]["id"] for i in chosen]
        self.task_seeds = torch.tensor([store.trajectories[i]["task_seed"] for i in chosen])
        self._tasks: dict[int, Any] = {}  # sampled again on demand (not kept: their data)

    def _match(self, k: int, online_steps: int | None) -> list[int] | None:
        """Set k, N and T; the record indices every trajectory's online steps are matched to
        under uniform matching (None for adaptive: each trajectory gets its own)."""
        cfg = self.store.config
        total = cfg["steps"]
        if self.matching == "adaptive":
            n = online_steps if online_steps is not None else total // k
            if n < 1:
                raise LohpError(f"--online-steps must be >= 1 (got {n})")
            self.k, self.n_steps, self.total_steps = max(total // n, 1), int(n), total  # k: nominal (T / N)
            return None
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
        recorded = self.store.steps(0) if len(self.store) else []
        pos = {s: i for i, s in enumerate(recorded)}
        missing = [s for s in range(0, total + 1, k) if s not in pos]
        if missing:
            raise LohpError(f"the store records every {cfg['record_every']} steps but k={k} needs step "
                            f"{missing[0]}; use a k that is a multiple of {cfg['record_every']}")
        return [pos[s] for s in range(0, total + 1, k)]

    def _choose(self, optimizers: list[str] | None) -> list[int]:
        """The trajectories of ``optimizers`` (all: None); a name the store lacks is refused."""
        have = sorted({tr["optimizer"] for tr in self.store})
        if optimizers is not None:
            missing = [o for o in optimizers if o not in have]
            if missing:  # one typo would otherwise silently train on fewer optimizers than asked
                raise LohpError(f"the store holds no trajectory of optimizer(s) {', '.join(missing)}; "
                                f"it has {', '.join(have)}")
        chosen = [i for i, tr in enumerate(self.store) if optimizers is None or tr["optimizer"] in optimizers]
        if not chosen:
            raise LohpError(f"the store holds no trajectory of optimizer(s) {optimizers}; it has {', '.join(have)}")
        return chosen

    def _load(self, chosen: list[int], idx: list[int] | None) -> None:
        """Hold the chosen trajectories at their matched records in memory, with the scales."""
        full = [self.store.theta(i) for i in chosen]
        bad = torch.tensor([not torch.isfinite(t).all() for t in full])  # anywhere, not only at stride k
        if bad.any():
            self._refuse_non_finite(chosen[int(bad.nonzero()[0])])
        self._idx = {i: idx for i in chosen} if idx is not None else self._adaptive(chosen, full)
        thetas = torch.stack([t[self._idx[i]] for i, t in zip(chosen, full)])
        del full
        self.thetas = thetas.to(self.device)
        steps = self.thetas[:, 1:] - self.thetas[:, :-1]
        self.step_scale = steps.square().mean((0, 2)).sqrt().clamp_min(1e-8)  # [N]
        self.theta_scale = self.thetas.square().mean().sqrt().clamp_min(1e-8).item()
        self.init_scale = self.thetas[:, 0].square().mean().sqrt().clamp_min(1e-8).item()

    def _conditions(self, condition_points: int | None, chosen: list[int]) -> None:
        """Every chosen trajectory's task condition (one per task, checked finite) and their scale."""
        trajectories = self.store.trajectories
        tasks: dict[int, Any] = {}
        for i in chosen:
            seed = trajectories[i]["task_seed"]
            if seed not in tasks:
                tasks[seed] = self.family.sample(seed, self.store.config["split"])
        self.condition = resolve_condition(condition_points, tasks)
        m = self.condition["points"]
        conds = {}
        for seed, task in tasks.items():
            conds[seed] = task.condition(m)
            check_finite(conds[seed], f"task {task.name}'s condition (from its training split)",
                         "its features hold NaN or inf: clean the data")
        self.cond = torch.stack([conds[trajectories[i]["task_seed"]] for i in chosen]).to(self.device)
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


def iteration_generator(seed: int, iteration: int, device: str) -> torch.Generator:
    s = int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(s)
