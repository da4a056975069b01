"""Whole-network structure: a one-hidden-layer ReLU MLP ``F -> H -> C``, one group per hidden unit.

Hidden unit h's row is everything that belongs to it, plus the shared output bias::

    [ W1[h, :] (F) | b1[h] | W2[:, h] (C) | b2 (C, a copy per unit) ]

so relabelling hidden units permutes rows (the policy is equivariant to their order) and
``flat`` averages the per-unit copies of ``b2`` (an exact inverse of ``rows``).

Condition features come from the network's own function on the task condition (its
weighted points per class, :mod:`lohp.condition`; docs/method.md "whole-network
generation"): each point is pushed through the current MLP as one example labelled with its
class, weighted by its share / C, and every position receives the negative gradient
of that surrogate cross-entropy in closed form (forward quantities only; no task data
and no autograd). Each task's feature vector is scaled to unit RMS, so the policy sees a
direction whose size does not shrink as training converges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lohp.errors import LohpError
from lohp.layout import ParamLayout
from lohp.policy.structure import register_structure
from lohp.condition import split as split_condition
from lohp.policy.surrogate import unit_rms, weighted_ce_grad


@register_structure
@dataclass(frozen=True)
class MlpUnitStructure:
    n_in: int
    n_hidden: int
    n_classes: int
    offsets: tuple[int, int, int, int]   # W1, b1, W2, b2
    size: int

    kind = "mlp-units"
    serves = "a one-hidden-layer MLP: [H, F], [H], [C, H], [C]"
    group_dim = "n_hidden"   # any hidden width (see lohp.policy.structure.retarget)
    scale_condition = False
    condition_channels = 1

    @classmethod
    def saved_options(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def from_layout(cls, layout: ParamLayout, options: dict[str, Any] | None = None) -> "MlpUnitStructure":
        e = sorted(layout.entries, key=lambda x: x.offset)
        shapes = [tuple(x.shape) for x in e]
        ok = (len(e) == 4 and len(shapes[0]) == 2 and len(shapes[2]) == 2 and shapes[1] == (shapes[0][0],)
              and shapes[2][1] == shapes[0][0] and shapes[3] == (shapes[2][0],))
        if not ok:
            raise LohpError("the mlp-units policy generates a one-hidden-layer MLP (weight [H, F], bias [H], "
                            f"weight [C, H], bias [C]); this layout has {shapes}")
        h, f = shapes[0]
        return cls(f, h, shapes[2][0], tuple(x.offset for x in e), layout.size)

    @property
    def n_groups(self) -> int:
        return self.n_hidden

    @property
    def row_size(self) -> int:
        return self.n_in + 1 + 2 * self.n_classes

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_in": self.n_in, "n_hidden": self.n_hidden, "n_classes": self.n_classes}

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``theta [..., d]`` -> W1 [..., H, F], b1 [..., H], W2 [..., C, H], b2 [..., C]."""
        lead = theta.shape[:-1]
        f, h, c = self.n_in, self.n_hidden, self.n_classes
        o1, o2, o3, o4 = self.offsets
        return (theta[..., o1:o1 + h * f].reshape(*lead, h, f), theta[..., o2:o2 + h],
                theta[..., o3:o3 + c * h].reshape(*lead, c, h), theta[..., o4:o4 + c])

    def _rows(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        h = self.n_hidden
        return torch.cat([w1, b1[..., None], w2.transpose(-1, -2),
                          b2[..., None, :].expand(*b2.shape[:-1], h, self.n_classes)], dim=-1)

    def rows(self, theta: torch.Tensor) -> torch.Tensor:
        return self._rows(*self.split(theta))

    def flat(self, rows: torch.Tensor) -> torch.Tensor:
        f, c = self.n_in, self.n_classes
        w1, b1 = rows[..., :f], rows[..., f]
        w2 = rows[..., f + 1:f + 1 + c].transpose(-1, -2)
        b2 = rows[..., f + 1 + c:].mean(-2)
        lead = rows.shape[:-2]
        parts = sorted(zip(self.offsets, (w1.reshape(*lead, -1), b1, w2.reshape(*lead, -1), b2)), key=lambda p: p[0])
        return torch.cat([p[1] for p in parts], dim=-1)

    def condition_rows(self, cond: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Negative surrogate gradient on the condition's weighted points, unit RMS per task,
        as rows ``[..., H, R, 1]``."""
        if theta is None:
            raise LohpError("the mlp-units structure needs the current weights to build its condition features")
        pts, share = split_condition(cond, self.n_classes, self.n_in)
        w1, b1, w2, b2 = self.split(theta)
        c, m = pts.shape[-3], pts.shape[-2]
        x = pts.reshape(*pts.shape[:-3], c * m, self.n_in)                    # [..., C*m(ex), F]
        pre = x @ w1.transpose(-1, -2) + b1[..., None, :]                      # [..., C*m, H]
        act = pre.clamp_min(0)
        _, delta, g_w2, g_b2 = weighted_ce_grad(act.reshape(*act.shape[:-2], c, m, self.n_hidden), share, w2, b2)
        g_pre = (delta @ w2) * (pre > 0).to(pre.dtype)                         # back through the ReLU
        g_w1 = g_pre.transpose(-1, -2) @ x                                     # [..., H, F]
        g_b1 = g_pre.sum(-2)
        return unit_rms(self._rows(g_w1, g_b1, g_w2, g_b2))[..., None]

    def surrogate_loss(self, cond: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The weighted surrogate cross-entropy of the MLP on the condition's points, ``[...]``."""
        pts, share = split_condition(cond, self.n_classes, self.n_in)
        w1, b1, w2, b2 = self.split(theta)
        act = (pts @ w1.transpose(-1, -2)[..., None, :, :] + b1[..., None, None, :]).clamp_min(0)
        logits = act @ w2.transpose(-1, -2)[..., None, :, :] + b2[..., None, None, :]      # [..., C, m, C]
        own = logits.log_softmax(-1).diagonal(dim1=-3, dim2=-1).transpose(-1, -2)           # [..., C, m]
        return -(own * share).sum((-1, -2)) / self.n_classes
