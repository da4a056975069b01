"""The benchmark registry: one entry per ``lohp bench`` command, with its hooks.

A benchmark module registers itself when imported::

    register_benchmark("transfer", TransferBenchConfig, run, tables=tables, plots=plots,
                       budget=lambda seconds: {"variants": default_variants(seconds)})

and the command line derives the command's options from the config dataclass, builds
``(config_cls.quick_config() or config_cls()).replace(**given settings)``, runs it under one progress
bar, prints every ``tables(result)`` entry ``(title, rows, columns)`` with
:func:`lohp.bench.harness.print_table`, then ``notes(result)`` lines, and writes the JSON
and ``plots(result, folder)``. File names (PNG names) belong to the module that writes them.
"""

from __future__ import annotations

import dataclasses
import time
from importlib.metadata import entry_points
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lohp.config import Config, setting, setting_help
from lohp.errors import LohpError

Columns = list[tuple[str, str, str]]          # (row key, header, format) as print_table takes them
TableSpec = tuple[str, list[dict[str, Any]], Columns]

# The spread every accuracy column shows: mean ± *sample* std over seeds (rows.mean_std).
ACCURACY = ("accuracy", "accuracy (mean ± sample std)", ".4f")

# The columns of every scenario table (bench transfer / few-shot / domain, lohp evaluate).
SCENARIO_COLUMNS: Columns = [("method", "method", ""), ("k", "k", ""), ("steps", "steps", ""), ACCURACY,
                             ("accuracy_wide", "acc. s0 x10", ".4f"), ("latency_ms", "ms steps", ".2f"),
                             ("latency_with_condition_ms", "ms +cond", ".2f"),
                             ("time_to_accuracy_speedup", "Adam time / ms+cond", ".1f"),
                             ("iterations_per_second", "train it/s", ".1f"), ("lr", "lr", "g")]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its settings, its run and how its result is shown.

    ``run(cfg, note, train_progress[, stage_progress])`` returns the JSON-able result;
    ``tables(result)`` the tables to print; ``plots(result, folder)`` the PNGs it wrote;
    ``notes(result)`` lines printed after the tables. ``--quick`` builds the config's
    ``quick_config()`` classmethod. Hooks of the command line: ``options(given, base)`` turns
    the given options into ``replace`` keywords; ``budget(seconds)`` the settings of
    ``--budget`` where it is not a field; ``family_setting`` the field ``--family-option``
    fills; ``check(cfg)`` fails early (before the progress bar)."""

    name: str
    config_cls: type
    run: Callable[..., dict[str, Any]]
    tables: Callable[[dict[str, Any]], list[TableSpec]]
    plots: Callable[[dict[str, Any], Path], list[Path]] | None = None
    notes: Callable[[dict[str, Any]], list[str]] | None = None
    options: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    budget: Callable[[float], dict[str, Any]] | None = None
    family_setting: str | None = None
    check: Callable[[Any], None] | None = None
    stage_progress: bool = False   # run(cfg, note, show, update): the bar itself for Stage I
    help: str | None = None        # the command's help (default: run's docstring)

    def config(self, quick: bool = False, given: dict[str, Any] | None = None) -> Any:
        """The settings of one run: the quick or default config with ``given`` replaced
        (``__post_init__`` validates the result)."""
        base = self.quick_config() if quick else self.config_cls()
        given = dict(given or {})
        if self.options is not None:
            given = self.options(given, base)
        return base.replace(**given) if given else base

    def quick_config(self) -> Any:
        """The ``--quick`` settings: the config class's ``quick_config()`` classmethod."""
        preset = getattr(self.config_cls, "quick_config", None)
        if not callable(preset):
            raise LohpError(f"lohp bench {self.name} has no --quick settings (its config class "
                            f"{self.config_cls.__name__} defines no quick_config() classmethod)")
        return preset()


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(name: str, config_cls: type, run: Callable[..., dict[str, Any]],
                       tables: Callable[[dict[str, Any]], list[TableSpec]], overwrite: bool = False,
                       **hooks: Any) -> Benchmark:
    """Add the benchmark ``name`` (another of that name is refused unless ``overwrite``);
    ``hooks`` as the fields of :class:`Benchmark`."""
    if name in BENCHMARKS and not overwrite:
        raise LohpError(f"a benchmark named {name!r} is already registered; pick another name or pass "
                        "overwrite=True")
    if "quick" in hooks:
        raise LohpError(f"register_benchmark({name!r}, ...) takes no quick hook: the --quick settings are the "
                        "config class's quick_config() classmethod")
    bench = Benchmark(name, config_cls, run, tables, **hooks)
    BENCHMARKS[name] = bench
    return bench


def benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise LohpError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}") from None


@dataclass
class BenchConfig(Config):
    """The settings every benchmark that keeps a resumable working folder shares (each
    scenario through :class:`lohp.bench.scenario.ScenarioConfig`, ``refine`` and ``cross``
    through :class:`StudyConfig`). A subclass gives an inherited setting its own default
    with :meth:`default` (same help text, same option), and its ``--quick`` settings with a
    ``quick_config()`` classmethod, the one preset name the runner calls."""

    what = "bench"

    work: str = setting("runs/bench", "Working folder (stores and policies; resumable).")
    device: str = setting("cpu", "torch device.")

    @classmethod
    def default(cls, name: str, value: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING) -> Any:
        """The inherited setting ``name`` with a subclass's own default (or ``factory``)::

            work: str = ScenarioConfig.default("work", "runs/bench-mine")
        """
        f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
        if f is None:
            raise LohpError(f"{cls.__name__} has no setting {name!r} to give a default")
        return setting(value, setting_help(f), factory=factory, cli=f.metadata.get("cli", True))


@dataclass
class StudyConfig(BenchConfig):
    """The settings of the studies that train one policy per method within a training-time
    budget, with one seed (``refine``, ``cross``)."""

    budget: float = setting(60.0, "Training seconds per policy (the same for every method).")
    seed: int = setting(0, "Seed of the policies, the starting weights and the minibatches.")
    quick: bool = setting(False, "The quick settings: each study's small version (recorded in the result).",
                          cli=False)

    def __post_init__(self) -> None:
        check_budget(self.budget)


def check_positive(cfg: Any) -> None:
    """Every whole-number setting of ``cfg`` must be > 0 (one line naming its option)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if type(value) is int and value <= 0:
            raise LohpError(f"--{f.name.replace('_', '-')} must be > 0 (got {value})")


def check_budget(budget: float | None) -> None:
    if budget is not None and not budget > 0:
        raise LohpError(f"--budget must be > 0 seconds (got {budget})")


def result(name: str, cfg: Any, rows: list[dict[str, Any]], t_start: float, **extra: Any) -> dict[str, Any]:
    """A benchmark's result: name, its config, ``extra``, the torch threads, rows, seconds."""
    return {"benchmark": name, "config": cfg.to_dict(), **extra, "threads": torch.get_num_threads(),
            "rows": rows, "seconds": time.perf_counter() - t_start}


def rows_where(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """The rows whose values equal ``match`` (e.g. ``dataset="fashion"``)."""
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def distinct(rows: list[dict[str, Any]], key: str) -> list[Any]:
    """The values of ``key`` over ``rows``, in order of first appearance."""
    return list(dict.fromkeys(r[key] for r in rows))


ENTRY_POINT_GROUP = "lohp.benchmarks"


def load_plugins() -> tuple[list[str], list[str]]:
    """Import the modules of installed ``lohp.benchmarks`` entry points (a package declaring
    ``[project.entry-points."lohp.benchmarks"] mine = "mypkg.bench"`` whose module calls
    :func:`register_benchmark`); each then is a ``lohp bench`` command. Returns the names
    loaded and one line per plugin that failed: a broken plugin costs its own command only."""
    loaded, failed = [], []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - a plugin can fail in any way; lohp still starts
            failed.append(f"benchmark plugin {ep.name!r} ({ep.value}) failed to load ({type(exc).__name__}: {exc}); "
                          "lohp bench runs without it: fix or uninstall that package")
            continue
        loaded.append(ep.name)
    return loaded, failed
