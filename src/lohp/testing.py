"""Conformance checks a task family must pass (in the spirit of learned_optimization's
``smoketest_task_family``). Every built-in family's tests call :func:`check_family`, and a
user can call it on theirs::

    from lohp.testing import check_family
    check_family(MyFamily(path="data.csv"))            # raises AssertionError naming the problem
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import torch

from lohp.tasks import make_family
from lohp.layout import ParamLayout
from lohp.tasks.base import SPLITS, Task, TaskFamily, feature_head


def _fail(family: TaskFamily, what: str) -> None:
    raise AssertionError(f"task family {getattr(family, 'name', type(family).__name__)!r}: {what}")


def check_task(task: Task, family: TaskFamily | None = None) -> None:
    """One task: splits, shapes, finite values, a usable model and metric, a condition from
    the training split only."""
    fam = family if family is not None else task
    if task.n_classes < 2:
        _fail(fam, f"task {task.name} has {task.n_classes} class(es); a classification task needs at least 2")
    for split, x, y in (("train", task.x_train, task.y_train), ("eval", task.x_eval, task.y_eval)):
        if len(x) == 0 or len(x) != len(y):
            _fail(fam, f"task {task.name}: the {split} split has {len(x)} inputs and {len(y)} labels")
        if x.is_floating_point() and not torch.isfinite(x).all():
            _fail(fam, f"task {task.name}: the {split} inputs hold NaN or inf")
        if y.min() < 0 or y.max() >= task.n_classes:
            _fail(fam, f"task {task.name}: {split} labels fall outside 0..{task.n_classes - 1}")
    if set(task.y_train.tolist()) != set(range(task.n_classes)):
        _fail(fam, f"task {task.name}: not every class has a training example (the condition needs each class)")
    cond = task.condition()
    if cond.dim() != 2 or cond.shape[0] != task.n_classes or not torch.isfinite(cond).all():
        _fail(fam, f"task {task.name}: the condition must be a finite [n_classes, features] tensor, got "
                   f"{list(cond.shape)}")
    # The condition may only look at the training split.
    probe = replace(task, x_eval=torch.zeros_like(task.x_eval), y_eval=torch.zeros_like(task.y_eval))
    if not torch.equal(probe.condition(), cond):
        _fail(fam, f"task {task.name}: the condition changes with the evaluation split; it must use the training "
                   "split only")
    # A family that gives class means only (condition_fn without condition_features) serves
    # m = 1 policies only; the rows it does give must be as wide as its means.
    rows, labels = task.condition_rows() if task.condition_fn is None or task.condition_features else (cond, None)
    if labels is not None and (rows.dim() != 2 or len(rows) != len(labels) or rows.shape[1] != cond.shape[1]):
        _fail(fam, f"task {task.name}: condition_rows() must give features [n, {cond.shape[1]}] and n labels "
                   f"(the rows its class means come from), got {list(rows.shape)} and {list(labels.shape)}")
    layout = task.layout
    if layout.size == 0:
        _fail(fam, f"task {task.name}: the generated subset (patterns {task.patterns}) is empty")
    theta = task.init_theta(0)
    if theta.shape != (layout.size,) or not torch.isfinite(theta).all():
        _fail(fam, f"task {task.name}: init_theta gives {list(theta.shape)}, not a finite [{layout.size}] vector")
    out = task.evaluate(theta)
    metric = out.get(task.metric_name)
    if metric is None or not 0.0 <= metric <= 1.0 or not torch.isfinite(torch.tensor(out["loss"])):
        _fail(fam, f"task {task.name}: evaluate() gave {out}; it needs a finite loss and {task.metric_name} in [0, 1]")


def check_family(family: TaskFamily, name: str | None = None, n_tasks: int = 2) -> None:
    """Raise AssertionError (naming the problem) unless ``family`` behaves as lohp needs:
    deterministic sampling from (seed, split), distinct source and held-out tasks, a
    JSON-able ``config()`` that rebuilds it (through the registry when ``name`` is given),
    well-formed tasks (:func:`check_task`), and hooks of the right type."""
    if not isinstance(family, TaskFamily):
        _fail(family, f"{type(family).__name__} is not a lohp.tasks.TaskFamily subclass")
    config: Any = family.config()
    try:
        json.loads(json.dumps(config))
    except (TypeError, ValueError) as exc:
        _fail(family, f"config() is not JSON-able ({exc}); stores and policies record it")
    if not isinstance(family.optimizer_defaults, dict) or not isinstance(family.default_shard_runs, int) \
            or family.default_shard_runs < 1:
        _fail(family, "optimizer_defaults must be a dict of optimizer -> hparams and default_shard_runs an int >= 1")
    for split in SPLITS:
        for seed in range(n_tasks):
            a, b = family.sample(seed, split), family.sample(seed, split)
            check_task(a, family)
            if not (torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
                    and torch.equal(a.x_eval, b.x_eval)):
                _fail(family, f"sample({seed}, {split!r}) differs between two calls; it must be deterministic")
    src, held = family.sample(0, "source"), family.sample(0, "heldout")
    if torch.equal(src.x_train, held.x_train) and torch.equal(src.y_train, held.y_train):
        _fail(family, "the source and held-out task with seed 0 are the same task")
    if src.layout.size != held.layout.size:
        _fail(family, "source and held-out tasks have different generated subsets; one policy must serve both")
    _check_feature_spec(family, held)
    if name is not None:
        again = make_family(name, **config)
        if again.config() != config or not torch.equal(again.sample(0, "source").x_train, src.x_train):
            _fail(family, f"make_family({name!r}, **config()) does not rebuild the same family")


def _check_feature_spec(family: TaskFamily, task: Task) -> None:
    """A family that declares a feature spec (:meth:`TaskFamily.feature_spec`): JSON-able,
    its width that of the task inputs, its head the task's generated subset."""
    spec = family.feature_spec()
    if spec is None:
        return
    try:
        json.loads(json.dumps(spec))
        f = int(spec["n_features"])
        module = feature_head(spec, task.n_classes)
        layout = ParamLayout.from_module(module, tuple(spec["patterns"]))
    except (TypeError, ValueError, KeyError) as exc:
        _fail(family, f"feature_spec() is not a JSON-able make_feature_spec() description ({exc!r})")
    if task.x_train.dim() != 2 or task.x_train.shape[1] != f:
        _fail(family, f"feature_spec() says {f} features, but its tasks' inputs are {list(task.x_train.shape[1:])}")
    for key in ("shift", "scale"):
        if not isinstance(spec[key], float) and len(spec[key]) != f:
            _fail(family, f"feature_spec()'s {key} has {len(spec[key])} values for {f} features")
    if layout != task.layout:
        _fail(family, "feature_spec()'s head is not the task's model (its generated subset differs); "
                      "make_feature_spec(hidden=...) must describe model_factory()")
