"""The rules a skeptic tries before a weight generator, each with its latency.

Every baseline is fitted on a held-out task's training split alone; anything it tunes
(the probe's regularisation, Adam's learning rate) is chosen on *source* tasks, never on
held-out ones. Rows by name (tables and JSON):

- ``prototype``: nearest class mean on the task's own inputs; ``prototype-l2``: the same
  after scaling every example to unit L2 norm (the usual prototype classifier);
- ``lda``: linear discriminant analysis with Ledoit-Wolf shrinkage (scikit-learn, lsqr);
- ``linear-probe``: logistic regression on standardised inputs, its C chosen on source tasks;
- ``adam-cond``: the target model trained with Adam for T full-batch steps on the policy's
  *condition* alone (its weighted points, :mod:`lohp.condition`), from the same s_0 as the
  generators: the information bound of any policy that imitates Adam from that condition;
  ``adam-means`` is the same on the class means (m = 1).

A baseline is registered as a *factory*: ``factory(ctx) -> fn(task) -> (accuracy, ms)``,
where :class:`BaselineContext` carries what it may be tuned with. Add one with
:func:`register_baseline`.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lohp.bench.rows import Row
from lohp.condition import class_means, class_rows
from lohp.condition import default_points as default_condition_points
from lohp.condition import split as split_condition
from lohp.errors import LohpError
from lohp.tasks import Task

Fit = Callable[[Task], tuple[float, float]]

# The rows every scenario table shows beside the generators (the closed forms a skeptic
# tries first, and the information bound of the condition).
SKEPTIC = ("prototype", "prototype-l2", "lda", "linear-probe", "adam-cond")


@dataclass
class BaselineContext:
    """What a baseline may use besides the held-out task itself."""

    family: Any = None                                  # for tuning on source tasks
    adam: dict[str, Any] | None = None                  # Adam's settings (lr tuned on source tasks)
    steps: int = 32                                     # T
    condition_points: int | None = None                 # the policy's m (None: the default rule)
    s0: dict[str, torch.Tensor] = field(default_factory=dict)   # task name -> starting weights
    tuning: dict[str, Any] = field(default_factory=dict)        # what was tuned, for the result JSON


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1)


def _check_features(task: Task, name: str) -> None:
    """A baseline on the task's inputs needs inputs that are features (not, e.g., token ids
    of a text task whose condition comes from frozen embeddings)."""
    if not task.x_train.is_floating_point():
        raise LohpError(f"the {name} baseline fits the task's inputs, and {task.family} tasks' inputs are not "
                        "its features (their condition comes from frozen embeddings); lohp bench lora shows "
                        "the text baselines")


def prototype_accuracy(task: Task, normalize: bool = False) -> tuple[float, float]:
    """Nearest class mean (Euclidean) on the task's own features; with ``normalize`` every
    example is first scaled to unit L2 norm; (accuracy, ms)."""

    _check_features(task, "prototype")

    def prep(x: torch.Tensor) -> torch.Tensor:
        x = _flat(x)
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) if normalize else x

    means, ms = _timed(lambda: class_means(prep(task.x_train), task.y_train, task.n_classes))
    pred = torch.cdist(prep(task.x_eval), means).argmin(-1)
    return float((pred == task.y_eval).float().mean()), ms


def prototype_l2_accuracy(task: Task) -> tuple[float, float]:
    return prototype_accuracy(task, normalize=True)


def lda_accuracy(task: Task) -> tuple[float, float]:
    """Shrinkage LDA (Ledoit-Wolf, lsqr solver); (accuracy, ms of the fit)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    _check_features(task, "lda")
    x, y = _flat(task.x_train).double().numpy(), task.y_train.numpy()
    if len(y) <= task.n_classes:
        # one example per class: no within-class scatter, so shrinkage LDA is full shrinkage
        # to a spherical covariance, i.e. the nearest class mean (scikit-learn refuses the fit)
        return prototype_accuracy(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. collinear features: the shrinkage handles them
        clf, ms = _timed(lambda: LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y))
        return float(clf.score(_flat(task.x_eval).double().numpy(), task.y_eval.numpy())), ms


def probe_accuracy(task: Task, c: float = 1.0, max_iter: int = 1000) -> tuple[float, float]:
    """Logistic regression on standardised features with inverse regularisation ``c``; (accuracy, ms)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check_features(task, "linear-probe")
    x = _flat(task.x_train).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf, ms = _timed(lambda: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter)).fit(
            x, task.y_train.numpy()))
    return float(clf.score(_flat(task.x_eval).numpy(), task.y_eval.numpy())), ms


PROBE_CS = (0.01, 0.1, 1.0, 10.0)


def tune_probe(family: Any, cs: Sequence[float] = PROBE_CS, n_tasks: int = 8) -> tuple[float, dict[float, float]]:
    """The probe's C with the best mean evaluation accuracy on source tasks Stage I does not use."""
    tasks = family.source_tasks(n_tasks, start=100_000)
    scores = {c: float(np.mean([probe_accuracy(t, c)[0] for t in tasks])) for c in cs}
    return max(scores, key=lambda c: (scores[c], -abs(np.log10(c)))), scores


