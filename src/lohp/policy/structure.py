"""How a flat weight vector is cut into groups the policy can share weights across.

A *structure* cuts ``theta [..., d]`` into G groups ("rows") of equal length R that the
policy processes with one shared network, exchanging information only through a
symmetric pooling over groups. The protocol (duck-typed, see :class:`ClassRowStructure`):

- ``kind`` (str), ``n_groups`` (G), ``row_size`` (R)
- ``rows(theta [..., d]) -> [..., G, R]`` and its exact inverse ``flat(rows) -> [..., d]``
- ``condition_rows(cond, theta) -> [..., G, R, K]``: K channels of per-position condition
  features aligned with the rows; they may depend on the current weights (a network's own
  function). Channel 0 is the one the policy's learned preconditioned step acts on: the
  negative gradient of the surrogate loss (:mod:`lohp.policy.surrogate`), unit RMS.
  (a structure written to the earlier one-channel protocol, returning ``[..., G, R]`` and
  without ``condition_channels``, is read as K = 1)
- optionally ``surrogate_loss(cond, theta) -> [...]``: that surrogate loss itself,
  differentiable in ``theta`` (what lo-hp's flatness regularizers measure)
- ``condition_channels`` (K) and ``scale_condition`` (bool: whether the policy divides the
  features by the RMS of the training conditions; False when the structure normalises
  them itself)
- ``to_dict()`` (JSON with ``kind`` and the structure's options) and
  ``from_layout(layout, options)``, which raises :class:`LohpError` when the layout does
  not fit; ``saved_options(spec)`` reads the options back from a saved ``to_dict()``.

Structures register by kind (:func:`register_structure`); :func:`make_structure` picks
the first registered one that fits a layout, or the saved kind when reopening a policy.

For a classifier head (``weight [C, F]`` and ``bias [C]``) each output class is one
group: its row of weights plus its bias, paired position by position with that class's
condition features: the negative surrogate gradient of its row (``features="gradient"``,
the default: an untrained policy is then a sane optimizer of the surrogate loss) and its
class mean (the share-weighted mean of a coreset condition's points; unit RMS per task). ``features="means"`` is the earlier form (class means
only, scaled by the training RMS). The policy processes every group with the same network
and sees the other classes only through symmetric pooling, so relabelling the classes
permutes the generated rows the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lohp.errors import LohpError
from lohp.layout import ParamLayout
from lohp.condition import split as split_condition
from lohp.condition import weighted_means
from lohp.policy.surrogate import unit_rms, weighted_ce, weighted_ce_grad

HEAD_FEATURES = ("gradient", "means")


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
    features: str = "gradient"

    kind = "class-rows"
    serves = "a linear head: weight [C, F] + bias [C]"
    # The group count: the shared per-group network and mean pooling serve any number of
    # classes (cross-architecture generation); the row (F + 1) must stay the same.
    group_dim = "n_classes"

    @property
    def scale_condition(self) -> bool:
        return self.features == "means"

    @property
    def condition_channels(self) -> int:
        return 2 if self.features == "gradient" else 1

    @classmethod
    def saved_options(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {"features": spec.get("features", "means")}  # policies saved before the option: means

    @classmethod
    def from_layout(cls, layout: ParamLayout, options: dict[str, Any] | None = None) -> "ClassRowStructure":
        features = (options or {}).get("features", "gradient")
        if features not in HEAD_FEATURES:
            raise LohpError(f"unknown head features {features!r}; choose one of {', '.join(HEAD_FEATURES)}")
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
                   b.offset if b else None, layout.size, features)

    @property
    def n_groups(self) -> int:
        return self.n_classes

    @property
    def row_size(self) -> int:
        return self.n_features + (1 if self.bias else 0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_classes": self.n_classes, "n_features": self.n_features,
                "features": self.features}

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
        """Per-class features ``[..., C, R, K]`` aligned with :meth:`rows` (see the module doc)."""
        c, f = self.n_classes, self.n_features
        pts, share = split_condition(cond, c, f)
        mean = weighted_means(cond, c, f)
        means = mean if self.bias is None else torch.cat([mean, torch.zeros_like(mean[..., :1])], dim=-1)
        if self.features == "means":
            return means[..., None]
        if theta is None:
            raise LohpError("the class-rows structure needs the current weights to build its gradient features")
        rows = self.rows(theta)
        w, b = rows[..., :f], (rows[..., f] if self.bias else None)
        _, _, g_w, g_b = weighted_ce_grad(pts, share, w, b)
        grad = g_w if g_b is None else torch.cat([g_w, g_b[..., None]], dim=-1)
        return torch.stack([unit_rms(grad), unit_rms(means)], dim=-1)

    def surrogate_loss(self, cond: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The surrogate loss ``[...]`` of the weights on the condition's weighted points
        (differentiable in ``theta``: the flatness regularizers' loss)."""
        pts, share = split_condition(cond, self.n_classes, self.n_features)
        rows = self.rows(theta)
        return weighted_ce(pts, share, rows[..., :self.n_features], rows[..., self.n_features] if self.bias else None)


