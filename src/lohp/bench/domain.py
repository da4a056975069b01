"""``lohp bench domain``: leave-one-domain-out on rotated MNIST and rotated Fashion-MNIST.

For every (dataset, held-out angle), Stage I and policy training see only the other five
angles; evaluation tasks come from the held-out angle. The generated subset is the whole
MLP (``784 -> hidden -> n_way``). Rows carry ``dataset`` and ``domain`` (the held-out
angle, or ``mean`` over the held-out angles run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lohp.bench.baselines import SKEPTIC
from lohp.bench.harness import plot_accuracy_latency, plot_learning_curves
from lohp.bench.presets import MLP_POLICY, MLP_TRAIN
from lohp.bench.rows import Row, public_rows
from lohp.bench.runner import SCENARIO_COLUMNS, TableSpec, distinct, register_benchmark, result, rows_where
from lohp.bench.scenario import Part, ScenarioConfig, Variant, budget_variants, matching_variants, run_parts
from lohp.config import setting
from lohp.errors import LohpError
from lohp.tasks.images import ANGLES

DATASETS = {"mnist": "rotated-mnist", "fashion": "rotated-fashion"}


# The earlier SubTB hybrid at d = 25,285 needs to be mostly off-policy (beta 0.9) with K = 2
# rollouts to learn at all (docs/method.md, section 'Large d: why the SubTB hybrid collapses');
# the default lo-hp needs nothing.
HYBRID = {"lo-hp-v1": {"beta": 0.9, "rollouts": 2}}


def accuracy_latency_png(dataset: str) -> str:
    return f"domain_{dataset}_accuracy_latency.png"


def learning_curves_png(dataset: str, angle: str) -> str:
    return f"domain_{dataset}_{angle}_learning_curves.png"


def default_variants(budget: float = 100) -> list[Variant]:
    """Every learned method gets the same training-time budget (seconds, per seed)."""
    return (budget_variants(budget, policy_options=MLP_POLICY, train_options=MLP_TRAIN, loss_options=HYBRID)
            + matching_variants(budget, policy_options=MLP_POLICY, train_options=MLP_TRAIN,
                                loss_options=HYBRID.get("lo-hp")))


@dataclass
class DomainBenchConfig(ScenarioConfig):
    what = "bench domain"

    work: str = ScenarioConfig.default("work", "runs/bench-domain")
    store_tasks: int = setting(64, "Source tasks in Stage I (per held-out domain).")
    train_batch: int = ScenarioConfig.default("train_batch", 8)
    speedup_tasks: int = ScenarioConfig.default("speedup_tasks", 5)
    latency_repeats: int = ScenarioConfig.default("latency_repeats", 10)
    variants: list[Variant] = ScenarioConfig.default("variants", factory=default_variants)
    datasets: list[str] = setting(factory=lambda: ["mnist"], help="Comma-separated: mnist, fashion.")
    domains: list[int] = setting(factory=lambda: [0, 75],
                                 help="Held-out angles, comma-separated, from 0,15,30,45,60,75.")
    n_way: int = setting(5, "Classes per task.")
    hidden: int = setting(32, "Hidden units of the generated MLP.")
    family_options: dict[str, Any] = setting(factory=dict, help="Extra rotated-family options.")
    eval_tasks: int = setting(20, "Held-out tasks per held-out domain.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.datasets or not self.domains:
            raise LohpError("--datasets and --domains each need at least one value")
        bad = [d for d in self.datasets if d not in DATASETS]
        if bad:
            raise LohpError(f"unknown dataset {', '.join(bad)}; choose from {', '.join(DATASETS)}")
        bad = [str(a) for a in self.domains if a not in ANGLES]
        if bad:
            raise LohpError(f"unknown domain {', '.join(bad)}; the domains are the angles "
                            f"{', '.join(map(str, ANGLES))}")

    @classmethod
    def quick_config(cls) -> "DomainBenchConfig":
        return cls(work="runs/bench-domain-quick", datasets=["mnist"], domains=[0], store_tasks=16, steps=16,
                   train_batch=4, seeds=1, eval_tasks=6, speedup_tasks=2, latency_repeats=5,
                   variants=default_variants(15))


def run(cfg: DomainBenchConfig, note: Callable[[str], None] | None = None, train_progress=None) -> dict[str, Any]:
    t_start = time.perf_counter()
    parts = [Part(Path(cfg.work) / f"{ds}-{angle}", DATASETS[ds],
                  {"heldout_domain": angle, "n_way": cfg.n_way, "hidden": cfg.hidden, **cfg.family_options},
                  cfg.eval_tasks, ("adam", "sgd", "adam-n"), SKEPTIC,
                  tags={"dataset": ds, "domain": str(angle)}, label=f"{ds}, held-out {angle} degrees: ",
                  stage_note="Stage I on the other domains")
             for ds in cfg.datasets for angle in cfg.domains]
    done = run_parts(cfg, parts, note, train_progress)
    rows = [r for d in done for r in d.rows]
    families = {p.tags["dataset"]: d.store.family().config() for p, d in zip(parts, done)}
    return result("domain", cfg, public_rows(rows + mean_rows(rows)), t_start, families=families)


def mean_rows(rows: list[Row]) -> list[Row]:
    """Per dataset and method: the mean over held-out domains (``domain: "mean"``)."""
    out = []
    keys = list(dict.fromkeys((r.get("dataset"), r.method, r.k) for r in rows))
    for ds, method, k in keys:
        group = [r for r in rows if (r.get("dataset"), r.method, r.k) == (ds, method, k)]
        # Seed s's mean over domains, so the spread is still over seeds.
        per_seed = np.mean([r.seeds for r in group], axis=0).tolist()
        row = Row.over_seeds(method, per_seed, k=k, steps=group[0].steps,
                             accuracy_wide=(float(np.mean([r.accuracy_wide for r in group]))
                                            if all(r.accuracy_wide is not None for r in group) else None),
                             latency_ms=float(np.median([r.latency_ms for r in group])),
                             dataset=ds, domain="mean", domains=[r.get("domain") for r in group])
        if all(r.get("iterations_per_second") is not None for r in group):
            row.extra["iterations_per_second"] = float(np.mean([r.get("iterations_per_second") for r in group]))
        if all(r.time_to_accuracy_speedup is not None for r in group):
            row.time_to_accuracy_speedup = float(np.median([r.time_to_accuracy_speedup for r in group]))
        out.append(row)
    return out


def tables(result: dict[str, Any]) -> list[TableSpec]:
    out = []
    for ds in distinct(result["rows"], "dataset"):
        for dom in distinct(rows_where(result["rows"], dataset=ds), "domain"):
            what = "mean over held-out domains" if dom == "mean" else f"held-out domain {dom} degrees"
            out.append((f"domain generalization, rotated {ds}: {what}",
                        rows_where(result["rows"], dataset=ds, domain=dom), SCENARIO_COLUMNS))
    return out


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in distinct(result["rows"], "dataset"):
        path = directory / accuracy_latency_png(ds)
        plot_accuracy_latency(rows_where(result["rows"], dataset=ds, domain="mean"), path,
                              f"domain generalization: rotated {ds}, mean over held-out angles (whole MLP generated)")
        paths.append(path)
        for angle in distinct(rows_where(result["rows"], dataset=ds), "domain"):
            if angle == "mean":
                continue
            curves = directory / learning_curves_png(ds, angle)
            if plot_learning_curves(rows_where(result["rows"], dataset=ds, domain=angle), curves,
                                    f"domain {ds}, held-out {angle} deg: held-out accuracy vs training seconds"):
                paths.append(curves)
    return paths


HELP = """Leave-one-domain-out on rotated MNIST / Fashion-MNIST; the whole MLP is generated."""


register_benchmark("domain", DomainBenchConfig, run, tables, plots=plots, family_setting="family_options",
                   budget=lambda seconds: {"variants": default_variants(seconds)}, help=HELP)
