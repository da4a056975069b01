"""lohp bench ... and lohp demo: the benchmark commands."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.table import Table

from lohp.bench import cross as bc
from lohp.bench import digits as bd
from lohp.bench import l2o as bl2o
from lohp.bench import lora as blora
from lohp.bench import prepare as bp
from lohp.bench import refine as br
from lohp.bench.harness import print_table
from lohp.cli.common import (
    SCENARIO_COLUMNS,
    _check_outputs,
    _device,
    _digits_table,
    _run_bench,
    _run_digits_bench,
    _split_list,
    _write_outputs,
    app,
    bench_app,
    console,
    parse_family_options,
    progress_bar,
)
from lohp.errors import LohpError
from lohp.tasks import make_family
from lohp.trajectories.ray_executor import check_ray


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    work: Path = typer.Option(Path("runs/demo"), help="Working folder (store, policy, plots); resumable."),
    iterations: int = typer.Option(300, help="Policy training iterations."),
    device: str = typer.Option("cpu", help="torch device."),
) -> None:
    """The main job on the built-in digits default: prepare, train lo-hp, generate, compare."""

    cfg = bd.DigitsBenchConfig(work=str(work), store_tasks=48, steps=32, iterations=iterations, budget=None, seeds=1,
                               eval_tasks=20, speedup_tasks=5, device=_device(device),
                               variants=[bd.Variant("lo-di", "lo-di"), bd.Variant("lo-hp", "lo-hp")], l2o_methods=[])
    result = _run_digits_bench(cfg, "demo")
    _digits_table(result, "lohp demo: digits heads, held-out tasks")
    _write_outputs(result, work / "demo.json", None, "", None)
    for p in bd.plots(result, work):
        console.print(f"wrote {p}")


# --------------------------------------------------------------------------- bench digits
@bench_app.command("digits")
def bench_digits(
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    plot: Optional[Path] = typer.Option(None, help="Folder for the PNG plots."),
    quick: bool = typer.Option(False, help="Small settings that finish in a few minutes."),
    work: Optional[Path] = typer.Option(None, help="Working folder (store and policies; resumable)."),
    iterations: Optional[int] = typer.Option(None, help="Training iterations per policy (instead of --budget)."),
    budget: Optional[float] = typer.Option(None, help="Training seconds per policy and seed, the same for every "
                                                      "method (default 30; --quick uses 40 iterations)."),
    seeds: Optional[int] = typer.Option(None, help="Seeds per method."),
    device: str = typer.Option("cpu", help="torch device."),
) -> None:
    """Every method on held-out digits tasks: accuracy, robustness, latency, speedup."""

    _check_outputs(json_out, plot)
    if iterations is not None and budget is not None:
        raise LohpError("give either --iterations or --budget, not both")
    if budget is not None and not budget > 0:
        raise LohpError(f"--budget must be > 0 seconds (got {budget})")
    cfg = bd.DigitsBenchConfig.quick() if quick else bd.DigitsBenchConfig()
    if work is not None:
        cfg.work = str(work)
    if iterations is not None:
        cfg.iterations, cfg.budget = iterations, None
    if budget is not None:
        cfg.budget = budget
    if seeds is not None:
        cfg.seeds = seeds
    cfg.device = _device(device)
    result = _run_digits_bench(cfg, "bench digits")
    _digits_table(result, f"digits heads, {result['heldout_tasks']} held-out tasks, {cfg.seeds} seeds")
    _write_outputs(result, json_out, None, "", None)
    if plot is not None:
        for p in bd.plots(result, plot):
            console.print(f"wrote {p}")


# --------------------------------------------------------------------------- image scenarios


def _scenario_bench(module: str, config_cls: str, label: str, json_out: Optional[Path], plot: Optional[Path],
                    quick: bool, work: Optional[Path], budget: Optional[float], seeds: Optional[int], device: str,
                    **overrides: Any) -> tuple[dict[str, Any], Any]:

    mod = importlib.import_module(f"lohp.bench.{module}")
    _check_outputs(json_out, plot)
    cls = getattr(mod, config_cls)
    cfg = cls.quick() if quick else cls()
    if budget is not None:
        if budget <= 0:
            raise LohpError(f"--budget must be > 0 seconds (got {budget})")
        cfg.variants = mod.default_variants(budget)
    for key, value in (("work", str(work) if work else None), ("seeds", seeds), *overrides.items()):
        if value is None:
            continue
        if isinstance(value, int) and value <= 0:
            raise LohpError(f"--{key.replace('_', '-')} must be > 0 (got {value})")
        setattr(cfg, key, value)
    cfg.device = _device(device)
    if hasattr(cfg, "__post_init__"):
        cfg.__post_init__()  # re-validate after the overrides
    result = _run_bench(mod.run, cfg, label)
    _write_outputs(result, json_out, None, "", None)
    return result, mod


def _print_plots(mod: Any, result: dict[str, Any], plot: Optional[Path]) -> None:
    if plot is not None:
        for p in mod.plots(result, plot):
            console.print(f"wrote {p}")


_BENCH_OPTIONS = dict(
    json_out=typer.Option(None, "--json", help="Write the results here."),
    plot=typer.Option(None, help="Folder for the PNG plots."),
    quick=typer.Option(False, help="Small settings (under 5 minutes on 2 cores)."),
    work=typer.Option(None, help="Working folder (stores and policies; resumable)."),
    budget=typer.Option(None, help="Training budget per learned policy and seed, in seconds (same for every method)."),
    seeds=typer.Option(None, help="Seeds per learned method."),
    device=typer.Option("cpu", help="torch device."),
    family_option=typer.Option(None, "--family-option", help="KEY=VALUE for the scenario's task family "
                                                              "(repeatable), e.g. per_class=20."),
)


@bench_app.command("transfer")
def bench_transfer(
    json_out: Optional[Path] = _BENCH_OPTIONS["json_out"], plot: Optional[Path] = _BENCH_OPTIONS["plot"],
    quick: bool = _BENCH_OPTIONS["quick"], work: Optional[Path] = _BENCH_OPTIONS["work"],
    budget: Optional[float] = _BENCH_OPTIONS["budget"], seeds: Optional[int] = _BENCH_OPTIONS["seeds"],
    device: str = _BENCH_OPTIONS["device"],
    family_option: Optional[list[str]] = _BENCH_OPTIONS["family_option"],
) -> None:
    """Linear heads on frozen EfficientNet-Lite0 features: held-out Openclipart classes, and Fashion-MNIST."""

    result, mod = _scenario_bench("transfer", "TransferBenchConfig", "bench transfer", json_out, plot, quick, work,
                                  budget, seeds, device, family_options=parse_family_options(family_option))
    for ds, what in (("openclipart", f"{result['heldout_tasks']} held-out Openclipart tasks"),
                     ("fashion", f"cross-dataset: {result['cross_tasks']} Fashion-MNIST tasks, same policies")):
        print_table([r for r in result["rows"] if r["dataset"] == ds], f"transfer, {what}", SCENARIO_COLUMNS, console)
    _print_plots(mod, result, plot)


@bench_app.command("few-shot")
def bench_few_shot(
    json_out: Optional[Path] = _BENCH_OPTIONS["json_out"], plot: Optional[Path] = _BENCH_OPTIONS["plot"],
    quick: bool = _BENCH_OPTIONS["quick"], work: Optional[Path] = _BENCH_OPTIONS["work"],
    budget: Optional[float] = _BENCH_OPTIONS["budget"], seeds: Optional[int] = _BENCH_OPTIONS["seeds"],
    device: str = _BENCH_OPTIONS["device"],
    family_option: Optional[list[str]] = _BENCH_OPTIONS["family_option"],
    episodes: Optional[int] = typer.Option(None, help="Held-out test episodes per shot count."),
) -> None:
    """5-way 1-shot and 5-shot episodes from held-out Openclipart classes (95 % CI over episodes)."""

    result, mod = _scenario_bench("fewshot", "FewShotBenchConfig", "bench few-shot", json_out, plot, quick, work,
                                  budget, seeds, device, episodes=episodes,
                                  family_options=parse_family_options(family_option))
    cols = SCENARIO_COLUMNS[:4] + [("ci95", "95% CI ±", ".4f")] + SCENARIO_COLUMNS[5:]
    for shots in sorted({r["shots"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["shots"] == shots]
        print_table(rows, f"few-shot: 5-way {shots}-shot, {rows[0]['episodes']} held-out episodes", cols, console)
    _print_plots(mod, result, plot)


@bench_app.command("domain")
def bench_domain(
    json_out: Optional[Path] = _BENCH_OPTIONS["json_out"], plot: Optional[Path] = _BENCH_OPTIONS["plot"],
    quick: bool = _BENCH_OPTIONS["quick"], work: Optional[Path] = _BENCH_OPTIONS["work"],
    budget: Optional[float] = _BENCH_OPTIONS["budget"], seeds: Optional[int] = _BENCH_OPTIONS["seeds"],
    device: str = _BENCH_OPTIONS["device"],
    family_option: Optional[list[str]] = _BENCH_OPTIONS["family_option"],
    datasets: Optional[str] = typer.Option(None, help="Comma-separated: mnist, fashion."),
    domains: Optional[str] = typer.Option(None, help="Held-out angles, comma-separated, from 0,15,30,45,60,75."),
) -> None:
    """Leave-one-domain-out on rotated MNIST / Fashion-MNIST; the whole MLP is generated."""

    angles = None
    if domains:
        try:
            angles = [int(a) for a in _split_list(domains)]
        except ValueError:
            raise LohpError(f"--domains takes angles like 0,75 (got {domains!r})") from None
    result, mod = _scenario_bench("domain", "DomainBenchConfig", "bench domain", json_out, plot, quick, work,
                                  budget, seeds, device, datasets=_split_list(datasets) if datasets else None,
                                  family_options=parse_family_options(family_option),
                                  domains=angles)
    for ds in dict.fromkeys(r["dataset"] for r in result["rows"]):
        for dom in dict.fromkeys(r["domain"] for r in result["rows"] if r["dataset"] == ds):
            rows = [r for r in result["rows"] if r["dataset"] == ds and r["domain"] == dom]
            what = "mean over held-out domains" if dom == "mean" else f"held-out domain {dom} degrees"
            print_table(rows, f"domain generalization, rotated {ds}: {what}", SCENARIO_COLUMNS, console)
    _print_plots(mod, result, plot)


# --------------------------------------------------------------------------- refine
@bench_app.command("refine")
def bench_refine(
    json_out: Optional[Path] = _BENCH_OPTIONS["json_out"], plot: Optional[Path] = _BENCH_OPTIONS["plot"],
    quick: bool = _BENCH_OPTIONS["quick"], work: Optional[Path] = _BENCH_OPTIONS["work"],
    budget: Optional[float] = _BENCH_OPTIONS["budget"], device: str = _BENCH_OPTIONS["device"],
    scenarios: Optional[str] = typer.Option(None, help="Comma-separated: digits, transfer, few-shot, domain, lora "
                                                       "(default: all)."),
    seed: int = typer.Option(0, help="Seed of the policies, the starting weights and the minibatches."),
) -> None:
    """Generate-then-refine: Adam from the standard init vs from generated weights.

    Starts: the standard init, hypernetwork, lo-di and lo-hp weights; accuracy by gradient
    step and the steps each needs to reach 0.99 x Adam-from-scratch at T."""

    _check_outputs(json_out, plot)
    kw: dict[str, Any] = {"device": _device(device), "seed": seed}
    if scenarios:
        kw["scenarios"] = _split_list(scenarios)
    if work is not None:
        kw["work"] = str(work)
    if budget is not None:
        kw["budget"] = budget
    cfg = br.RefineBenchConfig.quick_config(**kw) if quick else br.RefineBenchConfig(**kw)
    result = _run_bench(br.run, cfg, "bench refine")
    steps = [str(s) for s in result["step_counts"]]
    cols = ([("method", "start", ""), ("lr", "lr", "g")] + [(f"acc@{s}", f"acc@{s}", ".3f") for s in steps]
            + [("steps_to_target", "steps to target", ""), ("wall_ms_to_target", "ms to target", ".1f")])
    for name, info in result["scenarios"].items():
        rows = [{**r, **{f"acc@{s}": r["accuracy_by_steps"].get(s) for s in steps}}
                for r in result["rows"] if r["scenario"] == name]
        print_table(rows, f"refine {name}: Adam steps from each start, {info['heldout_tasks']} held-out tasks; "
                          f"target {rows[0]['target_accuracy']:.3f} (0.99 x scratch at T={info['T']})", cols, console)
    _write_outputs(result, json_out, None, "", None)
    _print_plots(br, result, plot)


@bench_app.command("cross")
def bench_cross(
    json_out: Optional[Path] = _BENCH_OPTIONS["json_out"], plot: Optional[Path] = _BENCH_OPTIONS["plot"],
    quick: bool = _BENCH_OPTIONS["quick"], work: Optional[Path] = _BENCH_OPTIONS["work"],
    budget: Optional[float] = _BENCH_OPTIONS["budget"], device: str = _BENCH_OPTIONS["device"],
    studies: Optional[str] = typer.Option(None, help="Comma-separated: mlp-width, head-classes (default: both)."),
    method: str = typer.Option("lo-hp", help="The method every policy is trained with."),
    seed: int = typer.Option(0, help="Seed of the policies and the starting weights."),
) -> None:
    """Cross-architecture generation: a policy serves MLP widths / class counts it never saw.

    Each unseen architecture beside a policy trained on it and Adam after T steps."""

    _check_outputs(json_out, plot)
    kw: dict[str, Any] = {"device": _device(device), "seed": seed, "method": method, "quick": quick}
    if studies:
        kw["studies"] = _split_list(studies)
    kw["work"] = str(work) if work else ("runs/bench-cross-quick" if quick else "runs/bench-cross")
    if budget is not None:
        kw["budget"] = budget
    elif quick:
        kw["budget"] = 10.0
    result = _run_bench(bc.run, bc.CrossBenchConfig(**kw), "bench cross")
    cols = [("study", "study", ""), ("architecture", "architecture", ""), ("trained", "policy trained on", ""),
            ("accuracy", "cross acc.", ".4f"), ("in_distribution_accuracy", "in-dist. acc.", ".4f"),
            ("ratio_to_in_distribution", "ratio", ".3f"), ("adam_accuracy", "Adam-T acc.", ".4f")]
    print_table([r for r in result["rows"] if r["served"]], f"cross-architecture generation ({method}, "
                f"{result['budget_seconds']:g} s per policy)", cols, console)
    for r in result["rows"]:
        if not r["served"]:
            console.print(f"not served: {r['architecture']} ({r['study']}): {r['reason']}")
    _write_outputs(result, json_out, None, "", None)
    _print_plots(bc, result, plot)


# --------------------------------------------------------------------------- bench
@bench_app.command("prepare")
def bench_prepare(
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG bar chart here (file or folder)."),
    tasks: int = typer.Option(16, help="Tasks."),
    seeds: int = typer.Option(2, help="Seeds per task and optimizer."),
    steps: int = typer.Option(64, help="Steps per run."),
    batch_size: int = typer.Option(32, help="Minibatch size."),
    repeats: int = typer.Option(3, help="Timing repeats (best is kept)."),
    optimizers: str = typer.Option("sgd,adam,sam", help="Optimizers to time."),
    head: str = typer.Option("linear", help="linear or mlp."),
    quick: bool = typer.Option(False, help="Small workload for a fast check."),
    ray: bool = typer.Option(False, "--ray", help="Instead: Stage I on a local Ray cluster with 1 and 2 workers, "
                                                  "the same workload (ray_speedup)."),
) -> None:
    """Vectorised Stage I collector vs a per-run torch.optim loop (run-steps per second).

    With --ray: 1 vs 2 Ray workers on the same workload (ray_speedup)."""

    _check_outputs(json_out, plot)
    if quick:
        tasks, seeds, steps, repeats = 4, 2, 16, 1
    if ray:

        check_ray("local")
        with progress_bar("bench prepare --ray") as update:
            result = bp.run_ray(family_config={"head": head}, optimizers=tuple(_split_list(optimizers)), tasks=tasks,
                                seeds=seeds, steps=steps, batch_size=batch_size,
                                progress=lambda text: update(0, 0, text))
        table = Table(title=f"Stage I on Ray: {result['family']} {head} head, {result['shards']} shards of "
                            f"{result['shard_runs']} runs, {result['cpus']} CPUs")
        for col in ("executor", "workers", "seconds", "run-steps / s"):
            table.add_column(col, justify="right")
        for r in result["rows"]:
            table.add_row(r["executor"], str(r["workers"]), f"{r['seconds']:.1f}", f"{r['run_steps_per_s']:.0f}")
        console.print(table)
        console.print(f"ray_speedup (2 vs 1 workers): {result['ray_speedup']:.2f}x")
        _write_outputs(result, json_out, None, "", None)
        return
    with progress_bar("bench prepare") as update:
        opts = _split_list(optimizers)
        counter = {"n": 0}

        def note(text: str) -> None:
            update(counter["n"], 2 * repeats * len(opts), text)
            counter["n"] += 1

        result = bp.run(family_config={"head": head}, optimizers=tuple(opts), tasks=tasks, seeds=seeds,
                        steps=steps, batch_size=batch_size, repeats=repeats, progress=note)
        update(counter["n"], counter["n"], "done")
    table = Table(title=f"Stage I throughput: {result['family']} {head} head, d={result['parameters']}, "
                        f"batch {batch_size}, {result['threads']} threads")
    for col in ("optimizer", "runs x steps", "per-run loop (run-steps/s)", "vectorised (run-steps/s)", "speedup"):
        table.add_column(col, justify="right")
    for r in result["rows"] + [{"optimizer": "all", "runs": None, **{k: result[k] for k in (
            "loop_run_steps_per_s", "vectorised_run_steps_per_s", "speedup")}}]:
        table.add_row(r["optimizer"], f"{r['runs']} x {r['steps']}" if r["runs"] else "",
                      f"{r['loop_run_steps_per_s']:.0f}", f"{r['vectorised_run_steps_per_s']:.0f}",
                      f"{r['speedup']:.1f}x")
    console.print(table)
    _write_outputs(result, json_out, plot, "bench_prepare.png", bp.plot)


# --------------------------------------------------------------------------- bench lora
@bench_app.command("lora")
def bench_lora(
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    plot: Optional[Path] = typer.Option(None, help="Folder for the PNG plot."),
    quick: bool = typer.Option(False, help="Small settings (under 5 minutes on 2 cores)."),
    family: str = typer.Option("wordnet", help="Text family: wordnet or fortunes."),
    family_option: Optional[list[str]] = typer.Option(
        None, "--family-option", help="Family setting KEY=VALUE (repeatable), e.g. rank=4 or n_way=4."),
    work: Optional[Path] = typer.Option(None, help="Working folder (store and policies; resumable)."),
    iterations: Optional[int] = typer.Option(None, help="Training iterations per policy."),
    store_tasks: Optional[int] = typer.Option(None, help="Source tasks in Stage I."),
    eval_tasks: Optional[int] = typer.Option(None, help="Held-out tasks."),
    seeds: Optional[int] = typer.Option(None, help="Seeds per method."),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's; 1 on a busy machine)."),
    device: str = typer.Option("cpu", help="torch device."),
) -> None:
    """LoRA for MiniLM-L6 on held-out text tasks: fine-tuning, linear probe and every generator."""


    _check_outputs(json_out, plot)
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    cfg = blora.LoraBenchConfig.quick() if quick else blora.LoraBenchConfig()
    cfg.family, cfg.family_config = family, parse_family_options(family_option)
    if work is not None:
        cfg.work = str(work)
    for key, value in (("iterations", iterations), ("store_tasks", store_tasks), ("eval_tasks", eval_tasks),
                       ("seeds", seeds)):
        if value is not None:
            if value <= 0:
                raise LohpError(f"--{key.replace('_', '-')} must be > 0 (got {value})")
            setattr(cfg, key, value)
    cfg.device = _device(device)

    make_family(family, **cfg.family_config)  # a missing package or bad option fails before the progress bar
    result = _run_bench(blora.run, cfg, "bench lora", stage_progress=True)
    print_table(result["rows"], f"MiniLM-L6 LoRA ({result['parameters']} values), {result['heldout_tasks']} held-out "
                                f"{family} tasks, T={cfg.steps}, {cfg.seeds} seed(s)",
                [("method", "method", ""), ("k", "k", ""), ("steps", "steps", ""),
                 ("accuracy", "accuracy (mean ± sample std)", ".4f"), ("accuracy_wide", "acc. s0 x10", ".4f"),
                 ("latency_ms", "latency ms", ".1f"), ("time_to_accuracy_speedup", "speedup vs Adam", ".0f"),
                 ("iterations_per_second", "train it/s", ".2f")],
                console)
    console.print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["targets"].items()
                                          if v is not None) + f"; total {result['seconds']:.0f} s")
    _write_outputs(result, json_out, None, "", None)
    if plot is not None:
        for p in blora.plots(result, plot):
            console.print(f"wrote {p}")


# --------------------------------------------------------------------------- bench l2o
@bench_app.command("l2o")
def bench_l2o(
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    plot: Optional[Path] = typer.Option(None, help="Write the PNG (loss curves + accuracy) here (file or folder)."),
    quick: bool = typer.Option(False, help="Small settings (a few minutes)."),
    tasks: Optional[int] = typer.Option(None, help="Held-out tasks (full 30, quick 12)."),
    seeds: Optional[int] = typer.Option(None, help="Seeds per method (3)."),
    iterations: Optional[int] = typer.Option(None, help="Meta-updates per learned optimizer (full 400, quick 48)."),
    horizon: Optional[int] = typer.Option(None, help="Unroll length the L2O is meta-trained on = T for Adam/SGD (32)."),
    long_horizon: Optional[int] = typer.Option(None, help="Meta-test horizon beyond training (full 128, quick 64)."),
    truncation: Optional[int] = typer.Option(None, help="Truncated-BPTT segment length; must divide --horizon (8)."),
    meta_batch: Optional[int] = typer.Option(None, help="Source tasks per meta-training episode (full 8, quick 6)."),
    target: str = typer.Option("optimizee", help="Regularize the optimizee loss, the meta-objective, or both."),
    hessian: Optional[str] = typer.Option(None, help="Hessian regularizer settings, e.g. weight=0.05,probes=2."),
    entropy: Optional[str] = typer.Option(None, help="Local-entropy settings, e.g. weight=1,gamma=3,steps=8."),
    methods: str = typer.Option(",".join(("adam", "sgd", "l2o", "l2o-hessian", "l2o-entropy")), help="Rows."),
    head: str = typer.Option("linear", help="Optimizee: linear or mlp head."),
    workers: int = typer.Option(2, help="Processes meta-training in parallel (one torch thread each)."),
    threads: int = typer.Option(1, help="torch threads for evaluation and latency."),
    save: Optional[Path] = typer.Option(None, help="Keep the meta-trained optimizers here (safetensors + JSON)."),
) -> None:
    """Learned LSTM optimizer (L2O-DM) with/without flatness regularizers vs Adam and SGD."""

    preset = dict(bl2o.QUICK if quick else bl2o.FULL)
    given = {"tasks": tasks, "seeds": seeds, "iterations": iterations, "horizon": horizon,
             "long_horizon": long_horizon, "truncation": truncation, "meta_batch": meta_batch}
    preset.update({k: v for k, v in given.items() if v is not None})
    if long_horizon is None and preset["long_horizon"] < preset["horizon"]:
        preset["long_horizon"] = 4 * preset["horizon"]
    options = dict(methods=tuple(_split_list(methods)), target=target, hessian=hessian, entropy=entropy,
                   workers=workers, threads=threads, family_config={"head": head}, **preset)
    bl2o.validate(**options)  # fail before the progress bar appears
    with progress_bar("bench l2o") as update:
        def note(text: str) -> None:
            update(0, 0, text)

        result = bl2o.run(save=save, quick=quick, progress=note, **options)
    table = Table(title=f"L2O on {result['heldout_tasks']} held-out digits tasks ({head} head, "
                        f"d={result['parameters']}), {result['seeds']} seeds, T={result['horizon']}")
    cols = ("method", "accuracy ± std", f"acc@{result['long_horizon']}", "loss", "tr H", "ms", "meta s")
    for col in cols:
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for r in result["rows"]:
        std = f"±{r['accuracy_std']:.4f}" if r["accuracy_std"] is not None else ""
        table.add_row(r["method"], f"{r['accuracy']:.4f}{std}", f"{r['accuracy_long']:.4f}", f"{r['train_loss']:.4f}",
                      f"{r['hessian_trace']:.3f}", f"{r['latency_ms']:.1f}",
                      f"{r['meta_train_seconds']:.0f}" if "meta_train_seconds" in r else "")
    console.print(table)
    console.print(f"accuracy at T={result['horizon']} steps (acc@{result['long_horizon']}: meta-test beyond the "
                  "trained horizon); loss = training loss; tr H = Hessian trace of the final weights; "
                  "ms = training wall time per task")
    console.print(f"regularizers on: {result['regularizer_target']}; total {result['seconds']:.0f} s")
    _write_outputs(result, json_out, plot, "bench_l2o.png", bl2o.plot)