_STRUCTURES: dict[str, Any] = {}


def register_structure(cls: Any = None, *, overwrite: bool = False) -> Any:
    """Register a structure class by its ``kind`` (usable as a decorator). Registration
    order is the order :func:`make_structure` tries them in. Another class of a kind
    already registered is refused (saved policies reopen through the kind) unless
    ``overwrite``."""
    def add(cls: Any) -> Any:
        old = _STRUCTURES.get(cls.kind)
        if old is not None and old is not cls and not overwrite:
            raise LohpError(f"a policy structure of kind {cls.kind!r} is already registered ({old.__name__}); "
                            "pick another kind or pass overwrite=True")
        _STRUCTURES[cls.kind] = cls
        return cls
    return add if cls is None else add(cls)


register_structure(ClassRowStructure)


def _registry() -> dict[str, Any]:
    # The built-in structures register when ``lohp.policy`` imports their modules.
    return _STRUCTURES


def retarget(trained: Any, layout: ParamLayout) -> Any:
    """The trained structure's kind and options applied to another layout, when the policy
    can serve it: only the group count (the kind's ``group_dim``: classes of a head, hidden
    units of an MLP) may differ, since the policy shares one network across groups and
    pools them by their mean. Anything else (the row: features, inputs, classes of an MLP,
    LoRA rank) is refused in one line naming what differs."""
    cls = type(trained)
    try:
        new = cls.from_layout(layout, cls.saved_options(trained.to_dict()))
    except LohpError as exc:
        raise LohpError(f"the policy ({trained.kind}) cannot serve this model: {exc}") from None
    free = getattr(cls, "group_dim", None)
    a, b = trained.to_dict(), new.to_dict()
    diffs = [f"{k} {b.get(k)} (trained: {a.get(k)})" for k in a if k != free and a.get(k) != b.get(k)]
    if diffs:
        what = f"; only {free} may differ" if free else ""
        raise LohpError(f"the {trained.kind} policy cannot serve this model: {', '.join(diffs)}{what}; "
                        "train a policy on this architecture")
    return new


def make_structure(layout: ParamLayout, options: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
                   kind: str | None = None):
    """The structure for a generated subset: the saved kind (``spec``, a structure's
    ``to_dict()``) when reopening a policy, the registered ``kind`` when one is asked for,
    else the first registered one that fits."""
    registry = _registry()
    if kind is not None and spec is None:
        cls = registry.get(kind)
        if cls is None:
            raise LohpError(f"unknown policy structure {kind!r}; choose one of "
                            + ", ".join(f"{k} ({getattr(c, 'serves', k)})" for k, c in registry.items()))
        return cls.from_layout(layout, options)
    if spec is not None:
        cls = registry.get(spec.get("kind"))
        if cls is None:
            raise LohpError(f"the policy uses the structure {spec.get('kind')!r}, which this lohp build does not "
                            f"have (it has {', '.join(registry)}); upgrade lohp or register that structure")
        return cls.from_layout(layout, cls.saved_options(spec))
    reasons = []
    for cls in registry.values():
        try:
            return cls.from_layout(layout, options)
        except LohpError as exc:
            reasons.append(str(exc))
    shapes = ", ".join(f"{e.name}{list(e.shape)}" for e in layout.entries[:6])
    more = ", ..." if len(layout.entries) > 6 else ""
    kinds = ", ".join(f"{k} ({getattr(c, 'serves', k)})" for k, c in registry.items())
    raise LohpError(f"no policy structure fits the generated subset ({shapes}{more}); the structures are {kinds}: "
                    "choose parameter patterns that select one of those, or register a structure")
