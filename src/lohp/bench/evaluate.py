"""``lohp evaluate``: a trained policy against gradient and closed-form baselines on held-out
tasks of its family (or any family with the same target), the table ``bench`` prints.

Gradient baselines run the Stage I protocol for the policy's T steps (``adam``) and its N
steps (``adam-n``) from the same s_0, with the optimizer settings of the policy's store
(Adam's learning rate tuned on source tasks when the store can be opened).
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from lohp.bench.baselines import BaselineContext, baseline_names, baseline_rows
from lohp.bench.harness import WIDE, plot_accuracy_latency
from lohp.bench.rows import Row, public_rows
from lohp.bench.scenario import gradient_rows, speedup, task_metrics, tuned_hparams
from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.generation import Generator
from lohp.io import sha256_file
from lohp.optim import make_optimizer
from lohp.policy.io import WEIGHTS
from lohp.resources import available_memory, check_fits
from lohp.tasks import make_family
from lohp.trajectories import TrajectoryStore

PNG = "evaluate_accuracy_latency.png"
GRADIENT = ("adam", "sgd", "adam-n")
BASELINES = GRADIENT + tuple(baseline_names())  # the registered closed forms and condition rows


def _hparams(gen: Generator, family: Any, tune: bool, batch_size: int) -> dict[str, dict[str, Any]]:
    """Optimizer settings: the policy's store's when it opens, else lohp's defaults with the
    family's; Adam's lr tuned on source tasks for T and N steps when ``tune``."""
    hp: dict[str, dict[str, Any]] = {}
    try:
        store = TrajectoryStore.open(gen.meta["store"])
        hp = {o["name"]: dict(o["hparams"]) for o in store.config["optimizers"]}
    except (LohpError, KeyError, OSError):
        pass
    for name in ("adam", "sgd"):
        if name not in hp:
            hp[name] = make_optimizer(name, **family.optimizer_defaults.get(name, {})).hparams
    if tune:
        hp = tuned_hparams(family, hp, gen.meta["init"], gen.meta["init_sigma"], gen.meta["total_steps"],
                           gen.n_steps, batch_size)[0]
    return hp


@dataclass
class EvaluateConfig(Config):
    """The settings of ``lohp evaluate`` (its options come from these fields)."""

    what = "evaluate"

    family: str | None = setting(None, "Task family (default: the policy's).")
    tasks: int = setting(20, "Held-out tasks.")
    baselines: tuple[str, ...] = setting(("adam", "adam-n", "adam-cond", "prototype", "lda", "linear-probe"),
                                         "Comma-separated: " + ", ".join(BASELINES) + ".")
    seeds: int = setting(1, "Seeds (starting weights s_0 drawn anew per seed).")
    batch_size: int = setting(32, "Minibatch size of the gradient baselines.")
    tune: bool = setting(True, "Tune Adam's learning rate on source tasks (never held-out ones).")
    latency_repeats: int = setting(20, "Repeats of the latency measurement.")
    device: str = setting("cpu", "torch device.")

    def __post_init__(self) -> None:
        self.baselines = tuple(self.baselines)
        bad = sorted(set(self.baselines) - set(BASELINES))
        if bad:
            raise LohpError(f"unknown baseline(s) {', '.join(bad)}; choose from {', '.join(BASELINES)}")
        if self.tasks < 1 or self.seeds < 1:
            raise LohpError("--tasks and --seeds must be >= 1")
        if self.batch_size < 1 or self.latency_repeats < 1:
            raise LohpError("--batch-size and --latency-repeats must be >= 1")


def _sample(fam: Any, n: int, seeds: int, yes: bool, note: Callable[[str], None]) -> list[Any]:
    """``n`` held-out tasks, after an estimate of their memory from the first (refused when
    it cannot fit), with progress at least once a second."""
    first = fam.heldout_tasks(1)[0]
    data = sum(t.numel() * t.element_size() for t in (first.x_train, first.y_train, first.x_eval, first.y_eval))
    # each task's data, and per seed its s_0, generated and baseline weights
    check_fits(f"{n:,} held-out tasks", n * (data + 8 * seeds * first.layout.size * 4), available_memory(),
               "memory", "lower --tasks", yes)
    held, shown = [first], time.perf_counter()
    for i in range(1, n):
        held.append(fam.sample(i, "heldout"))
        if time.perf_counter() - shown >= 1.0:
            note(f"sampling held-out tasks {i + 1}/{n}")
            shown = time.perf_counter()
    return held


def evaluate(policy: str | Path, family: str | None = None, family_options: dict[str, Any] | None = None,
             note: Callable[[str], None] | None = None, yes: bool = False, **settings: Any) -> dict[str, Any]:
    """Generate weights for held-out tasks with the policy and compare; ``settings`` are
    :class:`EvaluateConfig`'s fields. Returns ``{"rows": [...], ...}`` whose last row's
    ``method`` is the policy's method. Tasks that cannot fit in memory are refused before
    they are sampled (``yes``: go on anyway)."""
    cfg = EvaluateConfig.from_dict({"family": family, **settings})
    note = note or (lambda s: None)
    family, tasks, baselines, seeds, batch_size = cfg.family, cfg.tasks, cfg.baselines, cfg.seeds, cfg.batch_size
    t_start = time.perf_counter()
    gen = Generator.load(policy, cfg.device)
    # which state of the policy this result measured (a policy folder's model card shows it)
    try:
        weights_sha = sha256_file(Path(policy) / WEIGHTS)
    except OSError:
        weights_sha = None
    overrides = dict(family_options or {})

    fam = gen.family(**overrides) if family in (None, gen.meta["family"]) else make_family(family, **overrides)
    held = _sample(fam, tasks, seeds, yes, note)
    for t in held:
        gen.check_task(t)  # a family the policy cannot serve fails before any work
    init, sigma = gen.meta["init"], gen.meta["init_sigma"]

    def s0_for(seed: int) -> torch.Tensor:
        return torch.stack([t.init_theta(50_000 + 1000 * seed + i, init, sigma) for i, t in enumerate(held)])

    hp = _hparams(gen, fam, cfg.tune and any(b not in ("sgd",) and not b.startswith("proto") for b in baselines),
                  batch_size)
    rows = _baseline_rows(gen, fam, held, cfg, hp, s0_for, note)
    note(f"generating with {gen.meta['method']}")
    rows.append(_policy_row(gen, held, cfg, hp, s0_for, str(policy)))
    return {"benchmark": "evaluate", "policy": str(policy), "policy_iteration": gen.meta.get("iteration"),
            "policy_sha256": weights_sha, "config": cfg.to_dict(), "family": fam.name,
            "family_config": fam.config(),
            "heldout_tasks": len(held), "threads": torch.get_num_threads(), "rows": public_rows(rows),
            "seconds": time.perf_counter() - t_start}


def _baseline_rows(gen: Generator, fam: Any, held: list[Any], cfg: EvaluateConfig, hp: dict[str, dict[str, Any]],
                   s0_for: Callable[[int], torch.Tensor], note: Callable[[str], None]) -> list[Row]:
    """The gradient rows (over seeds, from the policy's starts) and the closed-form rows."""
    T, N, rows = gen.meta["total_steps"], gen.n_steps, []
    grads = [(b, "sgd" if b == "sgd" else "adam", N if b == "adam-n" else T) for b in cfg.baselines
             if b in ("adam", "sgd", "adam-n")]
    if grads:
        rows += gradient_rows(held, hp, s0_for, cfg.seeds, T, cfg.batch_size, grads, note)
    closed = [b for b in cfg.baselines if b not in GRADIENT]
    if closed:
        s0 = s0_for(0)
        ctx = BaselineContext(family=fam, adam=hp.get("adam"), steps=T, condition_points=gen.policy.condition_points,
                              s0={t.name: s0[i] for i, t in enumerate(held)})
        rows += baseline_rows(closed, held, ctx, note)
    return rows


def _policy_row(gen: Generator, held: list[Any], cfg: EvaluateConfig, hp: dict[str, dict[str, Any]],
                s0_for: Callable[[int], torch.Tensor], policy: str) -> Row:
    """The policy's row: accuracy over seeds, from 10x wider starts, latency and (with Adam
    among the baselines) the time-to-accuracy speedup."""
    accs, wides, per_task = [], [], []
    for seed in range(cfg.seeds):
        s0 = s0_for(seed)
        acc = task_metrics(held, gen.generate_batch(held, s0=s0))
        per_task = per_task or acc
        accs.append(float(np.mean(acc)))
        wides.append(float(np.mean(task_metrics(held, gen.generate_batch(held, s0=s0 * WIDE)))))
    lat = gen.latency(held[0], repeats=cfg.latency_repeats)
    row = Row.over_seeds(gen.meta["method"], accs, k=gen.meta["k"], steps=gen.n_steps,
                         accuracy_wide=float(np.mean(wides)), latency_ms=lat["latency_ms"],
                         latency_with_condition_ms=lat["latency_with_condition_ms"], per_task=per_task, policy=policy)
    if "adam" in hp:
        row.update(speedup(held, s0_for(0), per_task, hp["adam"], row.latency_ms, gen.meta["total_steps"],
                           min(5, len(held)), row.latency_with_condition_ms))
    return row


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PNG
    plot_accuracy_latency(result["rows"], path, f"{result['policy']} on held-out {result['family']} tasks")
    return [path]
