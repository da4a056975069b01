"""A small 1-D U-Net over weight tokens, with FiLM time conditioning and class pooling.

Tensors are channel-last, ``[G, L, channels]``: G groups (B tasks x classes), L tokens.
Convolutions over tokens are written as a window gather plus one matmul: on a CPU the
tiny 1-D convolutions of this network cost ~60 us each through oneDNN and ~5 us as a
matmul, which is the difference between meeting the latency target and missing it.
Groups are processed independently except at the bottleneck, where each group receives
the mean over the groups of its own task (a DeepSets-style exchange that keeps the
network equivariant to the order of classes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of a fractional step index ``t [B]`` in [0, 1] -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = t.float()[:, None] * freqs[None] * 100.0
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class TokenConv(nn.Module):
    """Conv1d over the token axis of ``[G, L, C]`` (odd kernel, same padding) as a matmul."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError("kernel must be odd")
        self.kernel = kernel
        self.lin = nn.Linear(kernel * c_in, c_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.kernel == 1:
            return self.lin(h)
        r = self.kernel // 2
        win = F.pad(h, (0, 0, r, r)).unfold(1, self.kernel, 1)  # [G, L, C, k]
        return self.lin(win.reshape(*h.shape[:2], -1))


class FiLMBlock(nn.Module):
    """h + W2 silu(FiLM(conv(silu(h)))): one residual block; time enters as scale and shift."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = TokenConv(channels, channels, kernel)
        self.point = nn.Linear(channels, channels)

    def forward(self, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.silu(h))
        x = torch.addcmul(shift, x, 1 + scale)
        return h + self.point(F.silu(x))


class UNet1d(nn.Module):
    def __init__(self, in_channels: int, channels: int, n_tokens: int, depth: int = 2, emb_dim: int = 32,
                 kernel: int = 3):
        super().__init__()
        if n_tokens % (2 ** depth):
            raise ValueError("token count must be divisible by 2**depth")
        self.depth, self.channels = depth, channels
        self.inp = nn.Linear(in_channels, channels)
        self.pos = nn.Parameter(torch.zeros(n_tokens, channels))
        n_blocks = 2 * depth + 1
        self.blocks = nn.ModuleList(FiLMBlock(channels, kernel) for _ in range(n_blocks))
        # One linear maps the time embedding to every block's (scale, shift); zero-init so
        # the network starts unconditioned.
        self.film = nn.Linear(emb_dim, 2 * channels * n_blocks)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.down = nn.ModuleList(nn.Linear(2 * channels, channels) for _ in range(depth))
        self.pool = nn.Linear(channels, channels)
        self.up = nn.ModuleList(nn.Linear(channels, 2 * channels) for _ in range(depth))
        self.merge = nn.ModuleList(nn.Linear(2 * channels, channels) for _ in range(depth))

    def film_params(self, emb: torch.Tensor) -> torch.Tensor:
        """Every block's (scale, shift) from time embeddings ``[B, emb_dim]``."""
        return self.film(emb).reshape(emb.shape[0], len(self.blocks), 2, 1, self.channels)

    def forward(self, x: torch.Tensor, film: torch.Tensor, groups_per_item: int) -> torch.Tensor:
        """``x [G, L, in]``, ``film [G, blocks, 2, 1, channels]`` -> ``[G, L, channels]``."""
        g = x.shape[0]
        h = self.inp(x) + self.pos
        skips, b = [], 0
        for down in self.down:
            h = self.blocks[b](h, film[:, b, 0], film[:, b, 1])
            b += 1
            skips.append(h)
            h = down(h.reshape(g, h.shape[1] // 2, 2 * self.channels))  # stride-2 conv, kernel 2
        h = self.blocks[b](h, film[:, b, 0], film[:, b, 1])
        b += 1
        pooled = h.reshape(g // groups_per_item, groups_per_item, *h.shape[1:]).mean(1)  # over classes
        h = h + self.pool(pooled).repeat_interleave(groups_per_item, 0)
        for up, merge in zip(self.up, self.merge):
            h = up(h).reshape(g, h.shape[1] * 2, self.channels)  # transposed conv, kernel 2
            h = merge(torch.cat([h, skips.pop()], dim=-1))
            h = self.blocks[b](h, film[:, b, 0], film[:, b, 1])
            b += 1
        return F.silu(h)
