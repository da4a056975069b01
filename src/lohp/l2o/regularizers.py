"""Flatness regularizers for learned-optimizer meta-training (L2O-Entropy).

Two flatness measures (defined and estimated in :mod:`lohp.flatness`), each usable at
two places, with its own weight:

- on the **optimizee**: the penalty of the weights ``theta_t`` the learned optimizer
  produces during the unroll (full training-split loss), added to the meta-loss, so the
  optimizer learns to walk into flat regions;

  * ``hessian``: Hutchinson ``tr H(theta_t)`` (``probes`` Rademacher vectors,
    forward-over-reverse HVPs; back-propagated through ``theta_t`` into the LSTM);
  * ``entropy``: negative local entropy, via the surrogate ``gamma/2 ||theta_t -
    stopgrad(mu)||^2`` whose gradient is ``-T grad F`` (Langevin chain of ``steps``
    steps at temperature ``temperature``, scope ``gamma``, step ``lr``);

- on the **meta-objective** (the flatness of the meta-loss as a function of the LSTM's
  own weights ``phi``):

  * ``hessian``: Hutchinson ``tr H_phi`` of the truncated segment's meta-loss
    (reverse-over-reverse autograd), added to it;
  * ``entropy``: Entropy-SGD on ``phi``: a Langevin chain over ``phi`` (each step re-runs
    the segment with perturbed LSTM weights) gives ``mu_phi``, and
    ``weight * gamma * (phi - mu_phi)`` is added to the meta-gradient.

``every`` applies the optimizee penalty at every ``every``-th unrolled step only (the
penalty is averaged over the steps where it is applied).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from lohp.errors import LohpError
from lohp.flatness import LossFn, hutchinson_trace, hutchinson_trace_graph, local_entropy_loss

REGULARIZERS = ("hessian", "entropy")
TARGETS = ("optimizee", "meta")


@dataclass
class Regularizer:
    """One flatness regularizer: which measure, its weight and its estimator settings."""

    name: str
    weight: float = 1.0
    probes: int = 1            # hessian: Rademacher probes per estimate
    gamma: float = 1.0         # entropy: scope
    temperature: float = 1e-3  # entropy: Langevin temperature T
    steps: int = 10            # entropy: Langevin steps
    lr: float = 0.05           # entropy: Langevin step size
    every: int = 1             # optimizee target: apply at every n-th unrolled step

    def __post_init__(self) -> None:
        if self.name not in REGULARIZERS:
            raise LohpError(f"unknown regularizer {self.name!r}; choose one of {', '.join(REGULARIZERS)}")
        for key in ("probes", "steps", "every"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise LohpError(f"regularizer {self.name}: {key} must be a positive whole number (got {v!r})")
        for key in ("gamma", "temperature", "lr"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise LohpError(f"regularizer {self.name}: {key} must be > 0 (got {v!r})")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight >= 0):
            raise LohpError(f"regularizer {self.name}: weight must be a finite number >= 0 (got {self.weight!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ----------------------------------------------------------------- optimizee
    def optimizee_penalty(self, loss_fn: LossFn, theta: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-run penalty of weights ``theta [R, d]`` (differentiable through ``theta``)."""
        if self.name == "hessian":
            return hutchinson_trace(loss_fn, theta, self.probes, generator)
        return local_entropy_loss(loss_fn, theta, self.gamma, self.temperature, self.steps, self.lr, generator)

    # ----------------------------------------------------------------- meta
    def meta_hessian(self, loss: torch.Tensor, params: list[torch.Tensor],
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Hutchinson trace of the meta-loss Hessian w.r.t. the optimizer's weights."""
        return hutchinson_trace_graph(loss, params, self.probes, generator, create_graph=True)


def make_regularizer(spec: "str | dict[str, Any] | Regularizer | None", **overrides: Any) -> Regularizer | None:
    """``"hessian"``, ``"entropy:weight=0.1,gamma=3"``, a dict, a Regularizer or None."""
    if spec is None or isinstance(spec, Regularizer) and not overrides:
        return spec
    if isinstance(spec, Regularizer):
        spec = spec.to_dict()
    if isinstance(spec, str):
        name, _, rest = spec.partition(":")
        cfg: dict[str, Any] = {"name": name.strip()}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise LohpError(f"regularizer settings take KEY=VALUE, e.g. hessian:weight=0.1 (got {item!r})")
            try:
                cfg[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
            except ValueError:
                raise LohpError(f"regularizer setting {key}={value!r} is not a number") from None
        spec = cfg
    cfg = {**dict(spec), **overrides}
    known = {f.name for f in fields(Regularizer)}
    unknown = set(cfg) - known
    if "name" not in cfg:
        raise LohpError(f"a regularizer needs a name ({', '.join(REGULARIZERS)})")
    if unknown:
        raise LohpError(f"regularizer {cfg['name']!r} has no setting {', '.join(sorted(unknown))}; "
                        f"it takes {', '.join(sorted(known - {'name'}))}")
    for key in ("probes", "steps", "every"):
        if isinstance(cfg.get(key), float) and float(cfg[key]).is_integer():
            cfg[key] = int(cfg[key])
    return Regularizer(**cfg)


__all__ = ["REGULARIZERS", "TARGETS", "Regularizer", "make_regularizer"]
