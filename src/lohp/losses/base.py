"""What every loss builds on: the :class:`Batch` it is called with, and :class:`LossOptions`,
the base of a method's options.

Each loss owns its options, a :class:`LossOptions` dataclass beside the loss class
(``OneStepOptions`` in ``onestep.py``, ``SubTBOptions`` in ``hybrid.py``,
``RegressionOptions`` in ``lodi.py``) that checks its own fields and nothing else, so its
validity never depends on which methods were imported. The options several losses share
(the Hessian-trace regularizer of the on-policy losses) are a base class here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

import torch

from lohp.config import Config, setting
from lohp.errors import LohpError


@dataclass
class Batch:
    offline: torch.Tensor          # [B, N+1, d] real trajectory at online times (stride k)
    cond: torch.Tensor             # [B, C, F] task conditions
    generator: torch.Generator     # randomness of this iteration (rollout noise, input noise)
    # Training-split loss of the batch's tasks: ``task_loss(rows)(theta [len(rows), d]) -> [len(rows)]``
    # (rows index this batch). Only the flatness regularizer needs it.
    task_loss: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None


@dataclass
class LossOptions(Config):
    """The options of one method's loss (the base has none: a loss without options).

    A subclass is an ordinary :class:`~lohp.config.Config` dataclass whose ``__post_init__``
    checks its own fields. ``formulation`` names the formulation its losses implement
    (``"states"``, ``"subtb"``) for the ``formulation`` key of policy folders written before
    options were per method; ``scope`` says, per option, which methods take it, for the
    refusal of that option by a method that does not."""

    what = "loss"
    formulation: ClassVar[str | None] = None
    scope: ClassVar[dict[str, str]] = {}


_FLATNESS_SCOPE = ("the flatness regularizers act on weights the policy generates; use them with lo-hp, lo-op "
                   "(one-step predictions) or lo-hp-v1 / lo-hp-literal (rollouts, beta < 1)")


@dataclass
class FlatnessOptions(LossOptions):
    """The L2O-Entropy regularizer of the on-policy losses: weight * the Hutchinson Hessian
    trace of the task's loss at weights the policy generates (lo-hp, lo-op: the one-step
    predictions; lo-hp-v1, lo-hp-literal: the rollouts' s_N)."""

    scope = {"flatness_weight": _FLATNESS_SCOPE, "flatness_probes": _FLATNESS_SCOPE}

    flatness_weight: float = setting(0.0, "Flatness regularizer weight (Hessian trace at the generated weights).")
    flatness_probes: int = setting(1, "Hutchinson probes of the flatness regularizer.")

    def __post_init__(self) -> None:
        check_flatness(self)


def check_beta(beta: float) -> None:
    if not 0 <= beta <= 1:
        raise LohpError(f"beta must lie in [0, 1] (got {beta})")


def check_flatness(o: FlatnessOptions) -> None:
    if o.flatness_weight < 0 or o.flatness_probes < 1:
        raise LohpError("flatness_weight must be >= 0 and flatness_probes >= 1")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LohpError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


O = TypeVar("O", bound=LossOptions)


def options_of(config: Any, cls: type[O], loss: str) -> O:
    """A loss's options from what it was built with: the run's ``LossConfig`` (its
    ``options``) or the options themselves; options of another class are refused."""
    options = config if isinstance(config, cls) else config.options
    if not isinstance(options, cls):
        raise LohpError(f"{loss} takes {cls.__name__} (got {type(options).__name__})")
    return options
