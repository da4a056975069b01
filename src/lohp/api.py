"""Public entry points, one call per stage.

    from lohp import api
    store = api.prepare("runs/store", tasks=64, optimizers=("sgd", "adam", "sam"), steps=32)
    api.train("runs/store", "runs/policy", method="lo-hp", k=2)
    gen = api.load_policy("runs/policy")
    task = gen.family().sample(0, "heldout")
    weights = api.generate(gen, task)          # no task gradient
    model = api.adapt(gen, task.model(), task)                    # generated weights
    model = api.adapt(gen, task.model(), task, refine_steps=8)    # ... then 8 Adam steps
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lohp.bench.evaluate import evaluate as _evaluate
from lohp.generation import GeneratedWeights, Generator
from lohp.tasks import Task
from lohp.training import train
from lohp.trajectories import TrajectoryStore, make_config
from lohp.trajectories import prepare as _prepare


def prepare(out: str | Path, device: str = "cpu", overwrite: bool = False, executor: str = "local",
            ray_address: str | None = None, ray_workers: int | None = None, **config: Any) -> TrajectoryStore:
    """Stage I into ``out`` (resumes if interrupted); ``config`` as :func:`lohp.trajectories.make_config`.
    ``executor="ray"`` runs each shard as a Ray task (the cluster at ``ray_address`` /
    ``RAY_ADDRESS``, or a local one); the store is the same either way."""
    return _prepare(out, make_config(**config), device=device, overwrite=overwrite, executor=executor,
                    ray_address=ray_address, ray_workers=ray_workers)


def load_policy(directory: str | Path, device: str = "cpu") -> Generator:
    return Generator.load(directory, device)


def generate(generator: Generator, task: Task, **kwargs: Any) -> GeneratedWeights:
    return generator.generate(task, **kwargs)


def adapt(generator: Generator, model: nn.Module, task: Task, refine_steps: int = 0, optimizer: str = "adam",
          lr: float | None = None, **kwargs: Any) -> nn.Module:
    """Generated weights into ``model`` (in place); then ``refine_steps`` steps of ``optimizer``
    (adam, sgd, sam, ...) on the task's training split: generate-then-refine. ``lr`` defaults
    to the learning rate Stage I used for that optimizer."""
    return generator.adapt(model, task, refine_steps=refine_steps, optimizer=optimizer, lr=lr, **kwargs)


def evaluate(policy: str | Path, family: str | None = None, family_options: dict[str, Any] | None = None,
             **kwargs: Any) -> dict[str, Any]:
    """The policy against gradient and closed-form baselines on held-out tasks (``lohp evaluate``);
    ``result["rows"]`` as the benchmarks' rows. Options as :func:`lohp.bench.evaluate.evaluate`."""

    return _evaluate(policy, family, family_options, **kwargs)


__all__ = ["adapt", "evaluate", "generate", "load_policy", "prepare", "train"]
