"""Checkpoints of a run and the policy folder they live in.

A checkpoint holds the policy *and* its optimizer state (safetensors, atomically) with its
iteration and optimizer groups in the same file's metadata (``checkpoint.json`` repeats them
for readers; a kill between the two writes must not pair new weights with an old
iteration, so resuming trusts the tensor file); the servable policy is rewritten with every
checkpoint, so ``kill -9`` loses at most one interval and re-running the same command
resumes. A folder resumes only a run of the same settings (:data:`_RESUME_KEYS`).

Whenever ``policy.json`` is written, it records the family's feature spec (the input
preprocessing, e.g. the ``table`` family's standardisation statistics, for
:mod:`lohp.sklearn`) and the model card ``README.md`` (:mod:`.card`) is written beside it."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lohp.errors import LohpError
from lohp.io import (
    CHECKPOINT_FORMAT,
    POLICY_FORMAT,
    atomic_save_tensors,
    atomic_write_json,
    load_tensors_and_metadata,
    read_json,
    uninterrupted,
)
from lohp.losses import LossConfig
from lohp.policy import LohpPolicy, PolicyConfig
from lohp.policy.io import META, WEIGHTS, condition_points, load_state, save_policy
from lohp.tasks import family_feature_spec
from lohp.training.card import CARD, write_card
from lohp.training.logs import CURVES, LOG

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
FEATURE_SPEC = "feature_spec"  # the policy.json key of the family's input preprocessing
_SPECS: dict[str, dict[str, Any] | None] = {}  # per family and config: built once per process

# The parts of a run that must not change on resume (iterations and time limit may).
_RESUME_KEYS = ("method", "loss_config", "policy_config", "store_manifest_sha", "condition_points")


def _with_defaults(meta: dict[str, Any]) -> dict[str, Any]:
    """A saved policy description with settings a newer lohp added filled in by their
    defaults (new settings default to the old behaviour), so a folder trained by an older
    version resumes; a changed or unknown setting still differs."""
    out = dict(meta)
    out["condition_points"] = condition_points(meta)  # 1: saved before coresets
    if isinstance(out.get("policy_config"), dict):
        out["policy_config"] = {**asdict(PolicyConfig()), **out["policy_config"]}
    if isinstance(out.get("loss_config"), dict):
        # the method's options as this build reads them (a record of before holds every option
        # of every formulation and the policy's backward kind): the same run compares equal
        try:
            out["loss_config"] = LossConfig.from_record(out["loss_config"]).to_dict()
        except LohpError:  # a record this build cannot read (an unknown method): it differs
            pass
    return out


def with_feature_spec(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the feature spec of its family (:meth:`lohp.tasks.TaskFamily.feature_spec`:
    the input preprocessing a scikit-learn user must apply, e.g. standardisation statistics)
    when the family declares one; computed once per family and config in a process."""
    if FEATURE_SPEC in meta or "family" not in meta:
        return meta
    key = json.dumps([meta["family"], meta.get("family_config") or {}], sort_keys=True)
    if key not in _SPECS:
        try:
            _SPECS[key] = family_feature_spec(meta["family"], meta.get("family_config") or {})
        except LohpError:  # the family cannot be rebuilt here: the policy is served without a spec
            _SPECS[key] = None
    spec = _SPECS[key]
    return meta if spec is None else {**meta, FEATURE_SPEC: spec}


def _write_card(out: Path) -> None:
    """The model card beside policy.json; a card that cannot be written (README.md is a folder,
    say) is one warning line, never the end of a training run."""
    try:
        write_card(out)
    except LohpError as exc:
        print(f"lohp: warning: the model card was not written ({exc})", file=sys.stderr)


