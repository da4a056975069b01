"""``lohp bench transfer``: linear heads on frozen EfficientNet-Lite0 features.

Source tasks come from the source Openclipart classes, evaluation tasks from the
held-out classes; the same policies are then applied, unchanged, to Fashion-MNIST tasks
(the cross-dataset rows, ``dataset: "fashion"``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lohp.bench.baselines import SKEPTIC
from lohp.bench.harness import plot_accuracy_latency, plot_learning_curves
from lohp.bench.presets import HEAD_POLICY
from lohp.bench.rows import public_rows
from lohp.bench.runner import SCENARIO_COLUMNS, TableSpec, register_benchmark, result, rows_where
from lohp.bench.scenario import Part, ScenarioConfig, Variant, budget_variants, matching_variants, run_parts
from lohp.config import setting
from lohp.tasks import make_family

ACCURACY_LATENCY_PNG = "transfer_accuracy_latency.png"
LEARNING_CURVES_PNG = "transfer_learning_curves.png"


def default_variants(budget: float = 120) -> list[Variant]:
    """Every learned method gets the same training-time budget (seconds, per seed)."""
    return (budget_variants(budget, policy_options=HEAD_POLICY)
            + matching_variants(budget, policy_options=HEAD_POLICY))


@dataclass
class TransferBenchConfig(ScenarioConfig):
    what = "bench transfer"

    work: str = ScenarioConfig.default("work", "runs/bench-transfer")
    variants: list[Variant] = ScenarioConfig.default("variants", factory=default_variants)
    n_way: int = setting(5, "Classes per task.")
    family_options: dict[str, Any] = setting(factory=dict, help="Extra openclipart options.")
    eval_tasks: int = setting(40, "Held-out Openclipart tasks.")
    cross_tasks: int = setting(40, "Held-out Fashion-MNIST tasks (cross-dataset).")

    @classmethod
    def quick_config(cls) -> "TransferBenchConfig":
        return cls(work="runs/bench-transfer-quick", store_tasks=24, steps=16, train_batch=8, seeds=1, eval_tasks=10,
                   cross_tasks=10, speedup_tasks=3, latency_repeats=10, variants=default_variants(15))


def run(cfg: TransferBenchConfig, note: Callable[[str], None] | None = None, train_progress=None) -> dict[str, Any]:
    t_start = time.perf_counter()
    part = Part(Path(cfg.work), "openclipart", {"n_way": cfg.n_way, **cfg.family_options}, cfg.eval_tasks,
                ("adam", "sgd", "adam-n"), SKEPTIC,
                tags={"dataset": "openclipart"}, order_on_lohp=False,
                stage_note="Stage I: preparing the store (features are computed once and cached)",
                cross=lambda: [({"dataset": "fashion"},
                                make_family("fashion", n_way=cfg.n_way).heldout_tasks(cfg.cross_tasks))])
    [res] = run_parts(cfg, [part], note, train_progress)
    return result("transfer", cfg, public_rows(res.rows + res.cross_rows), t_start, family=res.store.family().config(),
                  heldout_tasks=len(res.tasks), cross_tasks=len(res.cross_tasks[0]), adam_tuning=res.tuning,
                  ablation_order=res.order)


def tables(result: dict[str, Any]) -> list[TableSpec]:
    return [(f"transfer, {result['heldout_tasks']} held-out Openclipart tasks",
             rows_where(result["rows"], dataset="openclipart"), SCENARIO_COLUMNS),
            (f"transfer, cross-dataset: {result['cross_tasks']} Fashion-MNIST tasks, same policies",
             rows_where(result["rows"], dataset="fashion"), SCENARIO_COLUMNS)]


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rows = rows_where(result["rows"], dataset="openclipart")
    path = directory / ACCURACY_LATENCY_PNG
    plot_accuracy_latency(rows, path, "transfer: Openclipart held-out classes, EfficientNet-Lite0 features")
    paths = [path]
    curves = directory / LEARNING_CURVES_PNG
    if plot_learning_curves(rows, curves, "transfer: held-out accuracy vs training seconds"):
        paths.append(curves)
    return paths


HELP = """Linear heads on frozen EfficientNet-Lite0 features: held-out Openclipart classes, and Fashion-MNIST."""


register_benchmark("transfer", TransferBenchConfig, run, tables, plots=plots, family_setting="family_options",
                   budget=lambda seconds: {"variants": default_variants(seconds)}, help=HELP)
