"""``lohp bench few-shot``: 5-way 1-shot and 5-shot episodes from held-out Openclipart classes.

For each shot count, Stage I trains heads on episodes from the source classes (the
support set is the whole training split) and the policies learn from those; evaluation
is on ``episodes`` held-out episodes, each head generated from its support set alone and
scored on 15 queries per class. Accuracy carries a 95 % confidence interval over episodes
(seed 0), beside the spread over seeds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lohp.bench.harness import plot_accuracy_latency, plot_learning_curves
from lohp.bench.scenario import (
    Variant,
    ablation_order,
    baseline_hparams,
    budget_variants,
    ci95,
    closed_form_row,
    gradient_rows,
    learned_row,
    probe_accuracy,
    prototype_rows,
    public,
    s0_sampler,
    speedup,
    stage_one,
)

# Heads on 1,280 features: rows of 1,281 values, cut into tokens of 64 (20 tokens a class);
# the policy steps on the surrogate gradient of the support-set class means.
HEAD_POLICY = {"token_size": 64}


def default_variants(budget: float = 45) -> list[Variant]:
    """Every learned method gets the same training-time budget (seconds, per seed)."""
    return budget_variants(budget, policy_options=HEAD_POLICY)


@dataclass
class FewShotBenchConfig:
    work: str = "runs/bench-few-shot"
    n_way: int = 5
    family_options: dict[str, Any] = field(default_factory=dict)  # extra openclipart options
    shots: list[int] = field(default_factory=lambda: [1, 5])
    queries: int = 15
    store_tasks: int = 96
    steps: int = 32
    batch_size: int = 16
    train_batch: int = 16
    seeds: int = 3
    episodes: int = 600
    speedup_tasks: int = 10
    latency_repeats: int = 30
    device: str = "cpu"
    variants: list[Variant] = field(default_factory=default_variants)

    @classmethod
    def quick(cls, work: str = "runs/bench-few-shot-quick") -> "FewShotBenchConfig":
        return cls(work=work, store_tasks=24, steps=16, train_batch=8, seeds=1, episodes=40,
                   speedup_tasks=3, latency_repeats=10,
                   variants=default_variants(15))


def run(cfg: FewShotBenchConfig, note: Callable[[str], None] | None = None, train_progress=None) -> dict[str, Any]:
    note = note or (lambda s: None)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    family = None
    for shots in cfg.shots:
        work = Path(cfg.work) / f"{shots}-shot"
        note(f"{shots}-shot: Stage I on source episodes")
        store = stage_one(work, "openclipart", {"n_way": cfg.n_way, "shots": shots, "queries": cfg.queries, **cfg.family_options},
                          cfg.store_tasks, cfg.steps, cfg.batch_size, device=cfg.device)
        family = store.family()
        T = cfg.steps
        hp, _ = baseline_hparams(store, T, cfg.batch_size, note)
        episodes = family.heldout_tasks(cfg.episodes)
        s0_for = s0_sampler(episodes, store)
        part = gradient_rows(episodes, hp, s0_for, cfg.seeds, T, cfg.batch_size,
                             [("adam", "adam", T), ("adam-n", "adam", T // 2)], note)
        part += [closed_form_row("linear-probe", episodes, probe_accuracy), *prototype_rows(episodes)]
        for v in cfg.variants:
            row, _ = learned_row(work, store, v, episodes, s0_for, cfg.seeds, 0, cfg.train_batch, note,
                                 cfg.device, cfg.latency_repeats, progress=train_progress)
            if v.method == "lo-hp":
                note(f"{shots}-shot: time-to-accuracy of Adam vs lo-hp")
                row.update(speedup(episodes, s0_for(0), row["per_task"], hp["adam"], row["latency_ms"], T,
                                   cfg.speedup_tasks))
            part.append(row)
        order = ablation_order(part)
        for r in part:
            r.update({"shots": shots, "episodes": len(episodes), "ci95": ci95(r["per_task"])})
            if r["method"] == "lo-hp":
                r["ablation_order_held"] = order["held"]
        rows += part
    return {"benchmark": "few-shot", "config": {**asdict(cfg), "variants": [asdict(v) for v in cfg.variants]},
            "family": family.config() if family else None, "heldout_classes": len(family.heldout_classes),
            "threads": torch.get_num_threads(), "rows": public(rows), "seconds": time.perf_counter() - t_start}


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for shots in sorted({r["shots"] for r in result["rows"]}):
        path = directory / f"few_shot_{shots}shot_accuracy_latency.png"
        plot_accuracy_latency([r for r in result["rows"] if r["shots"] == shots], path,
                              f"few-shot: 5-way {shots}-shot held-out Openclipart episodes")
        paths.append(path)
        curves = directory / f"few_shot_{shots}shot_learning_curves.png"
        if plot_learning_curves([r for r in result["rows"] if r["shots"] == shots], curves,
                                f"few-shot {shots}-shot: held-out accuracy vs training seconds"):
            paths.append(curves)
    return paths
