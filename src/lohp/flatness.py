"""Flatness of a loss landscape: Hessian trace, top Hessian eigenvalue, local entropy.

Everything here works on a *loss function of flat weight vectors* ``loss_fn(theta)``:

- ``theta [d]`` -> a scalar, or
- ``theta [R, d]`` (a batch of independent runs) -> ``[R]``, one loss per run, where run
  ``r``'s loss depends on row ``r`` only (what :func:`task_loss_fn` builds, and what
  ``ParamLayout.batched`` gives). Gradients of ``loss_fn(theta).sum()`` are then every
  run's own gradient, and every measure below is returned per run.

Hessian-vector products are forward-over-reverse with ``torch.func``
(``jvp(grad(f), theta, v)``); they compose with ordinary autograd, so a measure of weights
that are themselves the output of a graph (a learned optimizer's unroll) can be used as a
differentiable regularizer. Gradients of a graph with respect to ``nn.Module`` parameters
(a learned optimizer's own weights) use :func:`hutchinson_trace_graph` (reverse-over-
reverse autograd) instead.

Definitions
-----------
*Hessian trace* ``tr H(theta)``, estimated by Hutchinson: ``E_v[v^T H v]`` with Rademacher
``v`` (entries +-1 with probability 1/2), averaged over ``probes`` draws; unbiased, its
variance is ``2 (||H||_F^2 - sum_i H_ii^2) / probes``.

*Top eigenvalue*: the largest (algebraic) eigenvalue of ``H(theta)`` by power iteration.

*Local entropy* (Entropy-SGD, Chaudhari et al. 2017), with scope ``gamma`` and
temperature ``T`` (``T = 1`` is the textbook form)::

    F(x; gamma, T) = log  integral exp( -(f(x') + gamma/2 ||x - x'||^2) / T ) dx'

It is large where ``f`` is low over a wide neighbourhood of scale ``sqrt(T/gamma)``. Its
gradient is ``grad_x F = -(gamma/T) (x - mu(x))`` with ``mu(x)`` the mean of the local
Gibbs measure ``p(x'|x) ∝ exp(-(f(x') + gamma/2 ||x - x'||^2) / T)``. Estimators:

- ``mu`` (and hence the gradient): an unadjusted Langevin chain started at ``x``,
  ``x' <- x' - lr * grad U(x') + sqrt(2 lr T) * N(0, I)`` with
  ``U = f(x') + gamma/2 ||x - x'||^2``, averaged over the second half of its ``steps``
  iterates (:func:`local_entropy_mean`);
- the value ``F`` itself: Monte Carlo with the proposal ``N(x, T/gamma I)``,
  ``F = d/2 log(2 pi T/gamma) + log E[exp(-f(x')/T)]`` (:func:`local_entropy`; exact in
  expectation inside the log, reliable in low dimension; a diagnostic and a test oracle);
- the *regularizer* (:func:`local_entropy_loss`): ``gamma/2 ||x - stopgrad(mu)||^2``,
  whose gradient in ``x`` is exactly ``-T grad_x F``: minimizing it maximizes local
  entropy, and it back-propagates through ``x`` (e.g. into a learned optimizer) as
  Entropy-SGD's update direction does. ``-T F`` is a smoothed loss: as
  ``gamma -> inf`` it tends to ``f(x) + T/(2 gamma) tr H(x) + const``, which is why local
  entropy and Hessian trace measure the same flatness.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch.func import grad, hessian, jvp, vmap

from lohp.errors import LohpError
from lohp.tasks import Task, TaskBatch

LossFn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["LossFn", "exact_hessian", "exact_trace", "flatness_metrics", "hutchinson_trace",
           "hutchinson_trace_graph", "hvp", "local_entropy", "local_entropy_grad",
           "local_entropy_loss", "local_entropy_mean", "quadratic_local_entropy", "rademacher",
           "task_loss_fn", "top_eigenvalue"]


# --------------------------------------------------------------------------- helpers
def _summed(loss_fn: LossFn) -> LossFn:
    return lambda t: loss_fn(t).sum()


def _check_positive(name: str, value: float, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise LohpError(f"{name} must be a whole number (got {value!r})")
    if not value > 0 or (not integer and not math.isfinite(value)):
        raise LohpError(f"{name} must be > 0 (got {value})")


def rademacher(shape: Sequence[int] | torch.Size, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Entries +1 or -1 with probability 1/2 each."""
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=device)
    return bits.to(dtype) * 2 - 1


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-run inner product over the last dimension."""
    return (a * b).sum(-1)


# --------------------------------------------------------------------------- Hessian
def hvp(loss_fn: LossFn, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``H(theta) v`` per run, forward-over-reverse (``torch.func.jvp`` of ``grad``)."""
    return jvp(grad(_summed(loss_fn)), (theta,), (v,))[1]


