"""``lohp bench transfer``: linear heads on frozen EfficientNet-Lite0 features.

Source tasks come from the source Openclipart classes, evaluation tasks from the
held-out classes; the same policies are then applied, unchanged, to Fashion-MNIST tasks
(the cross-dataset rows, ``dataset: "fashion"``).
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
from lohp.tasks import make_family

# Heads on 1,280 features: rows of 1,281 values, cut into tokens of 64 (20 tokens a class);
# the policy steps on the surrogate gradient of the class means (the default head features).
HEAD_POLICY = {"token_size": 64}


def default_variants(budget: float = 120) -> list[Variant]:
    """Every learned method gets the same training-time budget (seconds, per seed)."""
    return budget_variants(budget, policy_options=HEAD_POLICY)


@dataclass
class TransferBenchConfig:
    work: str = "runs/bench-transfer"
    n_way: int = 5
    family_options: dict[str, Any] = field(default_factory=dict)  # extra openclipart options
    store_tasks: int = 96
    steps: int = 32
    batch_size: int = 32
    train_batch: int = 16
    seeds: int = 3
    eval_tasks: int = 40
    cross_tasks: int = 40
    speedup_tasks: int = 10
    latency_repeats: int = 30
    device: str = "cpu"
    variants: list[Variant] = field(default_factory=default_variants)

    @classmethod
    def quick(cls, work: str = "runs/bench-transfer-quick") -> "TransferBenchConfig":
        return cls(work=work, store_tasks=24, steps=16, train_batch=8, seeds=1, eval_tasks=10,
                   cross_tasks=10, speedup_tasks=3, latency_repeats=10,
                   variants=default_variants(15))


def run(cfg: TransferBenchConfig, note: Callable[[str], None] | None = None, train_progress=None) -> dict[str, Any]:
    note = note or (lambda s: None)
    t_start = time.perf_counter()
    work = Path(cfg.work)
    note("Stage I: preparing the store (features are computed once and cached)")
    store = stage_one(work, "openclipart", {"n_way": cfg.n_way, **cfg.family_options}, cfg.store_tasks, cfg.steps, cfg.batch_size,
                      device=cfg.device)
    T = cfg.steps
    hp, tuning = baseline_hparams(store, T, cfg.batch_size, note)
    tasks = store.family().heldout_tasks(cfg.eval_tasks)
    cross = make_family("fashion", n_way=cfg.n_way).heldout_tasks(cfg.cross_tasks)
    s0_for, s0_cross = s0_sampler(tasks, store), s0_sampler(cross, store)
    baselines = [("adam", "adam", T), ("sgd", "sgd", T), ("adam-n", "adam", T // 2)]

    rows = gradient_rows(tasks, hp, s0_for, cfg.seeds, T, cfg.batch_size, baselines, note)
    note("linear probe and prototype classifier")
    rows += [closed_form_row("linear-probe", tasks, probe_accuracy), *prototype_rows(tasks)]
    cross_rows = gradient_rows(cross, hp, s0_cross, cfg.seeds, T, cfg.batch_size, baselines[:1], note)
    cross_rows += [closed_form_row("linear-probe", cross, probe_accuracy), *prototype_rows(cross)]
    for v in cfg.variants:
        row, extra = learned_row(work, store, v, tasks, s0_for, cfg.seeds, 0, cfg.train_batch, note,
                                 cfg.device, cfg.latency_repeats, progress=train_progress,
                                 extra_tasks={"fashion": (cross, s0_cross)})
        if v.method == "lo-hp":
            note("time-to-accuracy of Adam vs lo-hp")
            row.update(speedup(tasks, s0_for(0), row["per_task"], hp["adam"], row["latency_ms"], T, cfg.speedup_tasks))
        rows.append(row)
        if "fashion" in extra:  # absent when every seed diverged
            cross_rows.append(extra["fashion"])
    for r in rows:
        r["dataset"] = "openclipart"
    for r in cross_rows:
        r["dataset"] = "fashion"
    return {"benchmark": "transfer", "config": {**asdict(cfg), "variants": [asdict(v) for v in cfg.variants]},
            "family": store.family().config(), "heldout_tasks": len(tasks), "cross_tasks": len(cross),
            "threads": torch.get_num_threads(), "rows": public(rows + cross_rows), "adam_tuning": tuning,
            "ablation_order": ablation_order(rows),
            "seconds": time.perf_counter() - t_start}


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "transfer_accuracy_latency.png"
    plot_accuracy_latency([r for r in result["rows"] if r["dataset"] == "openclipart"], path,
                          "transfer: Openclipart held-out classes, EfficientNet-Lite0 features")
    paths = [path]
    curves = directory / "transfer_learning_curves.png"
    if plot_learning_curves([r for r in result["rows"] if r["dataset"] == "openclipart"], curves,
                            "transfer: held-out accuracy vs training seconds"):
        paths.append(curves)
    return paths
