"""Losses by method name: ``make_loss(loss_config("lo-hp", k=2, beta=0.5))``.

Each loss owns its options (a :class:`LossOptions` dataclass beside the loss class) and is
registered with them: a new method is one loss class, its options class (if it has
options) and one ``register_method(Method(name, loss, preset, options=MyOptions))``; the
CLI, the trainer, saved policies and the training log (its columns are the diagnostics the
loss declares) pick it up by name. :class:`LossConfig` is the method, k and the method's
options (registry.py); the methods and what they are: the table in registry.py.
"""

from __future__ import annotations

from typing import Callable

import torch

from lohp.losses.base import Batch, FlatnessOptions, LossOptions
from lohp.losses.hybrid import HybridSubTB, SubTBOptions
from lohp.losses.lodi import LocalRegression, RegressionOptions
from lohp.losses.onestep import OneStepOptions, OnPolicyStates
from lohp.losses.registry import (
    METHODS,
    PRESETS,
    FlatOptions,
    LossConfig,
    Method,
    get_method,
    loss_config,
    make_loss,
    method_names,
    register_method,
)
from lohp.losses.subtb import subtb_loss, subtb_residuals, subtb_weights

Loss = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def loss_diagnostics(loss: Loss) -> tuple[str, ...]:
    """The diagnostic names a loss returns beside its value (its ``diagnostics`` attribute)."""
    return tuple(getattr(loss, "diagnostics", ()))


__all__ = ["METHODS", "PRESETS", "Batch", "FlatOptions", "FlatnessOptions", "HybridSubTB", "LocalRegression",
           "LossConfig", "LossOptions", "Method", "OnPolicyStates", "OneStepOptions", "RegressionOptions",
           "SubTBOptions", "get_method", "loss_config", "loss_diagnostics", "make_loss", "method_names",
           "register_method", "subtb_loss", "subtb_residuals", "subtb_weights"]
