"""Export targets: how ``lohp generate`` writes generated weights, chosen by the policy's
structure kind.

The default writes one ``.safetensors`` file of named tensors (:class:`GeneratedWeights`);
:mod:`lohp.lora` registers ``peft-adapter`` for the ``lora-dims`` structure (a PEFT
adapter folder). A new target is one :class:`ExportTarget` and one
:func:`register_target` call::

    register_target(ExportTarget("onnx", kinds=("mlp-units",), check=..., write=...))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lohp.errors import LohpError
from lohp.io import check_output_file


def _check_file(out: Path, overwrite: bool, family: Any, trained_family_config: dict[str, Any]) -> None:
    check_output_file(out)  # a device, FIFO or folder is refused even with --overwrite
    if out.exists() and not overwrite:
        raise LohpError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")


def _write_file(out: Path, overwrite: bool, task: Any, weights: Any, info: dict[str, Any]) -> Path:
    weights.save(out, {k: str(v) for k, v in info.items() if v is not None})
    return out


@dataclass(frozen=True)
class ExportTarget:
    """``check(out, overwrite, family, trained_family_config)`` runs before any work (refuse an
    output or a family the target cannot serve); ``write(out, overwrite, task, weights, info)``
    writes ``weights`` (:class:`lohp.generation.GeneratedWeights`) for ``task``.
    ``family_options``: family settings ``lohp generate`` may override for this target only
    (e.g. a LoRA rank)."""

    name: str
    kinds: tuple[str, ...] = ()          # structure kinds served by default; () = the fallback
    check: Callable[..., None] = _check_file
    write: Callable[..., Path] = _write_file
    family_options: tuple[str, ...] = ()
    describe: str = "one .safetensors file of named tensors"


_TARGETS: dict[str, ExportTarget] = {}


def register_target(target: ExportTarget, overwrite: bool = False) -> ExportTarget:
    if target.name in _TARGETS and _TARGETS[target.name] is not target and not overwrite:
        raise LohpError(f"an export target named {target.name!r} is already registered; pick another name")
    _TARGETS[target.name] = target
    return target


def target_names() -> list[str]:
    return list(_TARGETS)


def get_target(name: str) -> ExportTarget:
    if name not in _TARGETS:
        raise LohpError(f"unknown export target {name!r}; choose one of {', '.join(_TARGETS)}")
    return _TARGETS[name]


def target_for(kind: str) -> ExportTarget:
    """The target registered for a structure kind, else the plain safetensors file."""
    for target in reversed(list(_TARGETS.values())):  # the latest registration wins
        if kind in target.kinds:
            return target
    return _TARGETS["safetensors"]


register_target(ExportTarget("safetensors"))

__all__ = ["ExportTarget", "get_target", "register_target", "target_for", "target_names"]