def prepare_out(out: Path, meta: dict[str, Any], overwrite: bool) -> bool:
    """Make the policy folder ``out`` ready for the run ``meta`` describes: emptied of a
    previous run with ``overwrite``, else checked to hold the same run (or none); writes
    policy.json for a new run. True when a checkpoint of the same run is there to resume."""
    meta_path = out / META
    resume = False
    if overwrite:
        for name in (META, WEIGHTS, CHECKPOINT, CHECKPOINT_META, LOG, CURVES, CARD):
            (out / name).unlink(missing_ok=True)
    elif meta_path.exists():
        old = _with_defaults(read_json(meta_path, "policy description", sealed=True))
        diff = [k for k in _RESUME_KEYS if old.get(k) != _with_defaults(meta).get(k)]
        if diff:
            raise LohpError(f"{out} holds a policy trained with other settings ({', '.join(diff)} differ); "
                            "use the same command to resume, another --out, or --overwrite")
        resume = (out / CHECKPOINT).exists()
    if not meta_path.exists() or overwrite:
        atomic_write_json(meta_path, {**with_feature_spec(meta), "format": POLICY_FORMAT, "iteration": 0},
                          sealed=True)
        _write_card(out)
    return resume


def save_checkpoint(out: Path, policy: LohpPolicy, optimizer: torch.optim.Optimizer, iteration: int,
                    meta: dict[str, Any]) -> None:
    """Checkpoint ``policy`` and ``optimizer`` at ``iteration`` into ``out`` (each file
    atomically, the group with Ctrl-C / SIGTERM held until it is whole)."""
    with uninterrupted():
        _save_checkpoint(out, policy, optimizer, iteration, meta)


def _save_checkpoint(out: Path, policy: LohpPolicy, optimizer: torch.optim.Optimizer, iteration: int,
                     meta: dict[str, Any]) -> None:
    tensors = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    state = optimizer.state_dict()
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
    atomic_save_tensors(out / CHECKPOINT, tensors, metadata={
        "format": CHECKPOINT_FORMAT, "iteration": str(iteration), "param_groups": json.dumps(state["param_groups"])})
    atomic_write_json(out / CHECKPOINT_META, {"iteration": iteration, "param_groups": state["param_groups"]},
                      sealed=True)
    # The servable policy is rewritten with every checkpoint (always the last good one), its card with it.
    save_policy(out, policy, {**with_feature_spec(meta), "iteration": iteration})
    _write_card(out)


def load_checkpoint(out: Path, policy: LohpPolicy, optimizer: torch.optim.Optimizer, device: str) -> int:
    """Load ``out``'s checkpoint into ``policy`` and ``optimizer``; returns its iteration."""
    fix = (f"delete {out / CHECKPOINT} and {out / CHECKPOINT_META} to restart this policy from "
           "iteration 0 (or pass --overwrite)")
    tensors, own = load_tensors_and_metadata(out / CHECKPOINT, "training checkpoint", fix)
    load_state(policy, out / CHECKPOINT, prefix="policy.", fix=fix, tensors=tensors)
    if "iteration" in own:  # the weights' own iteration (checkpoint.json may be one interval older)
        info = {"iteration": int(own["iteration"]), "param_groups": json.loads(own["param_groups"])}
    else:  # written before checkpoints described themselves
        info = read_json(out / CHECKPOINT_META, "checkpoint description", sealed=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return int(info["iteration"])


def checkpoint_iteration(out: Path) -> int:
    """The iteration of ``out``'s last good checkpoint (0: none yet): the tensor file's own,
    which :func:`load_checkpoint` resumes from."""
    if (out / CHECKPOINT).exists():
        try:
            with safe_open(str(out / CHECKPOINT), framework="pt") as fh:
                own = (fh.metadata() or {}).get("iteration")
            if own is not None:
                return int(own)
        except (SafetensorError, OSError, ValueError):
            pass  # unreadable: the description's word (resuming says what is wrong)
    path = out / CHECKPOINT_META
    return int(read_json(path, "checkpoint description", sealed=True)["iteration"]) if path.exists() else 0


def diverged(out: Path, what: str, fix: str) -> LohpError:
    """The refusal of a run that went non-finite (``what``): the last good checkpoint is kept
    and resuming after ``fix`` continues from it."""
    return LohpError(f"{what}; the last good checkpoint (iteration {checkpoint_iteration(out)}) is kept "
                     f"in {out}; {fix}, then resume")
