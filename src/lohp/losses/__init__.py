"""Losses by method name: ``make_loss("lo-hp", k=2, beta=0.5)``."""

from __future__ import annotations

from typing import Callable

import torch

from lohp.losses.base import METHODS, PRESETS, Batch, LossConfig, loss_config
from lohp.losses.hybrid import HybridSubTB
from lohp.losses.lodi import LocalRegression
from lohp.losses.onestep import OnPolicyStates
from lohp.losses.subtb import subtb_loss, subtb_residuals, subtb_weights

Loss = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def make_loss(config: LossConfig) -> Loss:
    if config.method in ("lo-di", "lo-di-noise", "hypernetwork"):
        return LocalRegression(config)
    return HybridSubTB(config) if config.formulation == "subtb" else OnPolicyStates(config)


__all__ = ["METHODS", "PRESETS", "Batch", "HybridSubTB", "LocalRegression", "OnPolicyStates", "LossConfig", "loss_config",
           "make_loss", "subtb_loss", "subtb_residuals", "subtb_weights"]
