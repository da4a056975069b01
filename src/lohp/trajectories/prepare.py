"""Stage I end to end: plan shards, collect them (vectorised), store them, resume.

The plan is a pure function of the arguments: shard i always holds the same runs and
uses the same random streams, so an interrupted run resumed with the same arguments
produces exactly the store an uninterrupted run would have produced. A shard counts as
done when its tensors *and* its JSON record exist and the checksum matches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.io import (
    LOCK_FILE,
    READERS_FILE,
    OutputLock,
    atomic_save_tensors,
    atomic_write_json,
    check_finite,
    ensure_writable_dir,
    read_json,
    sha256_file,
)
from lohp.optim import make_optimizer
from lohp.resources import available_memory, check_fits, free_disk
from lohp.tasks import make_family
from lohp.trajectories.collect import collect
from lohp.trajectories.ray_executor import check_ray, run_shards
from lohp.trajectories.store import CONFIG, FORMAT, MANIFEST, SHARD_DIR, TrajectoryStore

INIT_SCHEMES = ("standard", "normal", "zeros")


@dataclass
class ShardPlan:
    index: int
    optimizer: dict[str, Any]       # {"name": ..., "hparams": {...}}
    runs: list[dict[str, int]]      # [{"task_seed", "seed", "init_seed"}]

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}.safetensors"

    @property
    def record_file(self) -> str:
        return f"shard-{self.index:05d}.json"


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass
class StageOneConfig(Config):
    """The arguments of a Stage I run (``lohp prepare``'s options come from these fields).
    :meth:`store_config` checks them against the family and returns the JSON-able config a
    store records."""

    what = "Stage I"

    family: str = setting("digits", "Task family: a registered name (lohp data families lists them and their options).")
    family_config: dict[str, Any] = setting(factory=dict, help="The family's options.", cli=False)
    optimizers: list[str] = setting(factory=lambda: ["sgd", "adam", "sam"],
                                    help="Comma-separated: sgd, adam, adamw, sam, sam-adam.")
    hparams: dict[str, dict[str, Any]] = setting(factory=dict, help="Per-optimizer hyper-parameters.", cli=False)
    tasks: int = setting(16, "Number of source tasks.")
    task_start: int = setting(0, "First task seed.")
    split: str = setting("source", "Task set: source or heldout.")
    seeds: int = setting(1, "Runs per task and optimizer (different theta_0).")
    steps: int = setting(32, "Optimizer steps T per run.")
    batch_size: int = setting(32, "Minibatch size.")
    record_every: int = setting(1, "Store every s-th checkpoint (and always the last).")
    init: str = setting("standard", "theta_0: standard (layer init), normal, zeros.")
    init_sigma: float = setting(0.01, "Std of theta_0 for --init normal.")
    seed: int = setting(0, "Base random seed.")
    shard_runs: int | None = setting(None, "Runs per shard, the unit of resume (default: the family's, 64; 4 for "
                                           "the LoRA families, whose runs are slow).")

    def __post_init__(self) -> None:
        self.optimizers = list(self.optimizers)
        if self.split not in ("source", "heldout"):
            raise LohpError(f"unknown split {self.split!r}; choose source or heldout")
        for name, value in (("tasks", self.tasks), ("seeds", self.seeds), ("steps", self.steps),
                            ("batch size", self.batch_size), ("record_every", self.record_every),
                            ("shard_runs", 1 if self.shard_runs is None else self.shard_runs)):
            if int(value) <= 0:
                raise LohpError(f"{name} must be > 0 (got {value})")
        if self.init not in INIT_SCHEMES:
            raise LohpError(f"unknown init {self.init!r}; choose one of {', '.join(INIT_SCHEMES)}")
        if not self.optimizers:
            raise LohpError("give at least one optimizer, e.g. --optimizers sgd,adam,sam")
        unknown = set(self.hparams) - set(self.optimizers)
        if unknown:
            raise LohpError(f"hyper-parameters given for {', '.join(sorted(unknown))}, which is not in the "
                            "optimizer list")

    def store_config(self) -> dict[str, Any]:
        """Validated against the family (its options, its optimizer defaults) -> the store's config."""
        fam = make_family(self.family, **self.family_config)
        opts = []
        for name in self.optimizers:  # family defaults first: e.g. LoRA needs smaller learning rates
            opt = make_optimizer(name, **{**fam.optimizer_defaults.get(name, {}), **self.hparams.get(name, {})})
            opts.append({"name": opt.name, "hparams": opt.hparams})
        if len({o["name"] for o in opts}) != len(opts):
            raise LohpError("an optimizer is listed twice; list each once")
        shard_runs = self.shard_runs if self.shard_runs is not None else getattr(fam, "default_shard_runs", 64)
        return {"family": self.family, "family_config": fam.config(), "optimizers": opts, "tasks": int(self.tasks),
                "task_start": int(self.task_start), "split": self.split, "seeds": int(self.seeds),
                "steps": int(self.steps), "batch_size": int(self.batch_size),
                "record_every": int(self.record_every), "init": self.init, "init_sigma": float(self.init_sigma),
                "seed": int(self.seed), "shard_runs": int(shard_runs)}


def make_config(family: str = "digits", family_config: dict[str, Any] | None = None,
                optimizers: Sequence[str] = ("sgd", "adam", "sam"),
                hparams: dict[str, dict[str, Any]] | None = None, **options: Any) -> dict[str, Any]:
    """Validate the arguments of a Stage I run (:class:`StageOneConfig`'s fields) and return
    the JSON-able config a store records."""
    return StageOneConfig.from_dict({"family": family, "family_config": dict(family_config or {}),
                                     "optimizers": list(optimizers), "hparams": dict(hparams or {}),
                                     **options}).store_config()


def plan_shards(config: dict[str, Any]) -> list[ShardPlan]:
    runs = [{"task_seed": t, "seed": s, "init_seed": _seed(config["seed"], t, s)}
            for t in range(config["task_start"], config["task_start"] + config["tasks"])
            for s in range(config["seeds"])]
    plans, n = [], config["shard_runs"]
    for opt in config["optimizers"]:
        for lo in range(0, len(runs), n):
            plans.append(ShardPlan(len(plans), opt, runs[lo:lo + n]))
    return plans


def _shard_done(out: Path, plan: ShardPlan) -> dict[str, Any] | None:
    """The shard's record if the shard is complete and intact, else None."""
    rec_path, file = out / SHARD_DIR / plan.record_file, out / SHARD_DIR / plan.file
    if not (rec_path.exists() and file.exists()):
        return None
    try:
        record = read_json(rec_path, "shard record", sealed=True)
    except LohpError:  # damaged or edited: the shard is run again
        return None
    if record.get("sha256") != sha256_file(file) or record.get("runs_spec") != plan.runs:
        return None
    return record


def _build_manifest(config: dict[str, Any], layout: dict[str, Any], records: list[dict[str, Any]],
                    total: int, metric_name: str, task_info: dict[int, dict[str, Any]]) -> dict[str, Any]:
    shards, trajectories = [], []
    for si, rec in enumerate(records):
        shards.append({k: rec[k] for k in ("file", "sha256", "runs", "records", "optimizer", "train_seconds")})
        for j, run in enumerate(rec["runs_spec"]):
            trajectories.append({
                "id": len(trajectories), "shard": si, "index": j, "family": config["family"],
                "split": config["split"], "task_seed": run["task_seed"],
                "task": task_info.get(run["task_seed"], {}), "optimizer": rec["optimizer"]["name"],
                "hparams": rec["optimizer"]["hparams"], "seed": run["seed"], "init_seed": run["init_seed"],
                "steps": rec["steps"], "record_every": config["record_every"],
                "metrics": {k: v[j] for k, v in rec["metrics"].items()},
            })
    return {"format": FORMAT, "config": config, "layout": layout, "metric_name": metric_name,
            "complete": len(records) == total, "shards_planned": total, "shards": shards,
            "trajectories": trajectories}


def claim_output(out: str | Path, config: dict[str, Any], overwrite: bool = False) -> Path:
    """Check that ``out`` may receive this store (new, same arguments, or --overwrite).

    Cheap and idempotent: the CLI calls it before showing a progress bar."""
    out = ensure_writable_dir(Path(out))
    if overwrite:
        for p in [*(out / SHARD_DIR).glob("shard-*"), out / MANIFEST, out / CONFIG]:
            p.unlink(missing_ok=True)
    elif (out / CONFIG).exists():
        old = read_json(out / CONFIG, "store config", sealed=True)
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise LohpError(f"{out} holds a store prepared with other arguments (differs in "
                            f"{', '.join(diff)}); use the same arguments to resume, another --out, "
                            "or --overwrite")
    elif any(p.name not in (SHARD_DIR, LOCK_FILE, READERS_FILE) and not p.name.startswith((f".{CONFIG}.", ".write-test."))
             for p in out.iterdir()):  # kill -9 leftovers
        raise LohpError(f"{out} is not empty and is not a lohp store; choose an empty --out "
                        "or pass --overwrite")
    return out


def compute_shard(config: dict[str, Any], plan: ShardPlan, device: str = "cpu", task: Callable[[int], Any] | None = None,
                  on_step: Callable[[int], None] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train one shard's runs: (tensors for its file, its record without file checksum).

    A pure function of (config, plan): the unit a local loop or a Ray task executes."""
    if task is None:
        family = make_family(config["family"], **config["family_config"])

        def task(seed: int):
            return family.sample(seed, config["split"])
    optimizer = make_optimizer(plan.optimizer["name"], **plan.optimizer["hparams"])
    tasks = [task(r["task_seed"]) for r in plan.runs]
    theta0 = torch.stack([t.init_theta(r["init_seed"], config["init"], config["init_sigma"])
                          for t, r in zip(tasks, plan.runs)])
    result = collect(tasks, optimizer, theta0, config["steps"], config["batch_size"], config["record_every"],
                     seed=_seed(config["seed"], 1, plan.index), device=device, on_step=on_step)
    tensors = {"theta": result.thetas, "steps": result.steps, "train_loss": result.train_loss,
               "eval_loss": result.eval_loss, "eval_metric": result.eval_metric}
    record = {"file": plan.file, "runs": len(plan.runs), "records": result.thetas.shape[1],
              "optimizer": plan.optimizer, "runs_spec": plan.runs, "steps": result.steps.tolist(),
              "train_seconds": result.train_seconds,
              "metrics": {"train_loss": result.train_loss.tolist(), "eval_loss": result.eval_loss.tolist(),
                          "eval_metric": result.eval_metric.tolist()}}
    return tensors, record


def write_shard(out: Path, plan: ShardPlan, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> dict[str, Any]:
    """The shard's tensors, then its record (with the file's checksum): each atomically."""
    path = out / SHARD_DIR / plan.file
    atomic_save_tensors(path, tensors, metadata={"format": FORMAT, "optimizer": plan.optimizer["name"]})
    record = {**record, "sha256": sha256_file(path), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(out / SHARD_DIR / plan.record_file, record, sealed=True)
    return record


EXECUTORS = ("local", "ray")


def check_store_tasks(config: dict[str, Any], seeds: Sequence[int] | None = None) -> Any:
    """Every task the store will train on (or those of ``seeds``) passes
    :func:`check_task_data`; returns the family."""
    family = make_family(config["family"], **config["family_config"])
    if seeds is None:
        seeds = range(config["task_start"], config["task_start"] + config["tasks"])
    for seed in seeds:
        check_task_data(family.sample(seed, config["split"]))
    return family


def check_task_data(task: Any) -> None:
    """One line naming the task, the split and the count when a task cannot be trained on:
    fewer than two classes, or NaN / inf in its features or its condition."""

    if task.n_classes < 2:
        raise LohpError(f"task {task.name} has {task.n_classes} class; a task needs at least 2 (n_way >= 2)")
    fix = "the family's data hold non-finite values: drop or impute those rows, then prepare again"
    for split, x in (("training", task.x_train), ("evaluation", task.x_eval)):
        check_finite(x, f"task {task.name}'s {split} split", fix)
    check_finite(task.condition(), f"task {task.name}'s condition (from its training split)", fix)


def check_store_size(out: str | Path, config: dict[str, Any], yes: bool = False) -> None:
    """Refuse (one line, before any work) a store that cannot fit: its estimated size on disk
    against the free space where it goes, one shard's records against the available memory."""
    family = make_family(config["family"], **config["family_config"])
    layout = family.sample(config["task_start"], config["split"]).layout
    value = torch.empty(0, dtype=layout.dtype).element_size()
    # len(recorded_steps(steps, record_every)) in closed form: building that list for --steps 1e9
    # is the very allocation this check exists to refuse
    records = config["steps"] // config["record_every"] + 1 + bool(config["steps"] % config["record_every"])
    runs = config["tasks"] * config["seeds"] * len(config["optimizers"])
    per_run = records * layout.size * value
    # the manifest lists every trajectory (about 1 KB each), and the run plan is held in memory
    check_fits(f"this store ({runs:,} runs x {records:,} records x {layout.size:,} values)",
               runs * (per_run + 1000), free_disk(out), "disk", "lower --tasks, --seeds or --steps, or raise "
               "--record-every", yes)
    shard = min(config["shard_runs"], config["tasks"] * config["seeds"])
    # a shard's records, plus the optimizer state and gradients of its runs
    check_fits(f"one shard ({shard} runs x {records:,} records x {layout.size:,} values) and the run plan",
               shard * (per_run + 4 * layout.size * value) + runs * 1000, available_memory(), "memory",
               "lower --steps or --shard-runs, or raise --record-every", yes)


def prepare(out: str | Path, config: dict[str, Any], device: str = "cpu", overwrite: bool = False,
            progress: Callable[[int, int, str], None] | None = None, executor: str = "local",
            ray_address: str | None = None, ray_workers: int | None = None,
            progress_context: Callable[[], Any] | None = None, yes: bool = False) -> TrajectoryStore:
    """Run (or resume) Stage I into ``out`` and return the opened store.

    ``progress(done, total, text)`` is called with run-steps done so far; or
    ``progress_context()``, a context manager yielding that callback, is entered once every
    input is checked (so a progress bar never precedes an error); a store that cannot fit on
    disk or in memory is refused first (``yes``: run it anyway). ``executor="ray"`` runs
    each missing shard as one Ray task (``ray_address``: a cluster; default ``RAY_ADDRESS``
    or a local one; ``ray_workers``: at most this many shards at once); the driver writes
    shards and the manifest exactly as the local loop does.

    Every check runs once, before a folder is created: the executor (and the Ray address),
    the output, and the data of each task a missing shard trains on (a finished store
    samples no task data again).
    """
    if executor not in EXECUTORS:
        raise LohpError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if ray_workers is not None and ray_workers <= 0:
        raise LohpError(f"--ray-workers must be >= 1 (got {ray_workers})")
    if executor == "ray":
        check_ray(ray_address)
    out = Path(out)
    check_store_size(out, config, yes)  # ``--tasks 1000000000`` is refused here, not after minutes of planning
    # tasks of shards without a record (a record's checksum is verified under the lock)
    plans = plan_shards(config)
    pending = [p for p in plans if overwrite or not (out / SHARD_DIR / p.record_file).exists()]
    family = check_store_tasks(config, sorted({r["task_seed"] for p in pending for r in p.runs}))
    if not overwrite and out.exists():
        claim_output(out, config)  # a store made with other arguments: refused before the bar appears
    with OutputLock(out, "lohp prepare", replace=overwrite):
        out = claim_output(out, config, overwrite)
        if progress_context is None:
            return _prepare_locked(out, config, plans, family, device, progress, executor, ray_address, ray_workers)
        with progress_context() as bar:
            return _prepare_locked(out, config, plans, family, device, bar, executor, ray_address, ray_workers)


def _prepare_locked(out: Path, config: dict[str, Any], plans: list[ShardPlan], family: Any, device: str,
                    progress: Any, executor: str, ray_address: str | None, ray_workers: int | None
                    ) -> TrajectoryStore:
    (out / SHARD_DIR).mkdir(exist_ok=True)
    for stale in out.rglob(".*.tmp"):  # leftovers of a killed write; never part of the store
        stale.unlink(missing_ok=True)
    atomic_write_json(out / CONFIG, config, sealed=True)
    steps = config["steps"]
    task_cache: dict[int, Any] = {}

    def task(seed: int):
        if seed not in task_cache:
            task_cache[seed] = family.sample(seed, config["split"])
        return task_cache[seed]

    first = task(config["task_start"])
    layout = first.layout.to_dict()
    task_info = {}
    total_units = sum(len(p.runs) for p in plans) * steps
    done: dict[int, dict[str, Any]] = {}
    for plan in plans:
        record = _shard_done(out, plan)
        if record is not None:
            done[plan.index] = record

    def finish(plan: ShardPlan, record: dict[str, Any]) -> None:
        done[plan.index] = record
        if progress is not None:
            units = sum(len(plans[i].runs) for i in done) * steps
            progress(units, total_units, f"{plan.optimizer['name']} shard {plan.index + 1}/{len(plans)}")
        for r in plan.runs:
            task_info.setdefault(r["task_seed"], task(r["task_seed"]).info)
        records = [done[i] for i in sorted(done)]
        atomic_write_json(out / MANIFEST, _build_manifest(config, layout, records, len(plans),
                                                          first.metric_name, task_info), sealed=True)

    todo = [p for p in plans if p.index not in done]
    for plan in [p for p in plans if p.index in done]:
        finish(plan, done[plan.index])
    if executor == "ray":
        for plan, (tensors, record) in run_shards(compute_shard, config, todo, device, ray_address, ray_workers):
            finish(plan, write_shard(out, plan, tensors, record))
    else:
        for plan in todo:
            base = sum(len(plans[i].runs) for i in done) * steps

            def on_step(t: int, base: int = base, n: int = len(plan.runs), plan: ShardPlan = plan) -> None:
                if progress is not None and (t % 4 == 0 or t == steps):
                    progress(base + t * n, total_units, f"{plan.optimizer['name']} shard {plan.index + 1}/{len(plans)}")

            tensors, record = compute_shard(config, plan, device, task, on_step)
            finish(plan, write_shard(out, plan, tensors, record))
    return TrajectoryStore.open(out)
