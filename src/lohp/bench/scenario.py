"""The pieces every scenario benchmark is made of, so a scenario adds a family and a table only.

    store = stage_one(work, family, family_config, ...)          # Stage I (resumable)
    rows  = gradient_rows(tasks, hp, s0_for, ...)                # adam, sgd, sam, adam-n
    rows += [learned_row(work, store, v, tasks, s0_for, ...)]    # every learned variant
    rows += baseline_rows(names, tasks, ctx)                      # closed forms, adam-cond (baselines.py)

The image scenarios (transfer, few-shot, domain) run that skeleton once per :class:`Part`
(a store and its held-out tasks) with :func:`run_part`; a part's fields are the hooks where
they differ (family, baselines, closed-form rows, row tags, cross-dataset task sets).

Statistics are over seeds: each seed trains every learned method anew (initialisation and
batches) and draws new starting weights s_0 for every evaluation task; gradient
baselines start from the same s_0. Rows are :class:`lohp.bench.rows.Row` objects; a
row's ``per_task`` list (seed 0) feeds confidence intervals and is dropped from JSON
(:func:`lohp.bench.rows.public_rows`). A scenario's settings subclass :class:`ScenarioConfig`.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from lohp.bench.baselines import BaselineContext, baseline_rows
from lohp.bench.harness import WIDE, adam_time_to_accuracy, gradient_accuracy, single_run_seconds
from lohp.bench.rows import Row
from lohp.bench.runner import BenchConfig, check_positive
from lohp.config import setting
from lohp.errors import LohpError
from lohp.flatness import hutchinson_trace, task_loss_fn
from lohp.generation import Generator
from lohp.losses import get_method
from lohp.optim import make_optimizer
from lohp.tasks import Task
from lohp.training import train
from lohp.trajectories import TrajectoryStore, make_config, prepare

Note = Callable[[str], None]
S0For = Callable[[int], torch.Tensor]


@dataclass
class Variant:
    name: str                 # row label
    method: str
    k: int | None = 2       # None: the method's own (the hypernetwork's one step, k = T)
    optimizers: list[str] | None = None   # store filter (optimizer-mix ablation)
    ablation: bool = False    # runs with ablation_seeds only
    loss_options: dict[str, Any] = field(default_factory=dict)
    policy_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.k == 0:  # the earlier spelling of "the method's own" (the hypernetwork)
            self.k = None

    @property
    def slug(self) -> str:
        opt = "" if self.optimizers is None else "-" + "+".join(self.optimizers)
        extra = "".join(f"-{k}{v}" for k, v in sorted({**self.loss_options, **self.policy_options,
                                                          **self.train_options}.items()))
        return f"{self.method}-k{0 if self.k is None else self.k}{opt}{extra}"  # (k0: folder names as before)


@dataclass
class ScenarioConfig(BenchConfig):
    """The settings every scenario benchmark shares (digits, transfer, few-shot, domain,
    lora): what :func:`run_part` reads. A scenario subclasses it, adds its own fields and
    gives shared ones its defaults with ``ScenarioConfig.default(name, value)``; its
    ``quick_config()`` classmethod is its ``--quick`` settings. Every whole-number setting
    must be > 0."""

    store_tasks: int = setting(96, "Source tasks in Stage I.")
    steps: int = setting(32, "Steps per Stage I run (T).")
    batch_size: int = setting(32, "Minibatch size of Stage I and the gradient baselines.")
    train_batch: int = setting(16, "Trajectories per policy training iteration.")
    seeds: int = setting(3, "Seeds per method.")
    speedup_tasks: int = setting(10, "Tasks of the time-to-accuracy speedup.")
    latency_repeats: int = setting(30, "Repeats of the latency measurement.")
    variants: list[Variant] = setting(factory=list, help="The learned rows.")

    def __post_init__(self) -> None:
        check_positive(self)


# The learned rows every scenario shows, in the paper's ablation order, plus the earlier
# hybrid (lo-hp-v1) and lo-di with input noise (docs/method.md, section 'What every benchmark shows').
LEARNED = ("hypernetwork", "lo-di", "lo-di-noise", "lo-op", "lo-hp-v1", "lo-hp")
PAPER_ORDER = ("hypernetwork", "lo-di", "lo-op", "lo-hp")


def budget_variants(budget: float, names: Sequence[str] = LEARNED, policy_options: dict[str, Any] | None = None,
                    train_options: dict[str, Any] | None = None,
                    loss_options: dict[str, dict[str, Any]] | None = None) -> list[Variant]:
    """One variant per method name, every one with the same training-time budget (seconds per
    seed); ``loss_options`` maps a method name to its own loss settings."""
    return [Variant(name, name, k=None if get_method(name).whole_trajectory else 2, policy_options=dict(policy_options or {}),
                    train_options=budgeted(budget, **(train_options or {})),
                    loss_options=dict((loss_options or {}).get(name, {})))
            for name in names]


FEW_STEPS = 4  # N of the few-step rows: uniform (k = T / N) beside adaptive matching


def matching_variants(budget: float | None = None, n_steps: int = FEW_STEPS, policy_options: dict[str, Any] | None = None,
                      train_options: dict[str, Any] | None = None, loss_options: dict[str, Any] | None = None
                      ) -> list[Variant]:
    """lo-hp at N = ``n_steps`` policy steps, uniformly matched (k = T / N) and adaptively
    matched (each trajectory's records at equal shares of its path), with the same budget."""
    base = budgeted(budget, **(train_options or {})) if budget is not None else dict(train_options or {})
    return [Variant(f"lo-hp N={n_steps}", "lo-hp", policy_options=dict(policy_options or {}),
                    loss_options=dict(loss_options or {}), train_options={**base, "online_steps": n_steps}),
            Variant(f"lo-hp N={n_steps} adaptive", "lo-hp", policy_options=dict(policy_options or {}),
                    loss_options=dict(loss_options or {}),
                    train_options={**base, "online_steps": n_steps, "matching": "adaptive"})]


def ablation_order(rows: Sequence[Row]) -> dict[str, Any]:
    """The paper's claim hypernetwork < lo-di < lo-op < lo-hp, checked on these rows' mean accuracy."""
    acc = {r.method: r.accuracy for r in rows if r.method in PAPER_ORDER and r.k in (None, 2)}
    if len(acc) < len(PAPER_ORDER):
        return {"held": None, "accuracy": acc}
    held = all(acc[a] < acc[b] for a, b in zip(PAPER_ORDER, PAPER_ORDER[1:]))
    return {"held": held, "accuracy": acc, "measured_order": sorted(acc, key=acc.get)}


def stage_one(work: Path, family: str, family_config: dict[str, Any], tasks: int, steps: int, batch_size: int,
              optimizers: Sequence[str] = ("sgd", "adam", "sam"), hparams: dict[str, dict[str, Any]] | None = None,
              device: str = "cpu", **config: Any) -> TrajectoryStore:
    """The scenario's store in ``work/store`` (resumable); ``config``: more make_config settings."""
    cfg = make_config(family=family, family_config=family_config, optimizers=tuple(optimizers), hparams=hparams,
                      tasks=tasks, steps=steps, batch_size=batch_size, **config)
    return prepare(Path(work) / "store", cfg, device=device)


def s0_sampler(tasks: Sequence[Task], store: TrajectoryStore, offset: int = 50_000) -> S0For:
    """Starting weights per seed, from the store's theta_0 distribution (never its seeds)."""
    init, sigma = store.config["init"], store.config["init_sigma"]

    def s0_for(seed: int) -> torch.Tensor:
        return torch.stack([t.init_theta(offset + 1000 * seed + i, init, sigma) for i, t in enumerate(tasks)])
    return s0_for


def hessian_trace(tasks: Sequence[Task], thetas: torch.Tensor) -> float:
    """Mean Hutchinson Hessian trace of the training loss at the given weights (flatness)."""

    g = torch.Generator().manual_seed(0)
    return float(hutchinson_trace(task_loss_fn(list(tasks)), thetas.detach(), 32, g).mean())


def gradient_rows(tasks: Sequence[Task], hp: dict[str, dict[str, Any]], s0_for: S0For, seeds: int, steps: int,
                  batch_size: int, baselines: Sequence[tuple[str, str, int]], note: Note,
                  hessian: bool = False, latency_tasks: int = 5) -> list[Row]:
    """``baselines``: (row name, optimizer, steps) run from every seed's s_0 (and 10x wider);
    latency: one run with torch.optim (what a user would run), the median over ``latency_tasks``."""
    single_run_seconds(tasks[0], "adam", hp["adam"], s0_for(0)[0], 2, batch_size, 0)  # warm-up (~1 s once)
    rows = []
    for name, opt, n in baselines:
        note(f"baseline {name}")
        params = hp.get(name, hp[opt])  # a row's own (tuned) settings, else its optimizer's
        row = optimizer_row(name, tasks, lambda seed, o=opt, p=params: make_optimizer(o, **p), s0_for, seeds, n,
                            batch_size, hessian, lr=params.get("lr"))
        row.latency_ms = statistics.median(single_run_seconds(t, opt, params, s0_for(0)[i], n, batch_size, i)
                                           for i, t in enumerate(tasks[:latency_tasks])) * 1e3
        rows.append(row)
    return rows


def optimizer_row(name: str, tasks: Sequence[Task], optimizer_for: Callable[[int], Any], s0_for: S0For, seeds: int,
                  steps: int, batch_size: int, hessian: bool = False, **fields: Any) -> Row:
    """The row of an optimizer (hand-written or learned, with the Optimizer face): per seed,
    ``optimizer_for(seed)`` runs ``steps`` steps from that seed's s_0 and from s_0 drawn
    WIDE times wider (the Stage I protocol, batched). ``fields``: more row fields or extra
    keys; the caller sets ``latency_ms``."""
    accs, wides, traces, per_task = [], [], [], []
    for seed in range(seeds):
        opt, s0 = optimizer_for(seed), s0_for(seed)
        acc, final = gradient_accuracy(tasks, opt, s0, steps, batch_size, seed)
        accs.append(float(np.mean(acc)))
        per_task = per_task or acc
        if hessian:
            traces.append(hessian_trace(tasks, final))
        acc_w, _ = gradient_accuracy(tasks, opt, s0 * WIDE, steps, batch_size, seed)
        wides.append(float(np.mean(acc_w)))
    row = Row.over_seeds(name, accs, steps=steps, accuracy_wide=float(np.mean(wides)), per_task=per_task, **fields)
    if hessian:
        row.extra["hessian_trace"] = float(np.mean(traces))
    return row


def task_metrics(tasks: Sequence[Task], thetas: torch.Tensor) -> list[float]:
    """Each task's evaluation metric at its own weights ``thetas [len(tasks), d]``."""
    return [t.evaluate(th)[t.metric_name] for t, th in zip(tasks, thetas)]


def policy_dir(work: Path, v: Variant, seed: int) -> Path:
    return Path(work) / "policies" / f"{v.slug}-s{seed}"


def iteration_options(iterations: int) -> dict[str, int]:
    """Train options for a policy trained for ``iterations``: held-out evaluations at about
    CURVE_POINTS evenly spaced iterations and the last (a learning curve, not one point),
    logs and checkpoints every eighth of the run."""
    return {"iterations": max(iterations, 1), "eval_every": max(iterations // CURVE_POINTS, 1),
            "log_every": max(iterations // 8, 1), "checkpoint_every": max(iterations // 8, 1)}


def train_variant(work: Path, store: TrajectoryStore, v: Variant, seed: int, iterations: int, train_batch: int,
                  note: Note, device: str = "cpu", progress=None) -> dict[str, float]:
    """Train ``v`` for one seed into :func:`policy_dir` (resumable; a budgeted policy whose
    budget ran out is reused); the last log row. A run that diverges leaves a ``DIVERGED``
    marker and its last good checkpoint instead of raising."""
    out = policy_dir(work, v, seed)
    note(f"training {v.name} k={'T' if v.k is None else v.k} seed {seed}")
    options = {**iteration_options(iterations), "batch_size": train_batch, "seed": seed, "optimizers": v.optimizers,
               **v.train_options}
    if options.get("time_limit") and (out / "policy.json").exists():
        return _last_log_row(out)  # a compute-budgeted policy is done once its budget ran out
    try:
        return train(store, out, v.method, k=v.k if v.k is not None else 1, loss_options=v.loss_options,
                     policy_options=v.policy_options, train_options=options, device=device, progress=progress)
    except LohpError as exc:  # a method that diverges is a result, not the end of the benchmark
        if "non-finite" not in str(exc):
            raise
        note(f"{v.name} seed {seed} diverged: {exc}")
        (out / DIVERGED).write_text(str(exc) + "\n")
        return _last_log_row(out) if (out / "log.csv").exists() else {}


def learned_row(work: Path, store: TrajectoryStore, v: Variant, tasks: Sequence[Task], s0_for: S0For, seeds: int,
                iterations: int, train_batch: int, note: Note, device: str = "cpu", latency_repeats: int = 30,
                hessian: bool = False, progress=None, extra_tasks: dict[str, tuple[Sequence[Task], S0For]] | None = None
                ) -> tuple[Row, dict[str, Row]]:
    """Train ``v`` once per seed (resumable), generate for ``tasks``, and summarise.

    ``extra_tasks`` (name -> (tasks, s0_for)) are evaluated with the same policies (e.g. a
    cross-dataset set); their rows come back in the second return value.
    """
    accs, wides, lats, diag, train_s, traces, per_task, curves, its = [], [], [], [], [], [], [], [], []
    diverged: list[int] = []
    extra_accs: dict[str, list[list[float]]] = {name: [] for name in extra_tasks or {}}
    gen = None
    for seed in range(seeds):
        out = policy_dir(work, v, seed)
        res = train_variant(work, store, v, seed, iterations, train_batch, note, device, progress)
        if (out / DIVERGED).exists():
            diverged.append(seed)
        if not (out / "policy.safetensors").exists():  # diverged before its first checkpoint
            continue
        train_s.append(res.get("train_seconds", res.get("seconds", float("nan"))))
        its.append(res.get("iteration", float("nan")))
        curves.append(learning_curve(out))
        diag.append({k: res.get(k) for k in ("logpf_real", "cos_real", "dist", "dist_final")})
        gen = Generator.load(out, device)
        s0 = s0_for(seed)
        theta = gen.generate_batch(tasks, s0=s0)
        if hessian:
            traces.append(hessian_trace(tasks, theta))
        task_acc = task_metrics(tasks, theta)
        per_task = per_task or task_acc
        accs.append(float(np.mean(task_acc)))
        theta_w = gen.generate_batch(tasks, s0=s0 * WIDE)
        wides.append(float(np.mean(task_metrics(tasks, theta_w))))
        lats.append(gen.latency(tasks[0], repeats=latency_repeats))
        for name, (xt, xs0) in (extra_tasks or {}).items():
            th = gen.generate_batch(xt, s0=xs0(seed))
            extra_accs[name].append(task_metrics(xt, th))
    k = None if get_method(v.method).whole_trajectory else v.k
    row = Row.over_seeds(v.name, accs, k=k, per_task=per_task, curves=curves, ablation=v.ablation,
                         diverged_seeds=diverged)
    if gen is None:  # every seed diverged before its first checkpoint
        row.update({"iterations_per_second": None, "diagnostics": {}})
        return row, {}
    mean_its, mean_train_s = float(np.mean(its)), float(np.mean(train_s))
    row.update({
        "steps": gen.n_steps, "accuracy_wide": float(np.mean(wides)),
        "latency_ms": statistics.median(l["latency_ms"] for l in lats),
        "latency_with_condition_ms": statistics.median(l["latency_with_condition_ms"] for l in lats),
        "matching": (gen.meta.get("matching") or {}).get("kind", "uniform"), "train_seconds": mean_train_s,
        "iterations": mean_its, "iterations_per_second": mean_its / max(mean_train_s, 1e-9),
        "optimizers": v.optimizers or [o["name"] for o in store.config["optimizers"]],
        "diagnostics": {k: float(np.mean([d[k] for d in diag if d.get(k) is not None] or [np.nan]))
                        for k in ("logpf_real", "cos_real", "dist", "dist_final")}})
    if hessian:
        row.extra["hessian_trace"] = float(np.mean(traces))
    extra = {name: Row.over_seeds(v.name, [float(np.mean(a)) for a in per_seed], k=row.k, steps=row.steps,
                                  latency_ms=row.latency_ms, per_task=per_seed[0])
             for name, per_seed in extra_accs.items()}
    return row, extra


# Written into a policy folder whose training stopped on a non-finite loss or gradient: the
# row then evaluates the last good checkpoint and lists the seed under diverged_seeds.
DIVERGED = "DIVERGED"


def _log_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _last_log_row(out: Path) -> dict[str, float]:
    rows = _log_rows(out)
    return {k: float(v) for k, v in (rows[-1] if rows else {}).items() if v not in ("", None)}


def learning_curve(out: Path) -> list[tuple[float, float]]:
    """(training seconds, held-out accuracy) at every evaluation of a policy's log."""
    return [(float(r.get("train_seconds") or r["seconds"]), float(r["heldout_accuracy"]))
            for r in _log_rows(out) if r.get("heldout_accuracy") not in ("", None)]


CURVE_POINTS = 8  # held-out evaluations per policy, budgeted or not (the learning curve)


def budgeted(seconds: float, **train_options: Any) -> dict[str, Any]:
    """Train options for a training-time budget per policy (compute-matched methods): a large
    iteration cap, evaluations at fixed fractions of the budget (the learning curve), logs
    and checkpoints at fixed iteration intervals."""
    return {"iterations": 1_000_000, "time_limit": float(seconds), "log_every": 20, "eval_every": 1_000_000,
            "eval_every_seconds": float(seconds) / CURVE_POINTS, "checkpoint_every": 20, **train_options}


def speedup(tasks: Sequence[Task], s0: torch.Tensor, lohp_acc: Sequence[float], adam_hp: dict[str, Any],
            latency_ms: float, T: int, n_tasks: int, latency_with_condition_ms: float | None = None) -> dict[str, Any]:
    """Adam's full-batch wall time to first reach the generated weights' accuracy on each task,
    divided by the generator's latency *with* computing the condition (the median over
    tasks, ``time_to_accuracy_speedup``) and by its policy steps alone
    (``..._without_condition``). Adam runs at most 10 T steps; where it never reaches the
    accuracy its whole run counts, so the ratio is a lower bound there."""
    with_cond = latency_with_condition_ms if latency_with_condition_ms is not None else latency_ms
    ratios, bare, reached = [], [], 0
    for i, t in enumerate(tasks[:n_tasks]):
        seconds, step = adam_time_to_accuracy(t, s0[i], lohp_acc[i], adam_hp, max_steps=10 * T)
        reached += step is not None
        ratios.append(seconds * 1e3 / with_cond)
        bare.append(seconds * 1e3 / latency_ms)
    return {"time_to_accuracy_speedup": float(np.median(ratios)),
            "time_to_accuracy_speedup_without_condition": float(np.median(bare)), "speedup_tasks": len(ratios),
            "speedup_adam_reached": reached, "speedup_condition_included": latency_with_condition_ms is not None}


ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def tune_adam(family: Any, hp: dict[str, Any], init: str, init_sigma: float, steps: int, batch_size: int,
              n_tasks: int = 16, lrs: Sequence[float] = ADAM_LRS) -> tuple[dict[str, Any], dict[str, float]]:
    """Adam's learning rate chosen the way its users would: the best mean evaluation accuracy
    after ``steps`` steps on *source* tasks (never held-out ones); (hparams, accuracy by lr)."""
    tasks = family.source_tasks(n_tasks, start=100_000)  # task seeds Stage I does not use
    s0 = torch.stack([t.init_theta(70_000 + i, init, init_sigma) for i, t in enumerate(tasks)])
    scores = {}
    for lr in lrs:
        acc, _ = gradient_accuracy(tasks, make_optimizer("adam", **{**hp, "lr": lr}), s0, steps, batch_size, 0)
        scores[lr] = float(np.mean(acc))
    best = max(scores, key=lambda lr: (scores[lr], -abs(np.log(lr / hp["lr"]))))
    return {**hp, "lr": best}, scores


def tuned_hparams(family: Any, hp: dict[str, dict[str, Any]], init: str, init_sigma: float, steps: int,
                  n_steps: int, batch_size: int) -> tuple[dict[str, dict[str, Any]], dict]:
    """``hp`` with Adam's learning rate tuned on source tasks for ``steps`` (row ``adam``) and
    for ``n_steps`` (row ``adam-n``); (hparams by row, report)."""
    args = (family, hp["adam"], init, init_sigma)
    hp_t, scores_t = tune_adam(*args, steps, batch_size)
    hp_n, scores_n = tune_adam(*args, n_steps, batch_size)
    report = {"adam": {"lr": hp_t["lr"], "source_accuracy_by_lr": scores_t},
              "adam-n": {"lr": hp_n["lr"], "source_accuracy_by_lr": scores_n}}
    return {**hp, "adam": hp_t, "adam-n": hp_n}, report


def baseline_hparams(store: TrajectoryStore, steps: int, batch_size: int, note: Note) -> tuple[dict[str, Any], dict]:
    """The store's optimizer settings, with Adam's learning rate tuned on source tasks for
    T steps (row ``adam``) and for N = T/2 steps (row ``adam-n``); (hparams by row, report)."""
    hp = {o["name"]: dict(o["hparams"]) for o in store.config["optimizers"]}
    if "adam" not in hp:
        return hp, {}
    note("tuning Adam's learning rate on source tasks")
    return tuned_hparams(store.family(), hp, store.config["init"], store.config["init_sigma"], steps,
                         max(steps // 2, 1), batch_size)


def ci95(values: Sequence[float]) -> float:
    """Half-width of the normal 95 % confidence interval of the mean."""
    v = np.asarray(values, dtype=float)
    return float(1.96 * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


# --------------------------------------------------------------------------- the shared skeleton
def baseline_specs(names: Sequence[str], T: int) -> list[tuple[str, str, int]]:
    """Gradient rows by name: ``adam`` / ``sgd`` / ``sam`` for T steps, ``adam-n`` (Adam) for T/2."""
    return [(n, "adam", T // 2) if n == "adam-n" else (n, n, T) for n in names]


@dataclass
class Part:
    """One store and its held-out evaluation: what a scenario runs once (transfer), per shot
    count (few-shot) or per held-out domain (domain). The hooks are where scenarios differ."""

    work: Path
    family: str
    family_config: dict[str, Any]
    eval_tasks: int
    baselines: tuple[str, ...]                      # gradient rows (baseline_specs)
    closed_forms: tuple[str, ...]                   # baseline rows by name (lohp.bench.baselines)
    tags: dict[str, Any] = field(default_factory=dict)  # written into every row of the part
    label: str = ""                                 # progress prefix, e.g. "1-shot: "
    stage_note: str = "Stage I: preparing the store"
    # more task sets the same policies serve: () -> [(tags, tasks)], rows after the part's own
    cross: Callable[[], list[tuple[dict[str, Any], Sequence[Task]]]] | None = None
    cross_baselines: tuple[str, ...] = ("adam",)
    row_tags: Callable[[Row], dict[str, Any]] | None = None   # per-row extras (few-shot's CI)
    order_on_lohp: bool = True                      # lo-hp's row carries ablation_order_held


@dataclass
class PartResult:
    rows: list[Row]                     # the part's rows, tagged
    cross_rows: list[Row]               # the cross task sets' rows, tagged
    store: TrajectoryStore
    tasks: list[Task]
    cross_tasks: list[list[Task]]
    tuning: dict[str, Any]
    order: dict[str, Any]               # ablation_order of the part's rows


def run_part(cfg: ScenarioConfig, part: Part, note: Note, train_progress=None) -> PartResult:
    """Stage I -> tuned baseline settings -> gradient rows -> closed-form rows -> a learned
    row per ``cfg.variants`` (lo-hp with its speedup) -> ablation order, for one part."""
    note(part.label + part.stage_note)
    store = stage_one(part.work, part.family, part.family_config, cfg.store_tasks, cfg.steps, cfg.batch_size,
                      device=cfg.device)
    T = cfg.steps
    hp, tuning = baseline_hparams(store, T, cfg.batch_size, note)
    tasks = store.family().heldout_tasks(part.eval_tasks)
    cross = part.cross() if part.cross is not None else []
    s0_for = s0_sampler(tasks, store)
    s0_cross = [s0_sampler(xt, store) for _, xt in cross]

    lohp_variant = next((v for v in cfg.variants if v.method == "lo-hp"), None)
    points = (lohp_variant.policy_options.get("condition_points") if lohp_variant else None)
    ctx = BaselineContext(family=store.family(), adam=hp.get("adam"), steps=T, condition_points=points)

    def closed(on: Sequence[Task], s0: torch.Tensor) -> list[Row]:
        ctx.s0 = {t.name: s0[i] for i, t in enumerate(on)}
        return baseline_rows(part.closed_forms, on, ctx)

    rows = gradient_rows(tasks, hp, s0_for, cfg.seeds, T, cfg.batch_size, baseline_specs(part.baselines, T), note)
    note(f"{part.label}closed-form baselines: {', '.join(part.closed_forms)}")
    rows += closed(tasks, s0_for(0))
    cross_rows: list[list[Row]] = []
    for (_, xt), xs0 in zip(cross, s0_cross):
        cross_rows.append(gradient_rows(xt, hp, xs0, cfg.seeds, T, cfg.batch_size,
                                        baseline_specs(part.cross_baselines, T), note) + closed(xt, xs0(0)))
    tuning = {**tuning, **ctx.tuning}
    extra_tasks = {str(i): (xt, xs0) for i, ((_, xt), xs0) in enumerate(zip(cross, s0_cross))}
    for v in cfg.variants:
        row, extra = learned_row(part.work, store, v, tasks, s0_for, cfg.seeds, 0, cfg.train_batch, note,
                                 cfg.device, cfg.latency_repeats, progress=train_progress, extra_tasks=extra_tasks)
        if v.method == "lo-hp":
            note(f"{part.label}time-to-accuracy of Adam vs lo-hp")
            row.update(speedup(tasks, s0_for(0), row.per_task, hp["adam"], row.latency_ms, T,
                               cfg.speedup_tasks, row.latency_with_condition_ms))
        rows.append(row)
        for i, xr in enumerate(cross_rows):
            if str(i) in extra:  # absent when every seed diverged
                xr.append(extra[str(i)])
    order = ablation_order(rows)
    for r in rows:
        r.update(part.tags)
        if part.row_tags is not None:
            r.update(part.row_tags(r))
        if part.order_on_lohp and r.method == "lo-hp":
            r.extra["ablation_order_held"] = order["held"]
    for (tags, _), xr in zip(cross, cross_rows):
        for r in xr:
            r.update(tags)
    return PartResult(rows, [r for xr in cross_rows for r in xr], store, tasks, [xt for _, xt in cross], tuning,
                      order)


def run_parts(cfg: ScenarioConfig, parts: Iterable[Part], note: Note | None = None,
              train_progress=None) -> list[PartResult]:
    """:func:`run_part` for every part, in order."""
    note = note or (lambda s: None)
    return [run_part(cfg, p, note, train_progress) for p in parts]