def default_points(task: Task, requested: int | None) -> int:
    """The condition's m for a task: the requested one, or the default capped at its smallest class."""
    if requested is not None:
        return requested
    return default_condition_points(min(class_rows(task.condition_rows()[1], task.n_classes)))


def condition_training(task: Task, theta0: torch.Tensor, adam: dict[str, Any], steps: int, points: int
                       ) -> torch.Tensor:
    """Adam (torch.optim, full batch) for ``steps`` steps on the task's condition alone: each
    point an example of its class, weighted by share / C (the surrogate loss)."""
    _check_features(task, "adam-cond")
    x_rows, _ = task.condition_rows()
    pts, share = split_condition(task.condition(points), task.n_classes, x_rows.shape[1])
    c, m = share.shape
    x = pts.reshape(c * m, *task.x_train.shape[1:]).to(task.x_train.dtype)
    y = torch.arange(c).repeat_interleave(m)
    w = share.reshape(-1) / c
    fn = task.layout.functional(task.model())
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=adam["lr"], betas=(adam.get("beta1", 0.9), adam.get("beta2", 0.999)),
                           eps=adam.get("eps", 1e-8))
    for _ in range(steps):
        opt.zero_grad()
        (task.loss_fn(fn(theta, x), y) * w).sum().backward()
        opt.step()
    return theta.detach()


def _adam_cond(ctx: BaselineContext, points: int | None) -> Fit:
    if ctx.adam is None:
        raise LohpError("the adam-cond baseline needs Adam's settings (a store with an adam run)")

    def fit(task: Task) -> tuple[float, float]:
        theta0 = ctx.s0[task.name] if task.name in ctx.s0 else task.init_theta(0)
        m = default_points(task, points)
        theta, ms = _timed(lambda: condition_training(task, theta0, ctx.adam, ctx.steps, m))
        return task.evaluate(theta)[task.metric_name], ms
    return fit


def _probe(ctx: BaselineContext) -> Fit:
    c = 1.0
    if ctx.family is not None:
        c, scores = tune_probe(ctx.family)
        ctx.tuning["linear-probe"] = {"C": c, "source_accuracy_by_C": scores}
    return lambda task: probe_accuracy(task, c)


_BASELINES: dict[str, Callable[[BaselineContext], Fit]] = {}


def register_baseline(name: str, factory: Callable[[BaselineContext], Fit], overwrite: bool = False) -> None:
    """A baseline row by name: ``factory(ctx) -> fn(task) -> (accuracy, ms)``."""
    if name in _BASELINES and not overwrite:
        raise LohpError(f"a baseline named {name!r} is already registered; pick another name or pass overwrite=True")
    _BASELINES[name] = factory


def baseline_names() -> list[str]:
    return list(_BASELINES)


def make_baseline(name: str, ctx: BaselineContext) -> Fit:
    if name not in _BASELINES:
        raise LohpError(f"unknown baseline {name!r}; choose from {', '.join(_BASELINES)}")
    return _BASELINES[name](ctx)


register_baseline("prototype", lambda ctx: prototype_accuracy)
register_baseline("prototype-l2", lambda ctx: prototype_l2_accuracy)
register_baseline("lda", lambda ctx: lda_accuracy)
register_baseline("linear-probe", _probe)
register_baseline("adam-cond", lambda ctx: _adam_cond(ctx, ctx.condition_points))
register_baseline("adam-means", lambda ctx: _adam_cond(ctx, 1))


def closed_form_row(name: str, tasks: Sequence[Task], fn: Fit) -> Row:
    """The row of a deterministic rule: its mean accuracy over ``tasks`` (one seed: no
    spread) and the median ms of a fit."""
    res = [fn(t) for t in tasks]
    acc = [a for a, _ in res]
    return Row.over_seeds(name, [float(np.mean(acc))], latency_ms=statistics.median(ms for _, ms in res),
                          per_task=acc)


def baseline_rows(names: Sequence[str], tasks: Sequence[Task], ctx: BaselineContext,
                  note: Callable[[str], None] | None = None) -> list[Row]:
    """One row per baseline name on ``tasks``."""
    rows = []
    for name in names:
        if note:
            note(f"baseline {name}")
        try:
            rows.append(closed_form_row(name, tasks, make_baseline(name, ctx)))
        except LohpError as exc:  # a rule that does not apply to these tasks is left out, saying why
            if note:
                note(f"baseline {name} left out: {exc}")
    return rows
