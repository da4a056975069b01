"""lohp train (Stage II), also data-parallel under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from lohp.errors import LohpError
from lohp.cli.common import _device, _numbers, _split_list, app, console, parse_family_options, parse_settings, progress_bar


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
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any policy / training / loss setting KEY=VALUE "
                                                                 "(repeatable), e.g. emb_dim=16 or clip=0.5."),
) -> None:
    """Stage II: train a policy on a trajectory store (resumable; data-parallel with --nproc).

    Data-parallel: --nproc N, or torchrun --nproc-per-node N -m lohp train ... (multi-node:
    torchrun's --nnodes / --rdzv-endpoint)."""
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
    for key, value in parse_settings(set_).items():  # --set reaches every config field by name
        target = _config_of(key)
        {"loss": loss_options, "policy": policy_options, "training": train_options}[target][key] = value
    if rank != 0:  # other ranks of a data-parallel run train silently; rank 0 reports
        run_train(store, out, method, k, {k_: v for k_, v in loss_options.items() if v is not None},
                  policy_options, train_options, device=_device(device), overwrite=overwrite,
                  family_options=parse_family_options(family_option))
        return
    from contextlib import contextmanager

    @contextmanager
    def bar():  # entered once the store, the options and the output are validated
        with progress_bar(f"training {method}") as update:
            known: dict[str, float] = {}

            def show(i: int, n: int, m: dict[str, float]) -> None:
                known.update({k_: v for k_, v in m.items() if k_ == "heldout_accuracy"})  # the last measured
                m = {**known, **m}
                keys = ("loss", "logpf_real", "cos_real", "heldout_accuracy")
                text = " ".join(f"{key}={m[key]:.3g}" for key in keys if key in m)
                update(i, n, f"{method} {text}")

            yield show

    res = run_train(store, out, method, k, {k_: v for k_, v in loss_options.items() if v is not None},
                    policy_options, train_options, device=_device(device), overwrite=overwrite,
                    family_options=parse_family_options(family_option), progress_context=bar)
    summary = ", ".join(f"{key} {res[key]:.4g}" for key in ("loss", "cos_real", "heldout_accuracy") if key in res)
    console.print(f"policy in {out} after {res['iteration']} iterations ({res['seconds']:.0f} s): {summary}; "
                  f"curves in {out / 'curves.png'}")


def _relaunch_under_torchrun(nproc: int, batch_size: int) -> None:
    """``lohp train --nproc N ...`` -> ``torchrun --standalone --nproc-per-node N -m lohp train ...``."""
    import subprocess

    if batch_size % nproc:
        raise LohpError(f"--batch-size {batch_size} does not split over {nproc} processes; use a multiple of {nproc}")
    from lohp.cli import common

    argv = list(common._CURRENT_ARGV if common._CURRENT_ARGV is not None else sys.argv[1:])
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





def _config_of(key: str) -> str:
    """Which settings dataclass has the field ``key`` (one line naming them all if none)."""
    from dataclasses import fields

    from lohp.losses import LossConfig
    from lohp.policy import PolicyConfig
    from lohp.training import TrainConfig

    owners = [cls.what for cls in (PolicyConfig, TrainConfig, LossConfig) if key in {f.name for f in fields(cls)}]
    if not owners or key == "method":
        known = sorted({f.name for cls in (PolicyConfig, TrainConfig, LossConfig) for f in fields(cls)} - {"method"})
        raise LohpError(f"--set {key}: no such setting; settings: {', '.join(known)}")
    return owners[0]
