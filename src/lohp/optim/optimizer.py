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


@dataclass(frozen=True)
class NamedOptimizer:
    """A registered optimizer: its default hyper-parameters (every key a user may set) and
    ``build(hparams) -> GradientTransformation``; ``sam``: SAM's two-gradient step with
    ``hparams["rho"]``."""

    name: str
    defaults: dict[str, Any]
    build: Callable[[dict[str, Any]], GradientTransformation]
    sam: bool = False


_REGISTRY: dict[str, NamedOptimizer] = {}
# name -> default hyper-parameters of every registered optimizer (a live view of the registry)
DEFAULTS: dict[str, dict[str, Any]] = {}


def register_optimizer(name: str, defaults: dict[str, Any], build: Callable[[dict[str, Any]], GradientTransformation],
                       sam: bool = False, overwrite: bool = False) -> NamedOptimizer:
    """Make ``name`` usable wherever lohp builds an optimizer by name (``lohp prepare
    --optimizers``, ``generate --refine-optimizer``, ``make_optimizer``); a taken name is
    refused unless ``overwrite``."""
    if name in _REGISTRY and not overwrite:
        raise LohpError(f"an optimizer named {name!r} is already registered; pick another name")
    if sam and "rho" not in defaults:
        raise LohpError(f"optimizer {name!r}: a SAM optimizer needs a default 'rho'")
    entry = NamedOptimizer(name, dict(defaults), build, sam)
    _REGISTRY[name] = entry
    DEFAULTS[name] = entry.defaults
    return entry


def optimizer_names() -> tuple[str, ...]:
    """Every registered optimizer (the built-in ones first)."""
    return tuple(_REGISTRY)


def make_optimizer(name: str, **overrides: Any) -> Optimizer:
    """Build an optimizer by name with defaults, e.g. ``make_optimizer("adam", lr=1e-2)``."""
    if name not in _REGISTRY:
        raise LohpError(f"unknown optimizer {name!r}; choose from {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    unknown = set(overrides) - set(entry.defaults)
    if unknown:
        raise LohpError(f"optimizer {name!r} has no hyper-parameter {', '.join(sorted(unknown))}; "
                        f"it takes {', '.join(entry.defaults)}")
    hp = {**entry.defaults, **overrides}
    for key in ("lr", "rho"):
        if key in hp and not float(hp[key]) > 0:
            raise LohpError(f"{name}: {key} must be > 0 (got {hp[key]})")
    return Optimizer(name, hp, entry.build(hp), sam_rho=hp["rho"] if entry.sam else None)


def _sgd(hp: dict[str, Any]) -> GradientTransformation:
    return sgd(hp["lr"], hp["momentum"], weight_decay=hp["weight_decay"])


def _adam(decoupled: bool) -> Callable[[dict[str, Any]], GradientTransformation]:
    return lambda hp: adam(hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"], decoupled=decoupled)


# Defaults chosen for small heads and MLPs on standardised features: every value can be
# overridden (CLI: --lr / --hparams); chosen so digits heads converge within 32 steps.
_ADAM = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
register_optimizer("sgd", {"lr": 0.2, "momentum": 0.9, "weight_decay": 0.0}, _sgd)
register_optimizer("adam", {**_ADAM, "weight_decay": 0.0}, _adam(False))
register_optimizer("adamw", {**_ADAM, "weight_decay": 0.01}, _adam(True))
register_optimizer("sam", {"lr": 0.2, "momentum": 0.9, "weight_decay": 0.0, "rho": 0.05}, _sgd, sam=True)
register_optimizer("sam-adam", {**_ADAM, "weight_decay": 0.0, "rho": 0.05}, _adam(False), sam=True)
OPTIMIZERS = optimizer_names()  # the built-in optimizers; optimizer_names() is the live list
