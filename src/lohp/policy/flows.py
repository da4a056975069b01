"""Learnable flow coefficients log Z(j): one scalar per online step (paper: 'learnable
coefficient'). Used by losses configured with ``log_z="learned"``; the default recipe
replaces them by the per-task mean residual (see lohp.losses.subtb)."""

from __future__ import annotations

import torch
from torch import nn


class LogZ(nn.Module):
    def __init__(self, n_states: int):
        super().__init__()
        self.values = nn.Parameter(torch.zeros(n_states))

    def forward(self, j: torch.Tensor | None = None) -> torch.Tensor:
        return self.values if j is None else self.values[j]
