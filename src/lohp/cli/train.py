"""lohp train (Stage II), also data-parallel under torchrun."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer

from lohp import provenance
from lohp.cli.common import (
    app,
    check_device,
    console,
    parse_family_options,
    parse_settings,
    progress_bar,
    training_progress,
)
from lohp.cli.options import Group, with_options
from lohp.config import parse_setting
from lohp.errors import LohpError
from lohp.losses import FlatOptions, LossConfig, get_method, method_names
from lohp.policy import PolicyConfig
from lohp.training import TrainConfig
from lohp.training import train as run_train

# --------------------------------------------------------------------------- train
# The loss options are every built-in method's (FlatOptions); each is passed only when given,
# so the method's preset applies, and a method refuses an option it does not have. The
# policy's backward kind (--backward) likewise defaults to the method's policy preset.
_PRESET_HELP = "(default: the method's preset, else {default})"


@app.command("train")
@with_options(Group("loss_options", LossConfig), Group("method_options", FlatOptions, unset=True,
                                                       unset_help=_PRESET_HELP),
              Group("policy_options", PolicyConfig), Group("train_options", TrainConfig),
              Group("policy_preset", PolicyConfig, include=("backward",), unset=True, unset_help=_PRESET_HELP))
def train_cmd(
    store: Path = typer.Option(..., help="Trajectory store written by lohp prepare."),
    out: Path = typer.Option(..., help="Policy folder (created; re-run the same command to resume)."),
    device: str = typer.Option("cpu", help="torch device."),
    overwrite: bool = typer.Option(False, help="Start over in --out."),
    family_option: Optional[list[str]] = typer.Option(
        None, "--family-option", help="Family setting KEY=VALUE over the store's (e.g. path=... of moved data)."),
    nproc: Optional[int] = typer.Option(None, help="Data-parallel processes on this machine (runs this command "
                                                   "under torchrun; each draws its share of --batch-size)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any policy / training / loss setting KEY=VALUE "
                                                                 "(repeatable), e.g. emb_dim=16 or clip=0.5."),
    tensorboard: Optional[Path] = typer.Option(None, help="Also write the log's numbers (loss, diagnostics, held-out "
                                                          "accuracy, iterations per second) as TensorBoard scalars "
                                                          "into this folder; needs pip install -e '.[tensorboard]'."),
    loss_options: dict = None, policy_options: dict = None, train_options: dict = None,  # type: ignore[assignment]
    method_options: dict = None, policy_preset: dict = None,  # type: ignore[assignment]
) -> None:
    """Stage II: train a policy on a trajectory store (resumable; data-parallel with --nproc).

    The loss, policy and training options are those of LossConfig and the method's options
    class (lohp.losses), PolicyConfig and TrainConfig (defaults there). Data-parallel:
    --nproc N, or torchrun --nproc-per-node N -m lohp train ... (multi-node: torchrun's
    --nnodes / --rdzv-endpoint)."""

    loss_options.update(method_options)
    policy_options.update(policy_preset)
    for item in set_ or []:  # --set reaches every config field by name
        key, value = next(iter(parse_settings([item]).items()))
        target = _config_of(key)
        # the value takes its type from the field (a str is kept as typed; a bad number is one line)
        cls = _loss_options_of(key) if target == "loss" else _CONFIGS[target]
        typed = parse_setting(cls, key, item.partition("=")[2])
        if typed is not dataclasses.MISSING:
            value = typed
        {"loss": loss_options, "policy": policy_options, "training": train_options}[target][key] = value
    method, k = loss_options.pop("method"), loss_options.pop("k")
    batch_size = train_options["batch_size"]
    if nproc is not None:
        if nproc <= 0:
            raise LohpError(f"--nproc must be >= 1 (got {nproc})")
        if "WORLD_SIZE" not in os.environ:
            _relaunch_under_torchrun(nproc, batch_size)
            return
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # other ranks of a data-parallel run train silently; rank 0 reports
        run_train(store, out, method, k, loss_options,
                  policy_options, train_options, device=check_device(device), overwrite=overwrite,
                  family_options=parse_family_options(family_option))
        return

    @contextmanager
    def bar():  # entered once the store, the options and the output are validated
        with progress_bar(f"training {method}") as update:
            known: dict[str, float] = {}

            def text(m: dict[str, float]) -> str:
                known.update({k_: v for k_, v in m.items() if k_ == "heldout_accuracy"})  # the last measured
                m = {**known, **m}
                keys = ("loss", "logpf_real", "cos_real", "heldout_accuracy")
                return " ".join(f"{key}={m[key]:.3g}" for key in keys if key in m)

            # a time-budgeted run counts training seconds against its budget, not iterations
            yield training_progress(update, lambda: method, text)

    res = run_train(store, out, method, k, loss_options,
                    policy_options, train_options, device=check_device(device), overwrite=overwrite,
                    family_options=parse_family_options(family_option), progress_context=bar,
                    tensorboard=tensorboard)
    summary = ", ".join(f"{key} {res[key]:.4g}" for key in ("loss", "cos_real", "heldout_accuracy") if key in res)
    console.print(f"policy in {out} after {res['iteration']} iterations ({res['seconds']:.0f} s): {summary}; "
                  f"curves in {out / 'curves.png'}" + (f"; TensorBoard: tensorboard --logdir {tensorboard}"
                                                      if tensorboard is not None else ""))


def _relaunch_under_torchrun(nproc: int, batch_size: int) -> None:
    """``lohp train --nproc N ...`` -> ``torchrun --standalone --nproc-per-node N -m lohp train ...``."""

    if batch_size % nproc:
        raise LohpError(f"--batch-size {batch_size} does not split over {nproc} processes; use a multiple of {nproc}")

    argv = provenance.arguments()
    argv = argv if argv is not None else sys.argv[1:]
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


_CONFIGS = {"loss": FlatOptions, "policy": PolicyConfig, "training": TrainConfig}


def _loss_options_of(key: str) -> type:
    """The options class with the loss option ``key``: a built-in one, or a registered
    method's (a plugin's) own."""
    if key == "k":
        return LossConfig
    for cls in (FlatOptions, *(get_method(name).options for name in method_names())):
        if key in {f.name for f in fields(cls)}:
            return cls
    return FlatOptions


def _config_of(key: str) -> str:
    """Which settings dataclass has the field ``key`` (one line naming them all if none)."""

    owners = [what for what, cls in {**_CONFIGS, "loss": _loss_options_of(key)}.items()
              if key in {f.name for f in fields(cls)}]
    if not owners or key == "method":
        known = sorted({f.name for cls in (*_CONFIGS.values(), *(get_method(m).options for m in method_names()))
                        for f in fields(cls)} | {"k"})
        raise LohpError(f"--set {key}: no such setting; settings: {', '.join(known)}")
    return owners[0]
