"""``lohp bench cross``: weights for architectures the policy never saw (the paper's open question 3).

A policy trained on one architecture generates for another one of the same structure
kind, where the structure can serve it (:func:`lohp.policy.structure.retarget`): a whole
MLP of another hidden width (``mlp-units``: the policy shares one network over hidden
units and pools them by their mean), a head with another class count (``class-rows``).
Each unseen architecture is compared, on the same held-out tasks and starting weights,
with a policy trained on that architecture (same method, same training-time budget) and
with Adam after T steps (learning rate tuned on source tasks of that architecture).

LoRA of another rank is not served: a ``lora-dims`` row holds ``2 x rank x modules +
classes`` values, so the rank is part of what the shared network reads (it is listed in
the JSON as not served, with the reason).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lohp.bench.presets import HEAD_POLICY, MLP_POLICY, MLP_TRAIN
from lohp.bench.harness import gradient_accuracy
from lohp.bench.runner import StudyConfig, TableSpec, register_benchmark
from lohp.bench.scenario import (
    budget_variants,
    policy_dir,
    s0_sampler,
    stage_one,
    task_metrics,
    train_variant,
    tune_adam,
)
from lohp.config import setting
from lohp.errors import LohpError
from lohp.generation import Generator
from lohp.optim import make_optimizer
from lohp.plotting import pyplot, save_figure


@dataclass
class CrossStudy:
    """One trained architecture and the unseen ones it generates for."""

    family: str
    base: dict[str, Any]           # family config shared by every architecture
    key: str                       # the family option that changes the architecture
    trained: Any
    unseen: list[Any]
    store_tasks: int = 64
    steps: int = 32
    batch_size: int = 32
    train_batch: int = 8
    eval_tasks: int = 20
    policy_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)


def _studies() -> dict[str, CrossStudy]:
    return {
        "mlp-width": CrossStudy("rotated-mnist", {"heldout_domain": 0, "n_way": 5}, "hidden", 32, [16, 64, 128],
                                policy_options=MLP_POLICY, train_options=MLP_TRAIN),
        "head-classes": CrossStudy("openclipart", {}, "n_way", 5, [3, 10], store_tasks=96, train_batch=16,
                                   policy_options=HEAD_POLICY),
    }


NOT_SERVED = [{"study": "lora-rank", "method": "lo-hp", "architecture": f"rank={r}", "trained": "rank=8",
               "served": False, "accuracy": None, "in_distribution_accuracy": None, "adam_accuracy": None,
               "reason": "a lora-dims row holds 2 x rank x modules + classes values per hidden dimension, so the "
                         "rank is part of what the shared network reads; train a policy on that rank"}
              for r in (4, 16)]


PNG = "cross.png"
COLUMNS = [("study", "study", ""), ("architecture", "architecture", ""), ("trained", "policy trained on", ""),
           ("accuracy", "cross acc.", ".4f"), ("in_distribution_accuracy", "in-dist. acc.", ".4f"),
           ("ratio_to_in_distribution", "ratio", ".3f"), ("adam_accuracy", "Adam-T acc.", ".4f")]


@dataclass
class CrossBenchConfig(StudyConfig):
    """``quick``: small studies (fewer tasks and steps, the widest unseen architecture)."""

    what = "bench cross"

    work: str = StudyConfig.default("work", "runs/bench-cross")
    studies: list[str] = setting(factory=lambda: ["mlp-width", "head-classes"],
                                 help="Comma-separated: mlp-width, head-classes.")
    method: str = setting("lo-hp", "The method every policy is trained with.")

    def __post_init__(self) -> None:
        known = _studies()
        if not self.studies:
            raise LohpError(f"--studies needs at least one of {', '.join(known)}")
        bad = [s for s in self.studies if s not in known]
        if bad:
            raise LohpError(f"unknown cross study {', '.join(bad)}; choose from {', '.join(known)}")
        super().__post_init__()

    @classmethod
    def quick_config(cls) -> "CrossBenchConfig":
        return cls(work="runs/bench-cross-quick", budget=10.0, quick=True)


def run_study(name: str, cfg: CrossBenchConfig, note: Callable[[str], None], progress=None) -> list[dict[str, Any]]:
    st = _studies()[name]
    if cfg.quick:
        st.store_tasks, st.steps, st.eval_tasks, st.unseen = 16, 16, 6, st.unseen[-1:]
    work = Path(cfg.work) / name
    [variant] = budget_variants(cfg.budget, [cfg.method], policy_options=st.policy_options,
                                train_options=st.train_options)
    policies: dict[Any, Generator] = {}
    stores, iterations = {}, {}
    for arch in [st.trained, *st.unseen]:
        label = f"{st.key}={arch}"
        note(f"{name}: Stage I and a {cfg.method} policy for {label}")
        stores[arch] = stage_one(work / label, st.family, {**st.base, st.key: arch}, st.store_tasks, st.steps,
                                 st.batch_size, device=cfg.device)
        res = train_variant(work / label, stores[arch], variant, cfg.seed, 1_000_000, st.train_batch, note,
                            cfg.device, progress)
        iterations[arch] = int(res.get("iteration", 0))
        policies[arch] = Generator.load(policy_dir(work / label, variant, cfg.seed), cfg.device)
    rows = []
    for arch in [st.trained, *st.unseen]:
        store = stores[arch]
        family = store.family()
        tasks = family.heldout_tasks(st.eval_tasks)
        s0 = s0_sampler(tasks, store)(cfg.seed)
        note(f"{name}: {st.key}={arch}: generating, and Adam for {st.steps} steps")
        cross = float(np.mean(task_metrics(tasks, policies[st.trained].generate_batch(tasks, s0=s0))))
        own = float(np.mean(task_metrics(tasks, policies[arch].generate_batch(tasks, s0=s0))))
        hp = {o["name"]: dict(o["hparams"]) for o in store.config["optimizers"]}["adam"]
        hp, _ = tune_adam(family, hp, store.config["init"], store.config["init_sigma"], st.steps, st.batch_size,
                          n_tasks=8)
        adam, _ = gradient_accuracy(tasks, make_optimizer("adam", **hp), s0, st.steps, st.batch_size, cfg.seed)
        rows.append({"study": name, "method": cfg.method, "architecture": f"{st.key}={arch}",
                     "trained": f"{st.key}={st.trained}", "served": True, "in_distribution": arch == st.trained,
                     "accuracy": cross, "in_distribution_accuracy": own, "adam_accuracy": float(np.mean(adam)),
                     "adam_lr": hp["lr"], "ratio_to_in_distribution": cross / own if own else None,
                     "heldout_tasks": len(tasks), "d": tasks[0].layout.size,
                     "iterations": iterations[st.trained], "in_distribution_iterations": iterations[arch]})
    return rows


def run(cfg: CrossBenchConfig, note: Callable[[str], None] | None = None, train_progress=None) -> dict[str, Any]:
    note = note or (lambda s: None)
    t0 = time.perf_counter()
    rows = []
    for name in cfg.studies:
        rows += run_study(name, cfg, note, train_progress)
    served = [r for r in rows if r["served"] and not r["in_distribution"]]
    return {"benchmark": "cross", "budget_seconds": cfg.budget, "method": cfg.method, "seed": cfg.seed,
            "quick": cfg.quick, "threads": torch.get_num_threads(), "rows": rows + NOT_SERVED,
            "target": {"ratio_at_least_0.9": all(r["ratio_to_in_distribution"] >= 0.9 for r in served)
                       if served else None},
            "seconds": time.perf_counter() - t0}


def plots(result: dict[str, Any], folder: str | Path) -> list[Path]:
    plt = pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [r for r in result["rows"] if r["served"]]
    studies = list(dict.fromkeys(r["study"] for r in rows))
    fig, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 3.6), squeeze=False)
    for ax, study in zip(axes[0], studies):
        rs = [r for r in rows if r["study"] == study]
        x = np.arange(len(rs))
        for off, key, label in ((-0.25, "accuracy", f"policy trained on {rs[0]['trained']}"),
                                (0.0, "in_distribution_accuracy", "policy trained on this architecture"),
                                (0.25, "adam_accuracy", "Adam, T steps")):
            ax.bar(x + off, [r[key] for r in rs], width=0.25, label=label)
        ax.set_xticks(x, [r["architecture"] for r in rs], fontsize=8)
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"cross-architecture: {study}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = folder / PNG
    save_figure(fig, path, dpi=110)
    return [path]


def tables(result: dict[str, Any]) -> list[TableSpec]:
    return [(f"cross-architecture generation ({result['method']}, {result['budget_seconds']:g} s per policy)",
             [r for r in result["rows"] if r["served"]], COLUMNS)]


def notes(result: dict[str, Any]) -> list[str]:
    return [f"not served: {r['architecture']} ({r['study']}): {r['reason']}" for r in result["rows"] if not r["served"]]


HELP = """Cross-architecture generation: a policy serves MLP widths / class counts it never saw.

    Each unseen architecture beside a policy trained on it and Adam after T steps."""


register_benchmark("cross", CrossBenchConfig, run, tables, plots=plots, notes=notes, help=HELP)
