"""Functional SGD and Adam/AdamW as ``init``/``update`` transformations (optax style).

Parameters are flat tensors ``[d]`` or a batch of runs ``[R, d]``. Hyper-parameters are
floats or per-run tensors ``[R]``, so one call updates R independent runs with their own
learning rates. State is a dict of tensors (safetensors-friendly). The maths follows
``torch.optim.SGD`` / ``torch.optim.Adam`` / ``torch.optim.AdamW`` exactly (tested).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Union

import torch

State = dict[str, torch.Tensor]
Hyper = Union[float, torch.Tensor]


class GradientTransformation(NamedTuple):
    init: Callable[[torch.Tensor], State]
    update: Callable[[torch.Tensor, State, torch.Tensor], tuple[torch.Tensor, State]]


def per_run(h: Hyper, params: torch.Tensor) -> Hyper:
    """Broadcast a per-run hyper-parameter [R] against params [R, d]."""
    if isinstance(h, torch.Tensor) and h.dim() == 1 and params.dim() > 1:
        return h.to(params.dtype).reshape(-1, *([1] * (params.dim() - 1)))
    return h


def sgd(lr: Hyper, momentum: Hyper = 0.0, dampening: Hyper = 0.0, weight_decay: Hyper = 0.0,
        nesterov: bool = False) -> GradientTransformation:
    use_momentum = not (isinstance(momentum, float | int) and momentum == 0)

    def init(params: torch.Tensor) -> State:
        state = {"step": torch.zeros((), dtype=torch.long)}
        if use_momentum:
            state["momentum_buffer"] = torch.zeros_like(params)
        return state

    def update(grads: torch.Tensor, state: State, params: torch.Tensor) -> tuple[torch.Tensor, State]:
        g = grads
        if not (isinstance(weight_decay, float | int) and weight_decay == 0):
            g = g + per_run(weight_decay, params) * params
        new = {"step": state["step"] + 1}
        if use_momentum:
            mom, damp = per_run(momentum, params), per_run(dampening, params)
            # torch.optim.SGD starts the buffer at the first gradient itself.
            buf = torch.where(state["step"] == 0, g, mom * state["momentum_buffer"] + (1 - damp) * g)
            new["momentum_buffer"] = buf
            g = g + mom * buf if nesterov else buf
        return -per_run(lr, params) * g, new

    return GradientTransformation(init, update)


def adam(lr: Hyper, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
         weight_decay: Hyper = 0.0, decoupled: bool = False) -> GradientTransformation:
    """Adam (L2 weight decay in the gradient) or, with ``decoupled=True``, AdamW."""
    has_wd = not (isinstance(weight_decay, float | int) and weight_decay == 0)

    def init(params: torch.Tensor) -> State:
        return {"step": torch.zeros((), dtype=torch.long), "exp_avg": torch.zeros_like(params),
                "exp_avg_sq": torch.zeros_like(params)}

    def update(grads: torch.Tensor, state: State, params: torch.Tensor) -> tuple[torch.Tensor, State]:
        lr_ = per_run(lr, params)
        g = grads
        if has_wd and not decoupled:
            g = g + per_run(weight_decay, params) * params
        step = state["step"] + 1
        t = step.to(torch.float64)  # bias corrections in double, as torch.optim.Adam (1 - 0.999 in float32 is off by 1e-5)
        m = torch.lerp(state["exp_avg"], g, 1 - beta1)  # as torch.optim.Adam does
        v = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
        bc1 = 1 - beta1 ** t
        bc2_sqrt = (1 - beta2 ** t).sqrt()
        upd = -(lr_ / bc1) * m / (v.sqrt() / bc2_sqrt + eps)
        if has_wd and decoupled:
            upd = upd - lr_ * per_run(weight_decay, params) * params
        return upd, {"step": step, "exp_avg": m, "exp_avg_sq": v}

    return GradientTransformation(init, update)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale each run's gradient so its norm is at most ``max_norm``."""

    def init(params: torch.Tensor) -> State:
        return {}

    def update(grads: torch.Tensor, state: State, params: torch.Tensor) -> tuple[torch.Tensor, State]:
        norm = grads.norm(dim=-1, keepdim=True)
        return grads * (max_norm / norm.clamp_min(max_norm)), state

    return GradientTransformation(init, update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in order, each seeing the previous one's output."""

    def init(params: torch.Tensor) -> State:
        return {f"{i}.{k}": v for i, t in enumerate(transforms) for k, v in t.init(params).items()}

    def update(grads: torch.Tensor, state: State, params: torch.Tensor) -> tuple[torch.Tensor, State]:
        new: State = {}
        for i, t in enumerate(transforms):
            prefix = f"{i}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            grads, sub = t.update(grads, sub, params)
            new.update({prefix + k: v for k, v in sub.items()})
        return grads, new

    return GradientTransformation(init, update)
