"""Local regression losses: lo-di, lo-di-noise and the hypernetwork.

lo-di regresses the real stride-k step: mu(theta_{kj}, j, c) ~ theta_{k(j+1)} - theta_{kj},
in units of the step scale so every online step weighs the same. lo-di-noise feeds a
noise-perturbed state and asks for the step to the clean next checkpoint (a denoising
target), which teaches the policy to pull far-away starts back. The hypernetwork is the
same regression with k = T: one step from theta_0 straight to theta_T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lohp.config import setting
from lohp.losses.base import Batch, LossOptions, options_of
from lohp.policy import LohpPolicy


@dataclass
class RegressionOptions(LossOptions):
    """The options of :class:`LocalRegression` (lo-di, lo-di-noise, hypernetwork)."""

    scope = {"input_noise": "lo-di, lo-di-noise, hypernetwork (the regressions) take it"}

    input_noise: float = setting(0.0, "lo-di-noise: input noise std, in units of the theta_0 RMS.")


class LocalRegression:
    diagnostics = ("loss_reg",)  # the names beside the loss value (the training log's columns)

    def __init__(self, config: Any):
        """``config``: the run's :class:`~lohp.losses.LossConfig`, or the options themselves."""
        self.config = config
        self.options = options_of(config, RegressionOptions, "LocalRegression")

    def __call__(self, policy: LohpPolicy, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        off = batch.offline
        b, n1, d = off.shape
        n = n1 - 1
        states = off[:, :-1].reshape(b * n, d)
        nxt = off[:, 1:].reshape(b * n, d)
        if self.options.input_noise > 0:
            noise = torch.randn(states.shape, generator=batch.generator, device=states.device)
            states = states + self.options.input_noise * policy.init_scale * noise
        jj = torch.arange(n, device=off.device).repeat(b)
        mu, _ = policy.heads(states, jj, batch.cond.repeat_interleave(n, 0))
        err = (nxt - states - mu) / policy.step_scale[jj][:, None]
        loss = err.square().mean()
        return loss, {"loss_reg": loss.item()}
