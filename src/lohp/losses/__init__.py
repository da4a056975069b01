"""Losses by method name: ``make_loss(loss_config("lo-hp", k=2, beta=0.5))``.

Methods are registered (:func:`register_method`): a new method is one loss class plus one
``register_method(Method(name, loss, preset))``; the CLI, the trainer, saved policies and
the training log (its columns are the diagnostics the loss declares) pick it up by name.
"""

from __future__ import annotations

from typing import Callable

import torch

from lohp.losses.base import (
    METHODS,
    PRESETS,
    Batch,
    LossConfig,
    Method,
    get_method,
    loss_config,
    method_names,
    register_method,
)
from lohp.losses.hybrid import HybridSubTB
from lohp.losses.lodi import LocalRegression
from lohp.losses.onestep import OnPolicyStates
from lohp.losses.subtb import subtb_loss, subtb_residuals, subtb_weights

Loss = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def _on_policy(config: LossConfig) -> Loss:
    """lo-hp / lo-op / lo-hp-v1 / lo-hp-literal: the formulation picks the loss class."""
    return HybridSubTB(config) if config.formulation == "subtb" else OnPolicyStates(config)


for _name, _preset in PRESETS.items():
    _regression = _name in ("lo-di", "lo-di-noise", "hypernetwork")
    register_method(Method(_name, LocalRegression if _regression else _on_policy, dict(_preset),
                           whole_trajectory=_name == "hypernetwork", regression=_regression))


def make_loss(config: LossConfig) -> Loss:
    return get_method(config.method).loss(config)


def loss_diagnostics(loss: Loss) -> tuple[str, ...]:
    """The diagnostic names a loss returns beside its value (its ``diagnostics`` attribute)."""
    return tuple(getattr(loss, "diagnostics", ()))


__all__ = ["METHODS", "PRESETS", "Batch", "HybridSubTB", "LocalRegression", "Method", "OnPolicyStates", "LossConfig",
           "get_method", "loss_config", "loss_diagnostics", "make_loss", "method_names", "register_method",
           "subtb_loss", "subtb_residuals", "subtb_weights"]
