"""Sub-trajectory balance: vectorised residuals, SubTB(lambda) weights, the hybrid loss.

For a trajectory s_0..s_N with flows log F(s_j), forward log-probabilities
log P_F(s_{j+1}|s_j) and backward log-probabilities log P_B(s_j|s_{j+1}), the residual
of the segment m < n is

    Delta(m, n) = log F(s_m) + sum_{j=m}^{n-1} [log P_F(s_{j+1}|s_j) - log P_B(s_j|s_{j+1})] - log F(s_n)

With the running sum c_n = sum_{j<n} (log P_F - log P_B)_j this is
``log F_m - log F_n + c_n - c_m``: all O(N^2) segments from one cumulative sum
(tested against a plain double loop).
"""

from __future__ import annotations

import torch


def subtb_residuals(log_f: torch.Tensor, log_pf: torch.Tensor, log_pb: torch.Tensor) -> torch.Tensor:
    """``log_f [..., N+1]``, ``log_pf/log_pb [..., N]`` -> ``Delta [..., N+1, N+1]``.

    Entry ``[m, n]`` is the residual of segment m -> n; only ``m < n`` is meaningful
    (weights are zero elsewhere).
    """
    c = torch.cat([torch.zeros_like(log_pf[..., :1]), torch.cumsum(log_pf - log_pb, dim=-1)], dim=-1)
    a = log_f - c  # Delta(m, n) = (log F_m - c_m) - (log F_n - c_n)
    return a.unsqueeze(-1) - a.unsqueeze(-2)


def subtb_weights(n_states: int, lam: float, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SubTB(lambda) weights ``[N+1, N+1]``: lambda^(n-m) for m < n, summing to 1."""
    idx = torch.arange(n_states, device=device)
    length = (idx[None, :] - idx[:, None]).to(dtype)
    w = torch.where(length > 0, torch.as_tensor(lam, dtype=dtype, device=device) ** length,
                    torch.zeros((), dtype=dtype, device=device))
    return w / w.sum()


def subtb_loss(delta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of squared residuals over segments -> ``[...]``."""
    return (weights * delta.square()).sum((-1, -2))
