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

from lohp.bench.harness import plot_accuracy_latency
from lohp.bench.scenario import (Variant, budgeted, closed_form_row, gradient_rows, learned_row, probe_accuracy,
                                 prototype_accuracy,
                                 public, s0_sampler, speedup, stage_one)
from lohp.tasks import make_family


# Heads on 1,280 features: rows of 1,281 values, cut into tokens of 64 (20 tokens a class);
# a learned gain on the class-mean condition lets a short budget reach prototype-like heads.
HEAD_POLICY = {"token_size": 64, "condition_skip": True}


def default_variants(budget: float = 150) -> list[Variant]:
    """Every learned method gets the same wall-clock training budget (seconds, per seed)."""
    opts = dict(policy_options=HEAD_POLICY, train_options=budgeted(budget))
    return [Variant("hypernetwork", "hypernetwork", k=0, **opts), Variant("lo-di", "lo-di", **opts),
            Variant("lo-di-noise", "lo-di-noise", **opts), Variant("lo-op", "lo-op", **opts), Variant("lo-hp", "lo-hp", **opts)]


@dataclass
class TransferBenchConfig:
    work: str = "runs/bench-transfer"
    n_way: int = 5
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
    store = stage_one(work, "openclipart", {"n_way": cfg.n_way}, cfg.store_tasks, cfg.steps, cfg.batch_size,
                      device=cfg.device)
    hp = {o["name"]: o["hparams"] for o in store.config["optimizers"]}
    T = cfg.steps
    tasks = store.family().heldout_tasks(cfg.eval_tasks)
    cross = make_family("fashion", n_way=cfg.n_way).heldout_tasks(cfg.cross_tasks)
    s0_for, s0_cross = s0_sampler(tasks, store), s0_sampler(cross, store)
    baselines = [("adam", "adam", T), ("sgd", "sgd", T), ("adam-n", "adam", T // 2)]

    rows = gradient_rows(tasks, hp, s0_for, cfg.seeds, T, cfg.batch_size, baselines, note)
    note("linear probe and prototype classifier")
    rows += [closed_form_row("linear-probe", tasks, probe_accuracy), closed_form_row("prototype", tasks, prototype_accuracy)]
    cross_rows = gradient_rows(cross, hp, s0_cross, cfg.seeds, T, cfg.batch_size, baselines[:1], note)
    cross_rows += [closed_form_row("linear-probe", cross, probe_accuracy),
                   closed_form_row("prototype", cross, prototype_accuracy)]
    for v in cfg.variants:
        row, extra = learned_row(work, store, v, tasks, s0_for, cfg.seeds, 0, cfg.train_batch, note,
                                 cfg.device, cfg.latency_repeats, progress=train_progress,
                                 extra_tasks={"fashion": (cross, s0_cross)})
        if v.method == "lo-hp":
            note("time-to-accuracy of Adam vs lo-hp")
            row.update(speedup(tasks, s0_for(0), row["per_task"], hp["adam"], row["latency_ms"], T, cfg.speedup_tasks))
        rows.append(row)
        cross_rows.append(extra["fashion"])
    for r in rows:
        r["dataset"] = "openclipart"
    for r in cross_rows:
        r["dataset"] = "fashion"
    return {"benchmark": "transfer", "config": {**asdict(cfg), "variants": [asdict(v) for v in cfg.variants]},
            "family": store.family().config(), "heldout_tasks": len(tasks), "cross_tasks": len(cross),
            "threads": torch.get_num_threads(), "rows": public(rows + cross_rows),
            "seconds": time.perf_counter() - t_start}


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "transfer_accuracy_latency.png"
    plot_accuracy_latency([r for r in result["rows"] if r["dataset"] == "openclipart"], path,
                          "transfer: Openclipart held-out classes, EfficientNet-Lite0 features")
    return [path]
