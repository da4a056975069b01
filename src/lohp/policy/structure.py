"""How a flat weight vector is cut into groups the policy can share weights across.

A *structure* cuts ``theta [..., d]`` into G groups ("rows") of equal length R that the
policy processes with one shared network, exchanging information only through a
symmetric pooling over groups. The protocol (duck-typed, see :class:`ClassRowStructure`):

- ``kind`` (str), ``n_groups`` (G), ``row_size`` (R)
- ``rows(theta [..., d]) -> [..., G, R]`` and its exact inverse ``flat(rows) -> [..., d]``
- ``condition_rows(cond, theta) -> [..., G, R]``: per-position condition features aligned
  with the rows; they may depend on the current weights (a network's own function)
- ``scale_condition`` (bool): whether the policy divides those features by the RMS of
  the training conditions (False when the structure normalises them itself)
- ``to_dict()`` (JSON with ``kind``) and ``from_layout(layout)``, which raises
  :class:`LohpError` when the layout does not fit.

:func:`make_structure` picks the first registered structure that fits a layout.

For a classifier head (``weight [C, F]`` and ``bias [C]``) each output class is one
group: its row of weights plus its bias, paired position by position with that class's
row of the task condition (the class mean of the features). The policy processes every
group with the same network and sees the other classes only through symmetric pooling,
so relabelling the classes permutes the generated rows the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lohp.errors import LohpError
from lohp.layout import ParamLayout


@dataclass(frozen=True)
class ClassRowStructure:
    """Groups = output classes; a group's row = [weight row (F values), bias]."""

    weight: str
    bias: str | None
    n_classes: int
    n_features: int
    w_offset: int
    b_offset: int | None
    size: int

    kind = "class-rows"
    scale_condition = True

    @classmethod
    def from_layout(cls, layout: ParamLayout) -> "ClassRowStructure":
        mats = [e for e in layout.entries if len(e.shape) == 2]
        vecs = [e for e in layout.entries if len(e.shape) == 1]
        if len(mats) != 1 or len(vecs) > 1 or len(layout.entries) != len(mats) + len(vecs):
            shapes = ", ".join(f"{e.name}{list(e.shape)}" for e in layout.entries)
            raise LohpError(f"the class-rows policy generates one classifier head (weight [C, F] and "
                            f"bias [C]); this layout has {shapes}. Generate a linear head "
                            "(e.g. lohp prepare --head linear)")
        w = mats[0]
        b = vecs[0] if vecs else None
        if b is not None and b.shape[0] != w.shape[0]:
            raise LohpError(f"bias {b.name}{list(b.shape)} does not match weight {w.name}{list(w.shape)}")
        return cls(w.name, b.name if b else None, w.shape[0], w.shape[1], w.offset,
                   b.offset if b else None, layout.size)

    @property
    def n_groups(self) -> int:
        return self.n_classes

    @property
    def row_size(self) -> int:
        return self.n_features + (1 if self.bias else 0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_classes": self.n_classes, "n_features": self.n_features}

    def rows(self, theta: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., C, F(+1)]``."""
        lead = theta.shape[:-1]
        c, f = self.n_classes, self.n_features
        w = theta[..., self.w_offset:self.w_offset + c * f].reshape(*lead, c, f)
        if self.bias is None:
            return w
        b = theta[..., self.b_offset:self.b_offset + c].reshape(*lead, c, 1)
        return torch.cat([w, b], dim=-1)

    def flat(self, rows: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`rows`."""
        lead = rows.shape[:-2]
        c, f = self.n_classes, self.n_features
        w = rows[..., :f].reshape(*lead, c * f)
        if self.bias is None:
            return w
        b = rows[..., f].reshape(*lead, c)
        parts = sorted([(self.w_offset, w), (self.b_offset, b)], key=lambda p: p[0])
        return torch.cat([p[1] for p in parts], dim=-1)

    def condition_rows(self, cond: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Per-class condition ``[..., C, F]`` aligned with :meth:`rows` (0 at the bias)."""
        if cond.shape[-2:] != (self.n_classes, self.n_features):
            raise LohpError(f"task condition has shape {list(cond.shape[-2:])} but the policy was trained "
                            f"for {self.n_classes} classes x {self.n_features} features; use a task "
                            "with the same number of classes and features")
        if self.bias is None:
            return cond
        return torch.cat([cond, torch.zeros_like(cond[..., :1])], dim=-1)


def _registry() -> list[Any]:
    from lohp.policy.mlp_structure import MlpUnitStructure

    # Tried in order; the first whose from_layout accepts the layout wins.
    # (The registry of structures: add new ones, e.g. the LoRA structure, to this list.)
    from lohp.policy.lora_structure import LoraStructure

    return [ClassRowStructure, MlpUnitStructure, LoraStructure]


def make_structure(layout: ParamLayout):
    """The structure for a generated subset: the first registered one that fits it."""
    reasons = []
    for cls in _registry():
        try:
            return cls.from_layout(layout)
        except LohpError as exc:
            reasons.append(str(exc))
    shapes = ", ".join(f"{e.name}{list(e.shape)}" for e in layout.entries)
    raise LohpError(f"no policy structure fits the generated subset ({shapes}): generate a linear head, "
                    "a one-hidden-layer MLP or LoRA matrices plus a head")
