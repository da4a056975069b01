"""``lohp bench few-shot``: 5-way 1-shot and 5-shot episodes from held-out Openclipart classes.

For each shot count, Stage I trains heads on episodes from the source classes (the
support set is the whole training split) and the policies learn from those; evaluation
is on ``episodes`` held-out episodes, each head generated from its support set alone and
scored on 15 queries per class. Accuracy carries a 95 % confidence interval over episodes
(seed 0), beside the spread over seeds.
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
from lohp.bench.scenario import Part, ScenarioConfig, Variant, budget_variants, ci95, run_parts
from lohp.config import setting
from lohp.errors import LohpError

# The table's columns: a 95 % CI over episodes where the scenario table has the wide-s_0 accuracy.
COLUMNS = SCENARIO_COLUMNS[:4] + [("ci95", "95% CI ±", ".4f")] + SCENARIO_COLUMNS[5:]


def accuracy_latency_png(shots: int) -> str:
    return f"few_shot_{shots}shot_accuracy_latency.png"


def learning_curves_png(shots: int) -> str:
    return f"few_shot_{shots}shot_learning_curves.png"


def default_variants(budget: float = 45) -> list[Variant]:
    """Every learned method gets the same training-time budget (seconds, per seed)."""
    return budget_variants(budget, policy_options=HEAD_POLICY)


@dataclass
class FewShotBenchConfig(ScenarioConfig):
    what = "bench few-shot"

    work: str = ScenarioConfig.default("work", "runs/bench-few-shot")
    store_tasks: int = setting(96, "Source episodes in Stage I (per shot count).")
    batch_size: int = ScenarioConfig.default("batch_size", 16)
    speedup_tasks: int = setting(10, "Episodes of the time-to-accuracy speedup.")
    variants: list[Variant] = ScenarioConfig.default("variants", factory=default_variants)
    n_way: int = setting(5, "Classes per episode.")
    family_options: dict[str, Any] = setting(factory=dict, help="Extra openclipart options.")
    shots: list[int] = setting(factory=lambda: [1, 5], help="Shot counts, comma-separated.")
    queries: int = setting(15, "Query examples per class.")
    target_shots: int | None = setting(5, "Source episodes of a shot count below this train Stage I on this many "
                                          "images per class while their condition sees the support set (the "
                                          "openclipart option target_shots); none = off.")
    episodes: int = setting(600, "Held-out test episodes per shot count.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.shots or min(self.shots) <= 0:
            raise LohpError(f"--shots takes shot counts >= 1, e.g. 1,5 (got {self.shots})")

    @classmethod
    def quick_config(cls) -> "FewShotBenchConfig":
        return cls(work="runs/bench-few-shot-quick", store_tasks=24, steps=16, train_batch=8, seeds=1, episodes=40,
                   speedup_tasks=3, latency_repeats=10, variants=default_variants(15))


def run(cfg: FewShotBenchConfig, note: Callable[[str], None] | None = None, train_progress=None) -> dict[str, Any]:
    t_start = time.perf_counter()
    def target(shots: int) -> dict[str, Any]:
        return {"target_shots": cfg.target_shots} if cfg.target_shots and cfg.target_shots > shots else {}

    parts = [Part(Path(cfg.work) / f"{shots}-shot", "openclipart",
                  {"n_way": cfg.n_way, "shots": shots, "queries": cfg.queries, **target(shots), **cfg.family_options},
                  cfg.episodes,
                  ("adam", "adam-n"), SKEPTIC,
                  tags={"shots": shots, "episodes": cfg.episodes}, row_tags=lambda r: {"ci95": ci95(r.per_task)},
                  label=f"{shots}-shot: ", stage_note="Stage I on source episodes")
             for shots in cfg.shots]
    done = run_parts(cfg, parts, note, train_progress)
    family = done[-1].store.family() if done else None
    return result("few-shot", cfg, public_rows([r for d in done for r in d.rows]), t_start,
                  family=family.config() if family else None, heldout_classes=len(family.heldout_classes))


def tables(result: dict[str, Any]) -> list[TableSpec]:
    out = []
    for shots in sorted({r["shots"] for r in result["rows"]}):
        rows = rows_where(result["rows"], shots=shots)
        out.append((f"few-shot: 5-way {shots}-shot, {rows[0]['episodes']} held-out episodes", rows, COLUMNS))
    return out


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for shots in sorted({r["shots"] for r in result["rows"]}):
        rows = rows_where(result["rows"], shots=shots)
        path = directory / accuracy_latency_png(shots)
        plot_accuracy_latency(rows, path, f"few-shot: 5-way {shots}-shot held-out Openclipart episodes")
        paths.append(path)
        curves = directory / learning_curves_png(shots)
        if plot_learning_curves(rows, curves, f"few-shot {shots}-shot: held-out accuracy vs training seconds"):
            paths.append(curves)
    return paths


HELP = """5-way 1-shot and 5-shot episodes from held-out Openclipart classes (95 % CI over episodes)."""


register_benchmark("few-shot", FewShotBenchConfig, run, tables, plots=plots, family_setting="family_options",
                   budget=lambda seconds: {"variants": default_variants(seconds)}, help=HELP)