def _hvp_many(loss_fn: LossFn, theta: torch.Tensor, vs: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``H v`` for a stack of probes ``vs [m, *theta.shape]`` (vmapped over probes)."""
    g = grad(_summed(loss_fn))
    return vmap(lambda v: jvp(g, (theta,), (v,))[1], chunk_size=chunk)(vs)


def hutchinson_trace(loss_fn: LossFn, theta: torch.Tensor, probes: int = 16,
                     generator: torch.Generator | None = None, chunk: int | None = None,
                     return_stderr: bool = False):
    """Hutchinson estimate of ``tr H(theta)`` per run (``[]`` for ``[d]``, ``[R]`` for ``[R, d]``).

    ``probes`` Rademacher vectors are evaluated in one vmapped pass (``chunk`` bounds
    how many at a time). Differentiable with respect to whatever ``theta`` depends on.
    With ``return_stderr=True`` also returns the standard error of the estimate.
    """
    _check_positive("probes", probes, integer=True)
    vs = rademacher((probes, *theta.shape), generator, theta.dtype, theta.device)
    quad = _dot(vs, _hvp_many(loss_fn, theta, vs, chunk))  # [m, ...]
    est = quad.mean(0)
    if not return_stderr:
        return est
    se = quad.detach().std(0) / math.sqrt(probes) if probes > 1 else torch.full_like(est.detach(), float("inf"))
    return est, se


def hutchinson_trace_graph(loss: torch.Tensor, params: Sequence[torch.Tensor], probes: int = 1,
                           generator: torch.Generator | None = None, create_graph: bool = True) -> torch.Tensor:
    """Hutchinson ``tr`` of the Hessian of a scalar ``loss`` graph w.r.t. ``params``.

    Reverse-over-reverse autograd: for any graph (e.g. a learned optimizer's unrolled
    meta-loss as a function of its own ``nn.Module`` weights). With ``create_graph`` the
    estimate can itself be back-propagated (a meta-objective flatness regularizer).
    """
    _check_positive("probes", probes, integer=True)
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    total = loss.new_zeros(())
    for i in range(probes):
        vs = [rademacher(p.shape, generator, p.dtype, p.device) for p in params]
        inner = sum((g * v).sum() for g, v in zip(grads, vs))
        hvs = torch.autograd.grad(inner, params, create_graph=create_graph,
                                  retain_graph=create_graph or i < probes - 1)
        total = total + sum((h * v).sum() for h, v in zip(hvs, vs))
    return total / probes


def exact_hessian(loss_fn: LossFn, theta: torch.Tensor) -> torch.Tensor:
    """The full Hessian, ``[d, d]`` (or ``[R, d, d]`` per run); for small problems and tests."""
    if theta.dim() == 1:
        return hessian(loss_fn)(theta)
    h = hessian(_summed(loss_fn))(theta)  # [R, d, R, d]; runs are independent
    r = torch.arange(theta.shape[0])
    return h[r, :, r, :]


def exact_trace(loss_fn: LossFn, theta: torch.Tensor) -> torch.Tensor:
    return exact_hessian(loss_fn, theta).diagonal(dim1=-2, dim2=-1).sum(-1)


@torch.no_grad()
def _power(loss_fn: LossFn, theta: torch.Tensor, shift: torch.Tensor | None, iters: int, tol: float,
           generator: torch.Generator | None) -> torch.Tensor:
    """Dominant eigenvalue of ``H - shift I`` (per run) by power iteration."""
    v = torch.randn(theta.shape, generator=generator, dtype=theta.dtype, device=theta.device)
    v = v / v.norm(dim=-1, keepdim=True)
    lam = torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
    for _ in range(iters):
        with torch.enable_grad():
            hv = hvp(loss_fn, theta, v)
        if shift is not None:
            hv = hv - shift[..., None] * v
        new = _dot(v, hv)  # Rayleigh quotient
        norm = hv.norm(dim=-1, keepdim=True)
        v = torch.where(norm > 0, hv / norm.clamp_min(1e-30), v)
        done = ((new - lam).abs() <= tol * new.abs().clamp_min(1e-12)).all()
        lam = new
        if done:
            break
    return lam


def top_eigenvalue(loss_fn: LossFn, theta: torch.Tensor, iters: int = 100, tol: float = 1e-5,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Largest (algebraic) eigenvalue of ``H(theta)`` per run, by power iteration.

    Power iteration finds the eigenvalue of largest magnitude ``l``; where that is
    negative (a saddle), a second run on ``H - l I`` (whose dominant eigenvalue is
    ``l_max - l >= 0``) recovers the largest one. Not differentiable (a metric).
    """
    _check_positive("iters", iters, integer=True)
    theta = theta.detach()
    lam = _power(loss_fn, theta, None, iters, tol, generator)
    if (lam < 0).any():
        shifted = _power(loss_fn, theta, lam, iters, tol, generator) + lam
        lam = torch.where(lam < 0, shifted, lam)
    return lam


# --------------------------------------------------------------------------- local entropy
def _entropy_args(gamma: float, temperature: float) -> None:
    _check_positive("gamma (local-entropy scope)", gamma)
    _check_positive("temperature", temperature)


def local_entropy_mean(loss_fn: LossFn | None, theta: torch.Tensor, gamma: float, temperature: float = 1.0,
                       steps: int = 20, lr: float = 0.05, generator: torch.Generator | None = None,
                       grad_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Langevin estimate of the local Gibbs mean ``mu(theta)`` (detached), per run.

    Unadjusted Langevin on ``U(x') = f(x') + gamma/2 ||theta - x'||^2`` at temperature
    ``T``, started at ``theta``; the estimate is the average of the last ``ceil(steps/2)``
    iterates (the first half is burn-in). ``lr`` must be below ``2 / (L + gamma)`` with
    ``L`` the largest curvature of ``f`` for the chain to be stable. ``grad_fn`` (the
    gradient of ``f`` at a point, any autograd graph) replaces ``torch.func.grad(loss_fn)``
    when ``f`` is not a pure function of ``theta`` (e.g. a learned optimizer's meta-loss).
    """
    _entropy_args(gamma, temperature)
    _check_positive("steps", steps, integer=True)
    _check_positive("lr", lr)
    center = theta.detach()
    x = center.clone()
    noise = math.sqrt(2 * lr * temperature)
    g = grad_fn if grad_fn is not None else grad(_summed(loss_fn))
    keep = (steps + 1) // 2
    acc = torch.zeros_like(center)
    for i in range(steps):
        x = x - lr * (g(x).detach() + gamma * (x - center))
        x = x + noise * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if i >= steps - keep:
            acc = acc + x
    mu = acc / keep
    if not torch.isfinite(mu).all():
        raise LohpError(f"the local-entropy Langevin chain diverged; lower its lr ({lr}) or raise gamma ({gamma})")
    return mu


def local_entropy_grad(loss_fn: LossFn | None, theta: torch.Tensor, gamma: float, temperature: float = 1.0,
                       steps: int = 20, lr: float = 0.05, generator: torch.Generator | None = None,
                       grad_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Langevin estimate of ``grad_theta F(theta; gamma, T) = -(gamma/T) (theta - mu)``."""
    mu = local_entropy_mean(loss_fn, theta, gamma, temperature, steps, lr, generator, grad_fn)
    return -(gamma / temperature) * (theta.detach() - mu)


def local_entropy_loss(loss_fn: LossFn | None, theta: torch.Tensor, gamma: float, temperature: float = 1.0,
                       steps: int = 20, lr: float = 0.05, generator: torch.Generator | None = None,
                       grad_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The local-entropy regularizer per run: ``gamma/2 ||theta - stopgrad(mu)||^2``.

    Its gradient with respect to ``theta`` (and through ``theta`` to anything it depends
    on) is ``-T grad F``: descending it ascends the local entropy. Its *value* is not
    ``-T F``; use :func:`local_entropy` for a value.
    """
    mu = local_entropy_mean(loss_fn, theta, gamma, temperature, steps, lr, generator, grad_fn)
    return 0.5 * gamma * ((theta - mu) ** 2).sum(-1)


@torch.no_grad()
def local_entropy(loss_fn: LossFn, theta: torch.Tensor, gamma: float, temperature: float = 1.0,
                  samples: int = 4096, generator: torch.Generator | None = None,
                  chunk: int = 1024) -> torch.Tensor:
    """Monte Carlo value of ``F(theta; gamma, T)`` per run (see the module docstring).

    ``F = d/2 log(2 pi T / gamma) + log mean_s exp(-f(x_s)/T)``, ``x_s ~ N(theta, T/gamma I)``.
    The log-mean-exp is consistent (biased low by O(1/samples)); in high dimension the
    variance grows quickly, so use it for diagnostics and small problems.
    """
    _entropy_args(gamma, temperature)
    _check_positive("samples", samples, integer=True)
    theta = theta.detach()
    d = theta.shape[-1]
    scale = math.sqrt(temperature / gamma)
    vals = []
    for lo in range(0, samples, chunk):
        n = min(chunk, samples - lo)
        xs = theta + scale * torch.randn((n, *theta.shape), generator=generator, dtype=theta.dtype,
                                         device=theta.device)
        vals.append(-vmap(loss_fn)(xs) / temperature)  # [n, ...]
    logw = torch.cat(vals)
    return 0.5 * d * math.log(2 * math.pi * temperature / gamma) + torch.logsumexp(logw, 0) - math.log(samples)


def quadratic_local_entropy(a: torch.Tensor, x: torch.Tensor, gamma: float, temperature: float = 1.0,
                            b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed form ``(F, grad F)`` for ``f(x) = 1/2 x^T A x - b^T x`` (A symmetric positive definite).

    Completing the square with ``M = (A + gamma I) / T``::

        F = d/2 log(2 pi) - 1/2 logdet M + 1/2 m^T M^{-1} m - gamma/(2T) ||x||^2,
        m = (gamma x + b) / T,   grad F = -(gamma/T) (x - M^{-1} m)

    (``M^{-1} m`` is the Gibbs mean). With ``b = 0`` this is
    ``F = d/2 log(2 pi T) - 1/2 logdet(A + gamma I) - gamma/(2T) x^T A (A + gamma I)^{-1} x``.
    """
    d = x.shape[-1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    m_mat = (a + gamma * eye) / temperature
    bb = torch.zeros_like(x) if b is None else b
    m = (gamma * x + bb) / temperature
    mu = torch.linalg.solve(m_mat, m)
    value = (0.5 * d * math.log(2 * math.pi) - 0.5 * torch.logdet(m_mat) + 0.5 * (m * mu).sum(-1)
             - gamma / (2 * temperature) * (x * x).sum(-1))
    return value, -(gamma / temperature) * (x - mu)


# --------------------------------------------------------------------------- task losses
def task_loss_fn(tasks, split: str = "train") -> LossFn:
    """The full-split mean loss of one task (``theta [d]`` -> scalar) or of several.

    ``tasks`` is a :class:`~lohp.tasks.Task` (a loss of ``[d]`` or, broadcast, ``[R, d]``
    weights on that task) or a sequence of R tasks of one family (a loss of ``[R, d]``,
    run ``r`` on task ``r``'s data, padding masked out).
    """

    if split not in ("train", "eval"):
        raise LohpError(f"unknown split {split!r}; choose train or eval")
    if isinstance(tasks, Task):
        task = tasks
        x, y = (task.x_train, task.y_train) if split == "train" else (task.x_eval, task.y_eval)
        f1 = task.layout.functional(task.model())
        loss = task.loss_fn
        fb = vmap(f1, in_dims=(0, None))

        def single(theta: torch.Tensor) -> torch.Tensor:
            if theta.dim() == 1:
                return loss(f1(theta, x), y).mean()
            return loss(fb(theta, x), y.expand(theta.shape[0], -1)).mean(-1)

        return single
    tasks = list(tasks)
    if not tasks:
        raise LohpError("no tasks given")
    batch = TaskBatch.stack(tasks)
    x, y = (batch.x_train, batch.y_train) if split == "train" else (batch.x_eval, batch.y_eval)
    mask = batch.mask(split)
    denom = mask.sum(-1)
    f = tasks[0].layout.batched(tasks[0].model())
    loss = tasks[0].loss_fn

    def batched(theta: torch.Tensor) -> torch.Tensor:
        if theta.dim() != 2 or theta.shape[0] != len(tasks):
            raise LohpError(f"expected weights [{len(tasks)}, d] for {len(tasks)} tasks, got {list(theta.shape)}")
        return (loss(f(theta, x), y) * mask).sum(-1) / denom

    return batched


def flatness_metrics(tasks, thetas: torch.Tensor, probes: int = 32, eigen_iters: int = 50,
                     seed: int = 0, split: str = "train") -> dict[str, torch.Tensor]:
    """Hessian trace (Hutchinson) and top Hessian eigenvalue of the task loss, per run.

    ``tasks``/``thetas``: one Task and ``[d]`` or ``[R, d]`` weights, or R tasks and
    ``[R, d]`` weights. Computed on the full training split by default.
    """
    f = task_loss_fn(tasks, split)
    g = torch.Generator().manual_seed(int(seed))
    thetas = thetas.detach()
    tr = hutchinson_trace(f, thetas, probes, g).detach()
    return {"hessian_trace": tr, "top_eigenvalue": top_eigenvalue(f, thetas, eigen_iters, generator=g)}
