"""LoRA structure: LoRA A/B matrices of a transformer plus a linear head, one group per hidden dimension.

The generated subset is M LoRA modules (``A_m [r, H]``, ``B_m [H, r]``) and a head
``W [C, H]`` without bias, all over the same hidden size H. Hidden dimension i's row is
everything indexed by i::

    [ A_1[:, i] (r) | B_1[i, :] (r) | ... | A_M[:, i] | B_M[i, :] | W[:, i] (C) ]

so R = 2 r M + C, G = H, and ``flat`` is the exact inverse of ``rows``. Relabelling the
hidden dimensions consistently (what a rotation of the residual stream would need) permutes
rows, and the policy treats rows alike and pools over them, so it is equivariant to that
order.

Condition features per position (each kind scaled to unit RMS per task, so
``scale_condition`` is False):

- head slots ``W[c, i]``: the negative gradient of a surrogate cross-entropy of the head on
  the condition's weighted points of the frozen embeddings (:mod:`lohp.condition`; with
  class means, ``((I - softmax(M W^T)) / C)^T M``), in closed form from the current head;
- A slots: the spread across classes of coordinate i, ``std_c m_c[i]`` (class means m_c);
- B slots: the surrogate gradient's size on coordinate i, ``||g_W[:, i]||``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lohp.errors import LohpError
from lohp.layout import ParamLayout
from lohp.policy.structure import register_structure
from lohp.condition import split as split_condition
from lohp.condition import weighted_means
from lohp.policy.surrogate import unit_rms, weighted_ce, weighted_ce_grad


@register_structure
@dataclass(frozen=True)
class LoraStructure:
    rank: int
    hidden: int
    n_classes: int
    a_offsets: tuple[int, ...]
    b_offsets: tuple[int, ...]
    head_offset: int
    size: int

    kind = "lora-dims"
    serves = "LoRA A [r, H] / B [H, r] pairs + a head [C, H]"
    scale_condition = False
    condition_channels = 1

    @classmethod
    def saved_options(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def from_layout(cls, layout: ParamLayout, options: dict[str, Any] | None = None) -> "LoraStructure":
        a = [e for e in layout.entries if "lora_A" in e.name]
        b = [e for e in layout.entries if "lora_B" in e.name]
        rest = [e for e in layout.entries if "lora_A" not in e.name and "lora_B" not in e.name]
        shapes = ", ".join(f"{e.name}{list(e.shape)}" for e in layout.entries[:4])
        if not a or len(a) != len(b) or len(rest) != 1 or len(rest[0].shape) != 2:
            raise LohpError(f"the lora-dims policy generates LoRA A/B pairs plus a head weight [C, H]; this layout "
                            f"has {shapes}{', ...' if len(layout.entries) > 4 else ''}")
        r, h = a[0].shape
        head = rest[0]
        for ea, eb in zip(a, b):
            if ea.name.replace("lora_A", "lora_B") != eb.name or ea.shape != (r, h) or eb.shape != (h, r):
                raise LohpError(f"LoRA matrices {ea.name}{list(ea.shape)} and {eb.name}{list(eb.shape)} do not pair "
                                f"as A [r, H] and B [H, r] with one rank and hidden size")
        if head.shape[1] != h:
            raise LohpError(f"head {head.name}{list(head.shape)} does not read the LoRA hidden size {h}")
        return cls(r, h, head.shape[0], tuple(e.offset for e in a), tuple(e.offset for e in b), head.offset,
                   layout.size)

    @property
    def n_modules(self) -> int:
        return len(self.a_offsets)

    @property
    def n_groups(self) -> int:
        return self.hidden

    @property
    def row_size(self) -> int:
        return 2 * self.rank * self.n_modules + self.n_classes

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rank": self.rank, "hidden": self.hidden, "n_classes": self.n_classes,
                "modules": self.n_modules}

    # ------------------------------------------------------------------ rows <-> flat
    def rows(self, theta: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., H, 2 r M + C]``."""
        lead = theta.shape[:-1]
        r, h, c = self.rank, self.hidden, self.n_classes
        n = r * h
        parts = []
        for oa, ob in zip(self.a_offsets, self.b_offsets):
            parts.append(theta[..., oa:oa + n].reshape(*lead, r, h).transpose(-1, -2))
            parts.append(theta[..., ob:ob + n].reshape(*lead, h, r))
        parts.append(theta[..., self.head_offset:self.head_offset + c * h].reshape(*lead, c, h).transpose(-1, -2))
        return torch.cat(parts, dim=-1)

    def flat(self, rows: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`rows`."""
        lead = rows.shape[:-2]
        r = self.rank
        pieces = []
        for m, (oa, ob) in enumerate(zip(self.a_offsets, self.b_offsets)):
            lo = 2 * r * m
            pieces.append((oa, rows[..., lo:lo + r].transpose(-1, -2).reshape(*lead, -1)))
            pieces.append((ob, rows[..., lo + r:lo + 2 * r].reshape(*lead, -1)))
        head = rows[..., 2 * r * self.n_modules:]
        pieces.append((self.head_offset, head.transpose(-1, -2).reshape(*lead, -1)))
        pieces.sort(key=lambda p: p[0])
        return torch.cat([p[1] for p in pieces], dim=-1)

    # ------------------------------------------------------------------ condition
    def condition_rows(self, cond: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Features ``[..., H, R, 1]`` aligned with :meth:`rows` (see the module doc)."""
        c, h, r = self.n_classes, self.hidden, self.rank
        if cond.shape[-2:] != (c, h) and (cond.dim() < 3 or cond.shape[-3] != c or cond.shape[-1] != h + 1):
            raise LohpError(f"task condition has shape {list(cond.shape)} but the policy was trained for "
                            f"{c} classes x {h} embedding dimensions; use {c}-way tasks of the same model")
        if theta is None:
            raise LohpError("the lora-dims structure needs the current weights to build its condition features")
        lead = theta.shape[:-1]
        pts, share = split_condition(cond, c, h)
        w = theta[..., self.head_offset:self.head_offset + c * h].reshape(*lead, c, h)
        _, _, g_w, _ = weighted_ce_grad(pts, share, w)                           # [..., C, H]
        head = unit_rms(g_w).transpose(-1, -2)                                    # [..., H, C]
        means = weighted_means(cond, c, h)
        spread = unit_rms(means.std(-2, unbiased=False)[..., None])               # [..., H, 1]
        size = unit_rms(g_w.norm(dim=-2)[..., None])                              # [..., H, 1]
        block = torch.cat([spread.expand(*lead, h, r), size.expand(*lead, h, r)], dim=-1)
        return torch.cat([block] * self.n_modules + [head], dim=-1)[..., None]

    def surrogate_loss(self, cond: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The head's weighted surrogate cross-entropy on the condition's points, ``[...]``
        (the LoRA matrices do not enter it: the condition is of the frozen model)."""
        c, h = self.n_classes, self.hidden
        pts, share = split_condition(cond, c, h)
        w = theta[..., self.head_offset:self.head_offset + c * h].reshape(*theta.shape[:-1], c, h)
        return weighted_ce(pts, share, w)
