"""The core commands: prepare, inspect, generate, evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lohp.bench import evaluate as be
from lohp.bench.harness import print_table
from lohp.bench.runner import SCENARIO_COLUMNS
from lohp.cli.common import (
    app,
    check_device,
    check_outputs,
    console,
    parse_family_options,
    parse_hparams,
    progress_bar,
    split_list,
    write_result_json,
)
from lohp.cli.options import Group, check_seed, with_options
from lohp.errors import LohpError
from lohp.export import target_for
from lohp.generation import GeneratedWeights, Generator
from lohp.inspection import artefact_kind, inspect_artefact
from lohp.tasks import make_family
from lohp.training.card import refresh_card
from lohp.trajectories import StageOneConfig, TrajectoryStore, summarize
from lohp.trajectories import prepare as run_prepare


# --------------------------------------------------------------------------- prepare
@app.command()
@with_options(Group("stage", StageOneConfig))
def prepare(
    out: Path = typer.Option(..., "--out", help="Store folder (created; re-run to resume)."),
    lr: Optional[str] = typer.Option(None, help="Learning rates, e.g. sgd=0.1,adam=0.01 (defaults otherwise)."),
    hparam: Optional[list[str]] = typer.Option(None, help="Other hyper-parameters, e.g. sam.rho=0.1 (repeatable)."),
    n_way: Optional[int] = typer.Option(None, help="Classes per task (the family's option n_way; digits: 5)."),
    head: Optional[str] = typer.Option(None, help="Generated target: linear or mlp (the family's option head)."),
    device: str = typer.Option("cpu", help="torch device."),
    overwrite: bool = typer.Option(False, help="Replace an existing store in --out."),
    family_option: Optional[list[str]] = typer.Option(
        None, "--family-option", help="Family setting KEY=VALUE (repeatable), e.g. rank=4 or targets=query,value."),
    ray: bool = typer.Option(False, "--ray", help="Run the shards as Ray tasks (the cluster in RAY_ADDRESS, or a "
                                                  "local one); needs pip install -e '.[ray]'."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster HOST:PORT (implies --ray)."),
    ray_workers: Optional[int] = typer.Option(None, help="With --ray: at most this many shards at once "
                                                         "(default: the cluster's CPUs)."),
    yes: bool = typer.Option(False, "--yes", help="Run even when the store's estimated disk or memory need "
                                                  "exceeds what is available (never prompts)."),
    stage: dict = None,  # type: ignore[assignment]
) -> None:
    """Stage I: train runs on source tasks with real optimizers and store every checkpoint.

    The run's options are StageOneConfig's fields (defaults there)."""

    # --n-way / --head are the family options of those names, for every family that has them
    # (a family without one refuses it in one line).
    family_config = {k: v for k, v in (("n_way", n_way), ("head", head)) if v is not None}
    family_config.update(parse_family_options(family_option))
    config = StageOneConfig.from_dict({**stage, "family_config": family_config,
                                       "hparams": parse_hparams(lr, hparam)}).store_config()
    executor = "ray" if (ray or ray_address) else "local"
    # prepare() checks everything (Ray, the output, every task's data) before it opens the bar
    store = run_prepare(out, config, device=check_device(device), overwrite=overwrite, executor=executor,
                        ray_address=ray_address, ray_workers=ray_workers,
                        progress_context=lambda: progress_bar("preparing"), yes=yes)
    console.print(f"stored {len(store)} trajectories in {out}; see them with: lohp inspect {out}")


# --------------------------------------------------------------------------- inspect
@app.command()
def inspect(
    store: Path = typer.Argument(..., metavar="PATH",
                                 help="What lohp wrote: a store folder (lohp prepare), a policy folder (lohp train), a "
                                      "training checkpoint, a generated .safetensors file or LoRA adapter folder "
                                      "(lohp generate), or a result JSON."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    verify: bool = typer.Option(True, help="Verify every checksum (a store's shards, a policy's or generated "
                                           "file's tensor data)."),
) -> None:
    """Say what a store, policy, checkpoint or generated file holds, and re-check its checksums.

    A store: a table of its trajectories. A policy folder: its model card (the text of its
    README.md). Anything wrong (a changed byte, edited metadata, files of different runs) is
    one line naming it, exit status 2."""

    kind, target = artefact_kind(store)
    if kind != "store":
        found = inspect_artefact(kind, target, verify=verify)
        if as_json:
            print(json.dumps(found.summary, indent=1))
        else:
            print(found.text, end="")  # not through rich: names are shown as they are, never as markup
        return
    summary = summarize(TrajectoryStore.open(target), verify=verify)
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    table = Table(title=f"{summary['path']}: {summary['trajectories']} trajectories, family {summary['family']}")
    for col in ("optimizer", "trajectories", f"final eval {summary['metric']}", "final train loss"):
        table.add_column(col, justify="right" if col != "optimizer" else "left")
    for name, d in summary["optimizers"].items():
        table.add_row(name, str(d["count"]), f"{d['final_metric_mean']:.4f} ± {d['final_metric_std']:.4f}",
                      f"{d['final_train_loss_mean']:.4f}")
    console.print(table)
    status = "complete" if summary["complete"] else (
        f"INCOMPLETE ({summary['shards']}/{summary['shards_planned']} shards): re-run lohp prepare with the same arguments")
    checks = {True: "all shard checksums verified", None: "checksums not verified"}[summary["checksums_ok"]]
    console.print(f"steps {summary['steps']} (every {summary['record_every']}, {summary['records_per_trajectory']} "
                  f"records), {summary['parameters']} parameters per trajectory, "
                  f"{summary['size_bytes'] / 1e6:.2f} MB on disk; {status}; {checks}")


# --------------------------------------------------------------------------- generate
@app.command()
def generate(
    policy: Path = typer.Option(..., help="Policy folder written by lohp train."),
    out: Path = typer.Option(..., help="Output .safetensors file (LoRA policies: an adapter folder)."),
    family: Optional[str] = typer.Option(None, help="Task family (default: the policy's)."),
    task_seed: int = typer.Option(0, help="Task seed."),
    split: str = typer.Option("heldout", help="source or heldout."),
    seed: int = typer.Option(0, help="Seed of the starting weights s_0."),
    temperature: float = typer.Option(0.0, help="0: mean path (deterministic); > 0: sample with this temperature."),
    sample_seed: int = typer.Option(0, help="Seed of the sampling noise."),
    latency: bool = typer.Option(True, help="Also measure the generation latency."),
    device: str = typer.Option("cpu", help="torch device."),
    backend: str = typer.Option("trace", help="How the N steps run: trace (TorchScript), inductor (torch.compile: "
                                              "fastest, but the first compile of a policy takes minutes; cached on "
                                              "disk) or eager."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file (LoRA: an adapter already in --out)."),
    rank: Optional[int] = typer.Option(None, help="LoRA policies: LoRA rank (default: the policy's)."),
    targets: Optional[str] = typer.Option(None, help="LoRA policies: target modules, e.g. query,value."),
    family_option: Optional[list[str]] = typer.Option(
        None, "--family-option", help="Family setting KEY=VALUE (repeatable), over the policy's family config."),
    refine: Optional[int] = typer.Option(None, help="Then N gradient steps on the task's training split "
                                                    "(generate-then-refine)."),
    refine_optimizer: str = typer.Option("adam", help="Refine optimizer: adam, sgd, sam, ..."),
    refine_lr: Optional[float] = typer.Option(None, help="Refine learning rate (default: Stage I's for that "
                                                         "optimizer)."),
) -> None:
    """Generate weights for one task without computing a task gradient (then --refine N gradient steps).

    With --refine N, N steps of --refine-optimizer on the task's training split follow.

    For a LoRA policy (family wordnet or fortunes) --out is a folder that receives a
    standard PEFT adapter (adapter_config.json + adapter_model.safetensors, loadable by
    peft.PeftModel.from_pretrained) plus the head (classifier.safetensors)."""

    if refine is not None and refine <= 0:
        raise LohpError(f"--refine takes a number of gradient steps >= 1 (got {refine}); drop it to skip refining")
    for flag, value in (("--task-seed", task_seed), ("--seed", seed), ("--sample-seed", sample_seed)):
        check_seed(value, flag)
    gen = Generator.load(policy, check_device(device), backend=backend)
    if refine is not None:
        gen.refine_hparams(refine_optimizer, refine_lr)  # an unknown optimizer or bad lr fails before any work
    target = target_for(gen.policy.structure.kind)  # how --out is written (a file, a PEFT adapter, ...)
    overrides = {k: v for k, v in (("rank", rank), ("targets", split_list(targets) if targets else None))
                 if v is not None}
    if set(overrides) - set(target.family_options):
        raise LohpError("--rank and --targets apply to LoRA policies only; drop them for this policy")
    overrides.update(parse_family_options(family_option))
    fam = gen.family(**overrides) if family in (None, gen.meta["family"]) else make_family(family, **overrides)
    target.check(out, overwrite, fam, gen.meta["family_config"])  # before any work
    task = fam.sample(task_seed, split)
    weights = gen.generate(task, seed=seed, temperature=temperature, sample_seed=sample_seed)
    generated = task.evaluate(weights.theta)
    if refine is not None:
        theta = gen.refine(task, weights.theta, refine, refine_optimizer, refine_lr, seed=seed)
        weights = GeneratedWeights.of(theta, task.layout)
    target.write(out, overwrite, task, weights, {
        "task": task.name, "classes": task.info.get("classes"), "policy": str(policy), "method": gen.meta["method"],
        "max_length": fam.config().get("max_length"),
        "refine": f"{refine} {refine_optimizer} steps" if refine else "none"})
    metrics = task.evaluate(weights.theta)
    text = f"wrote {out}: {task.name}, eval {task.metric_name} {metrics[task.metric_name]:.4f}"
    if refine is not None:
        text += (f" after {refine} {refine_optimizer} steps (generated: {generated[task.metric_name]:.4f}, "
                 f"lr {gen.refine_hparams(refine_optimizer, refine_lr)['lr']:g})")
    if latency:
        lat = gen.latency(task)
        text += (f"; latency {lat['latency_ms']:.2f} ms for {lat['steps']} steps "
                 f"({lat['latency_with_condition_ms']:.2f} ms with the condition)")
    console.print(text)


# --------------------------------------------------------------------------- evaluate
@app.command()
@with_options(Group("settings", be.EvaluateConfig))
def evaluate(
    policy: Path = typer.Option(..., help="Policy folder written by lohp train."),
    family_option: Optional[list[str]] = typer.Option(
        None, "--family-option", help="Family setting KEY=VALUE over the policy's family config (repeatable)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    plot: Optional[Path] = typer.Option(None, help="Folder for the PNG."),
    overwrite: bool = typer.Option(False, help="Replace an existing --json file."),
    yes: bool = typer.Option(False, "--yes", help="Run even when the tasks' estimated memory exceeds what is "
                                                  "available (never prompts)."),
    settings: dict = None,  # type: ignore[assignment]
) -> None:
    """A trained policy against Adam, SGD and closed-form baselines on held-out tasks of a family.

    The options are EvaluateConfig's fields (defaults there)."""

    check_outputs(json_out, plot, overwrite)
    options = parse_family_options(family_option)
    check_device(settings["device"])
    be.EvaluateConfig.from_dict(settings)  # bad settings fail before the progress bar
    with progress_bar("evaluate") as update:
        result = be.evaluate(policy, family_options=options, note=lambda text: update(0, 0, text), yes=yes,
                             **settings)
    print_table(result["rows"], f"{policy} on {result['heldout_tasks']} held-out {result['family']} tasks",
                SCENARIO_COLUMNS, console)
    write_result_json(result, json_out)
    if json_out is not None and json_out.resolve().parent == policy.resolve():
        card = refresh_card(policy)  # a result saved into the policy folder joins its model card
        if card is not None:
            console.print(f"updated the model card {card}", highlight=False, markup=False)
    if plot is not None:
        for p in be.plots(result, plot):
            console.print(f"wrote {p}")
