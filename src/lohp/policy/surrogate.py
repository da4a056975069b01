"""The surrogate loss every structure's condition features come from (one implementation).

A task's condition (:mod:`lohp.condition`) is m weighted points per class: the class means
(m = 1) or a coreset. The *surrogate loss* pushes each point through the current weights
as one example labelled with its class and takes the cross-entropy, point i of class c
weighted by ``share_ci / C`` (so each class weighs 1/C; with m = 1 it is the mean over the
C class means). Its negative gradient is what a gradient
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


def weighted_ce_grad(points: torch.Tensor, share: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Negative gradient of ``sum_c sum_i share_ci / C * CE(x_ci w^T + b, label c)``.

    ``points [..., C, m, F]``, ``share [..., C, m]``, ``w [..., C, F]``, ``b [..., C]`` or
    None. Returns ``(x [..., C*m, F], delta [..., C*m, C], g_w, g_b)``: the points as one
    batch of examples (class-major), minus the gradient with respect to their logits, and
    the gradients' negatives for ``w`` and ``b``. With m = 1 and share 1 every operation
    matches :func:`class_mean_ce_grad` (a share of 1 multiplies exactly).
    """
    c, m = points.shape[-3], points.shape[-2]
    x = points.reshape(*points.shape[:-3], c * m, points.shape[-1])
    logits = x @ w.transpose(-1, -2)
    if b is not None:
        logits = logits + b[..., None, :]
    onehot = torch.eye(c, dtype=logits.dtype, device=logits.device).repeat_interleave(m, 0)   # [C*m, C]
    delta = ((onehot - logits.softmax(-1)) * share.reshape(*share.shape[:-2], c * m)[..., None]) / c
    g_w = delta.transpose(-1, -2) @ x
    return x, delta, g_w, (delta.sum(-2) if b is not None else None)


def weighted_ce(points: torch.Tensor, share: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
                ) -> torch.Tensor:
    """The weighted surrogate loss itself, ``[...]`` (for tests, diagnostics and adam-cond)."""
    logits = points @ w.transpose(-1, -2)[..., None, :, :]
    if b is not None:
        logits = logits + b[..., None, None, :]
    c = w.shape[-2]
    own = logits.log_softmax(-1).diagonal(dim1=-3, dim2=-1).transpose(-1, -2)   # [..., C, m]
    return -(own * share).sum((-1, -2)) / c


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
