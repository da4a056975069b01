"""Local regression losses: lo-di, lo-di-noise and the hypernetwork.

lo-di regresses the real stride-k step: mu(theta_{kj}, j, c) ~ theta_{k(j+1)} - theta_{kj},
in units of the step scale so every online step weighs the same. lo-di-noise feeds a
noise-perturbed state and asks for the step to the clean next checkpoint (a denoising
target), which teaches the policy to pull far-away starts back. The hypernetwork is the
same regression with k = T: one step from theta_0 straight to theta_T.
"""

from __future__ import annotations

import torch

from lohp.losses.base import Batch, LossConfig
from lohp.policy import LohpPolicy


class LocalRegression:
    diagnostics = ("loss_reg",)  # the names beside the loss value (the training log's columns)

    def __init__(self, config: LossConfig):
        self.config = config

    def __call__(self, policy: LohpPolicy, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        off = batch.offline
        b, n1, d = off.shape
        n = n1 - 1
        states = off[:, :-1].reshape(b * n, d)
        nxt = off[:, 1:].reshape(b * n, d)
        if self.config.input_noise > 0:
            noise = torch.randn(states.shape, generator=batch.generator, device=states.device)
            states = states + self.config.input_noise * policy.init_scale * noise
        jj = torch.arange(n, device=off.device).repeat(b)
        mu, _ = policy.heads(states, jj, batch.cond.repeat_interleave(n, 0))
        err = (nxt - states - mu) / policy.step_scale[jj][:, None]
        loss = err.square().mean()
        return loss, {"loss_reg": loss.item()}
