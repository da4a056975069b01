"""Gaussian heads: mean from the shared backbone, per-step standard deviation.

The mean is predicted in units of the real optimizer's step size at that online step
(``step_scale[j]``, measured on the store), so the network's outputs are O(1) whether a
step moves weights by 1e-1 or 1e-4. The standard deviation is ``sigma * step_scale[j]``
with ``sigma`` fixed (default) or learned per step.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianHead(nn.Module):
    def __init__(self, channels: int, token_size: int, n_steps: int, sigma: float, learn_sigma: bool):
        super().__init__()
        self.out = nn.Linear(channels, token_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        log_sigma = torch.full((n_steps,), math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h)

    def sigma(self, j: torch.Tensor) -> torch.Tensor:
        """Relative std (multiply by step_scale[j]) for step indices ``j [B]``."""
        return self.log_sigma[j.clamp(max=len(self.log_sigma) - 1)].exp()
