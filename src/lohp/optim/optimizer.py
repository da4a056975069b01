"""The optimizer face shared by hand-written and learned optimizers.

``Optimizer.step(params, state, loss_and_grad)`` takes a function that returns the
per-run loss and gradient at given parameters. Plain gradient transformations call it
once; SAM calls it twice (ascent to the sharpest nearby point, then descent with the
gradient found there). A learned optimizer implements the same three methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lohp.errors import LohpError
from lohp.optim.transforms import GradientTransformation, State, adam, per_run, sgd

LossAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Optimizer:
    """A named optimizer with JSON-able hyper-parameters."""

    name: str
    hparams: dict[str, Any]
    transform: GradientTransformation
    sam_rho: float | torch.Tensor | None = None
    grads_per_step: int = field(init=False)

    def __post_init__(self) -> None:
        self.grads_per_step = 1 if self.sam_rho is None else 2

    def init(self, params: torch.Tensor) -> State:
        return self.transform.init(params)

    def step(self, params: torch.Tensor, state: State, loss_and_grad: LossAndGrad
             ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One step for every run; returns (new params, new state, loss before the step)."""
        loss, grads = loss_and_grad(params)
        if self.sam_rho is not None:
            grads = sam_gradient(params, grads, loss_and_grad, self.sam_rho)
        updates, state = self.transform.update(grads, state, params)
        return params + updates, state, loss


def sam_gradient(params: torch.Tensor, grads: torch.Tensor, loss_and_grad: LossAndGrad,
                 rho: float | torch.Tensor) -> torch.Tensor:
    """SAM's descent direction: the gradient at params + rho * g / ||g|| (per run)."""
    norm = grads.norm(dim=-1, keepdim=True)
    eps = per_run(rho, params) * grads / (norm + 1e-12)
    _, grads_adv = loss_and_grad(params + eps)
    return grads_adv


# Defaults chosen for small heads and MLPs on standardised features: every value can be
# overridden (CLI: --lr / --hparams); chosen so digits heads converge within 32 steps.
DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.2, "momentum": 0.9, "weight_decay": 0.0},
    "adam": {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
    "sam": {"lr": 0.2, "momentum": 0.9, "weight_decay": 0.0, "rho": 0.05},
    "sam-adam": {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
                 "rho": 0.05},
}
OPTIMIZERS = tuple(DEFAULTS)


def make_optimizer(name: str, **overrides: Any) -> Optimizer:
    """Build an optimizer by name with defaults, e.g. ``make_optimizer("adam", lr=1e-2)``."""
    if name not in DEFAULTS:
        raise LohpError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    unknown = set(overrides) - set(DEFAULTS[name])
    if unknown:
        raise LohpError(f"optimizer {name!r} has no hyper-parameter {', '.join(sorted(unknown))}; "
                        f"it takes {', '.join(DEFAULTS[name])}")
    hp = {**DEFAULTS[name], **overrides}
    for key in ("lr", "rho"):
        if key in hp and not float(hp[key]) > 0:
            raise LohpError(f"{name}: {key} must be > 0 (got {hp[key]})")
    if name in ("sgd", "sam"):
        t = sgd(hp["lr"], hp["momentum"], weight_decay=hp["weight_decay"])
    else:
        t = adam(hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"],
                 decoupled=(name == "adamw"))
    return Optimizer(name, hp, t, sam_rho=hp.get("rho"))
