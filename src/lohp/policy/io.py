"""A trained policy on disk: ``policy.json`` (everything needed to rebuild it and to know
what it may be used for) + ``policy.safetensors`` (weights and buffers). No pickle.

The network's part: writing the files, reading them, rebuilding the network from its
recorded options and structure. Reopening a folder for use, which also checks the method
it records against the loss registry, is :mod:`lohp.policy_folder` (above the losses)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from lohp.errors import LohpError
from lohp.io import (
    POLICY_FORMAT,  # noqa: E402 (re-exported)
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    read_json,
)
from lohp.layout import ParamLayout
from lohp.policy.policy import LohpPolicy, PolicyConfig
from lohp.policy.structure import make_structure

META = "policy.json"
WEIGHTS = "policy.safetensors"


def build_network(meta: dict[str, Any]) -> LohpPolicy:
    """Rebuild the network a ``policy.json`` describes, through the policy options and the
    structure kind it recorded (the method it records: :func:`lohp.policy_folder.build_policy`)."""

    known = {f.name for f in fields(PolicyConfig)}
    unknown = sorted(set(meta["policy_config"]) - known)
    if unknown:
        raise LohpError(f"the policy was trained by a lohp build with policy option(s) {', '.join(unknown)}, which "
                        "this build does not have; upgrade lohp, or retrain the policy")
    layout = ParamLayout.from_dict(meta["layout"])
    structure = make_structure(layout, spec=meta.get("structure"))
    return LohpPolicy(structure, meta["n_steps"], PolicyConfig.from_dict(meta["policy_config"]),
                      condition_points=condition_points(meta))


def condition_points(meta: dict[str, Any]) -> int:
    """m of the conditions a saved policy was trained on (1 for policies saved before coresets)."""
    return int((meta.get("condition") or {}).get("points", 1))


def save_policy(directory: Path, policy: LohpPolicy, meta: dict[str, Any]) -> None:
    directory = Path(directory)
    atomic_save_tensors(directory / WEIGHTS, dict(policy.state_dict()), metadata={"format": POLICY_FORMAT})
    atomic_write_json(directory / META, {**meta, "format": POLICY_FORMAT}, sealed=True)


def load_state(policy: torch.nn.Module, path: Path, prefix: str = "",
               fix: str = "retrain the policy (lohp train --overwrite), or restore the file from a copy",
               tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Load ``path``'s tensors (those under ``prefix``) into ``policy``; ``tensors``: the
    file's tensors when the caller has read (and checked) them already."""
    if tensors is None:
        tensors = load_tensors(path, "policy weights" if not prefix else "training checkpoint", fix)
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        policy.load_state_dict(tensors)
    except RuntimeError as exc:
        raise LohpError(f"{path} does not fit the policy described by its {META} "
                        f"({str(exc).splitlines()[0]}); the files come from different runs") from None


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``directory``'s checked ``policy.json`` (sealed, of this format, beside its weights)."""
    directory = Path(directory)
    if not (directory / META).exists():
        raise LohpError(f"no trained policy in {directory} (missing {META}); train one with lohp train --out {directory}")
    meta = read_json(directory / META, "policy description", sealed=True)
    if meta.get("format") != POLICY_FORMAT:
        raise LohpError(f"{directory / META} is not a {POLICY_FORMAT} file")
    if not (directory / WEIGHTS).exists():
        raise LohpError(f"{directory} has no {WEIGHTS} yet (training did not reach its first checkpoint); "
                        "resume training with the same lohp train command")
    return meta
