"""The surrogate loss every structure's condition features come from (one implementation).

A task's condition is its per-class mean features ``m_c`` (C rows). The *surrogate loss*
pushes each class mean through the current weights as one example labelled c and takes
the mean cross-entropy over the C examples. Its negative gradient is what a gradient
optimizer would follow if the task were its class means; the policy sees it (scaled to
unit RMS per task) and learns a preconditioned step on it plus a correction. It needs
only the condition and the current weights: no pass over the task's data, no autograd
(closed forms below, tested against autograd).
"""

from __future__ import annotations

import torch


def class_mean_ce_grad(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Negative gradient of ``mean_c CE(x_c w^T + b, label c)`` with respect to the logits,
    ``w`` and ``b``.

    ``x [..., C, F]`` (example c is labelled c), ``w [..., C, F]``, ``b [..., C]`` or None.
    Returns ``(delta [..., C(ex), C], g_w [..., C, F], g_b [..., C] or None)`` with
    ``delta = (I - softmax(logits)) / C`` = minus the gradient with respect to the logits.
    """
    logits = x @ w.transpose(-1, -2)
    if b is not None:
        logits = logits + b[..., None, :]
    c = w.shape[-2]
    delta = (torch.eye(c, dtype=logits.dtype, device=logits.device) - logits.softmax(-1)) / x.shape[-2]
    g_w = delta.transpose(-1, -2) @ x
    return delta, g_w, (delta.sum(-2) if b is not None else None)


def class_mean_ce(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The surrogate loss itself, ``[...]`` (for tests and diagnostics)."""
    logits = x @ w.transpose(-1, -2)
    if b is not None:
        logits = logits + b[..., None, :]
    return -logits.log_softmax(-1).diagonal(dim1=-2, dim2=-1).mean(-1)


def unit_rms(x: torch.Tensor, dims: tuple[int, ...] = (-1, -2)) -> torch.Tensor:
    """``x`` scaled to unit RMS over ``dims`` (per task), so its size does not shrink as
    training converges; a zero block stays zero."""
    return x / x.square().mean(dims, keepdim=True).sqrt().clamp_min(1e-12)
