"""Train R runs of one optimizer at once, vectorised, and evaluate their checkpoints.

The R runs (tasks x seeds) share one model architecture. Their weight vectors are one
tensor ``[R, d]``; the forward pass is ``vmap(functional_call)`` over runs (each run on
its own minibatch), and since the runs are independent, one ``autograd.grad`` of the
summed loss gives every run's own gradient. A step therefore costs one batched pass
instead of R Python loops. Metrics of the recorded checkpoints are computed afterwards
in batched passes, outside the training loop (:func:`evaluate_checkpoints`).

The engine of Stage I (:mod:`lohp.trajectories.collect`), of generation's refinement, of
the L2O meta-trainer's meta-test and of the benchmarks' gradient baselines.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from lohp.errors import LohpError
from lohp.optim.optimizer import Optimizer
from lohp.tasks import Task, TaskBatch


def vmappable(model: torch.nn.Module) -> bool:
    """False for targets whose forward pass cannot run under vmap (a model sets
    ``lohp_vmap = False``, e.g. a transformer that trims padding per batch)."""
    return bool(getattr(model, "lohp_vmap", True))


def batched_runs(layout, model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(thetas [R, d], xs [R, n, ...]) -> [R, n, ...]``: vmapped, or a loop over runs for
    targets that cannot be vmapped (same results; one run's forward pass at a time)."""
    if vmappable(model):
        return layout.batched(model)
    single = layout.functional(model)

    def f(thetas: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        return torch.stack([single(thetas[r], xs[r]) for r in range(len(thetas))])

    return f


def recorded_steps(steps: int, record_every: int) -> list[int]:
    """0, s, 2s, ... and always the final step T."""
    if steps <= 0:
        raise LohpError(f"steps must be > 0 (got {steps})")
    if record_every <= 0:
        raise LohpError(f"record_every must be > 0 (got {record_every})")
    rec = list(range(0, steps + 1, record_every))
    if rec[-1] != steps:
        rec.append(steps)
    return rec


def train_runs(tasks: Sequence[Task], optimizer: Optimizer, theta0: torch.Tensor, steps: int,
               batch_size: int = 32, record_every: int = 1, seed: int = 0,
               device: str | torch.device = "cpu",
               on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Train ``len(tasks)`` runs from ``theta0 [R, d]``; returns (thetas, steps, seconds)."""
    if len(tasks) != len(theta0):
        raise ValueError("one theta_0 per task is needed")
    if batch_size <= 0:
        raise LohpError(f"batch size must be > 0 (got {batch_size})")
    rec = recorded_steps(steps, record_every)
    device = torch.device(device)
    batch = TaskBatch.stack(tasks)
    x_train, y_train = batch.x_train.to(device), batch.y_train.to(device)
    n_train = batch.n_train.to(device)
    model = tasks[0].model().to(device)
    layout = tasks[0].layout
    f = batched_runs(layout, model)
    loss_fn = tasks[0].loss_fn
    gen = torch.Generator(device=device).manual_seed(int(seed))
    rows = torch.arange(len(tasks), device=device)[:, None]

    params = theta0.to(device=device, dtype=layout.dtype).clone()
    state = optimizer.init(params)
    out = torch.empty(len(tasks), len(rec), layout.size, dtype=layout.dtype, device=device)
    out[:, 0] = params
    k = 1
    start = time.perf_counter()
    for t in range(1, steps + 1):
        # A fresh minibatch per run and step, fixed across SAM's two gradient passes.
        idx = (torch.rand(len(tasks), batch_size, generator=gen, device=device) * n_train[:, None]).long()
        xb, yb = x_train[rows, idx], y_train[rows, idx]

        def loss_and_grad(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad():  # callers may sit in a no_grad block
                p = p.detach().requires_grad_(True)
                loss = loss_fn(f(p, xb), yb).mean(-1)
                (g,) = torch.autograd.grad(loss.sum(), p)
            return loss.detach(), g

        params, state, _ = optimizer.step(params, state, loss_and_grad)
        if k < len(rec) and t == rec[k]:
            out[:, k] = params
            k += 1
        if on_step is not None:
            on_step(t)
    seconds = time.perf_counter() - start
    return out, torch.tensor(rec), seconds


@torch.no_grad()
def evaluate_checkpoints(tasks: Sequence[Task], thetas: torch.Tensor, device: str | torch.device = "cpu",
                         chunk: int = 64, splits: Sequence[str] = ("train", "eval")) -> dict[str, torch.Tensor]:
    """Full-split train loss, eval loss and eval metric of ``thetas [R, n, d]`` -> [R, n]
    (``splits=("eval",)``: the evaluation split only)."""
    device = torch.device(device)
    batch = TaskBatch.stack(tasks)
    model = tasks[0].model().to(device)
    # vmap over runs (own data), then over a run's checkpoints (shared data).
    if vmappable(model):
        inner = torch.vmap(tasks[0].layout.functional(model), in_dims=(0, None))
        f = torch.vmap(inner, in_dims=(0, 0))
    else:
        single = tasks[0].layout.functional(model)

        def f(th: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.stack([single(t, x[r]) for t in th[r]]) for r in range(len(th))])
    loss_fn, metric_fn = tasks[0].loss_fn, tasks[0].metric_fn
    result = {f"{sp}_loss": [] for sp in splits}
    if "eval" in splits:
        result["eval_metric"] = []
    for lo in range(0, thetas.shape[1], chunk):
        th = thetas[:, lo:lo + chunk].to(device)
        for split, x, y, n in [(sp, x, y, n) for sp, x, y, n in (("train", batch.x_train, batch.y_train, batch.n_train),
                                                                ("eval", batch.x_eval, batch.y_eval, batch.n_eval))
                               if sp in splits]:
            x, y = x.to(device), y.to(device)
            mask = (torch.arange(x.shape[1], device=device)[None, :] < n.to(device)[:, None]).to(th.dtype)
            logits = f(th, x)  # [R, c, n, C]
            yy = y[:, None].expand(*logits.shape[:-1])
            denom = mask.sum(-1, keepdim=True)
            loss = (loss_fn(logits, yy) * mask[:, None]).sum(-1) / denom
            result[f"{split}_loss"].append(loss.cpu())
            if split == "eval":
                result["eval_metric"].append(((metric_fn(logits, yy) * mask[:, None]).sum(-1) / denom).cpu())
    return {k: torch.cat(v, dim=1) for k, v in result.items()}


__all__ = ["batched_runs", "evaluate_checkpoints", "recorded_steps", "train_runs", "vmappable"]


# --------------------------------------------------------------------------- the reference loop
def torch_optimizer(name: str, hp: dict[str, Any], params) -> torch.optim.Optimizer:
    """The torch.optim optimizer a user would write for one of lohp's Stage I optimizers."""
    if name in ("sgd", "sam"):
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
               weight_decay=hp["weight_decay"])


def per_run_loop(task, opt_name: str, hp: dict[str, Any], theta0: torch.Tensor, steps: int,
                 batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """The reference way: one model, one torch.optim optimizer, one Python loop per run."""
    model = task.model()
    task.layout.load_into(model, theta0)
    params = [p for n, p in model.named_parameters() if n in task.layout.names]
    opt = torch_optimizer(opt_name, hp, params)
    rho = hp.get("rho")
    n = len(task.x_train)
    out = [task.layout.flatten(model)]
    for _ in range(steps):
        idx = (torch.rand(batch_size, generator=gen) * n).long()
        xb, yb = task.x_train[idx], task.y_train[idx]
        opt.zero_grad()
        loss = task.loss_fn(model(xb), yb).mean()
        loss.backward()
        if rho is not None:  # SAM: ascend to the sharpest nearby point, take its gradient
            with torch.no_grad():
                norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
                eps = [rho * p.grad / (norm + 1e-12) for p in params]
                for p, e in zip(params, eps):
                    p.add_(e)
            opt.zero_grad()
            task.loss_fn(model(xb), yb).mean().backward()
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.sub_(e)
        opt.step()
        out.append(task.layout.flatten(model))
    return torch.stack(out)
