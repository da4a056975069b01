"""The digits family: scikit-learn's bundled 8x8 digits (no download, no extra package).

A task is a random subset of ``n_way`` of the ten classes in a random label order; the
generated subset is a linear head (or a small MLP) on the 64 pixel features. Class
*combinations* are split once into disjoint source and held-out sets, so a held-out task
never shares its class set with any source task. Images are split once, per class, into
a training pool and an evaluation pool: a task's evaluation split never overlaps any
task's training split.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.tasks.base import Task, TaskFamily, make_feature_spec, relabelled_splits
from lohp.tasks.registry import register_family

HEADS = ("linear", "mlp")


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def make_head(kind: str, in_features: int, n_classes: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, n_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
    raise LohpError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")


@dataclass
class DigitsOptions(Config):
    what = "digits family"

    n_way: int = setting(5, "Classes per task (2-9).")
    head: str = setting("linear", "Target model: linear (a linear head) or mlp (one hidden layer).")
    hidden: int = setting(32, "Hidden width of the mlp head.")
    heldout_fraction: float = setting(0.3, "Fraction of the class combinations held out.")
    train_fraction: float = setting(0.6, "Fraction of each class's images in the training pool.")
    split_seed: int = setting(0, "Seed of the fixed class-combination and image splits.")
    patterns: tuple[str, ...] = setting(("*",), "Parameter-name patterns of the generated subset.")

    def __post_init__(self) -> None:
        if not 2 <= self.n_way <= 9:
            raise LohpError(f"n_way must be between 2 and 9 for digits (got {self.n_way}); "
                            "10 classes leave no held-out class combination")
        if self.head not in HEADS:
            raise LohpError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        if not 0 < self.heldout_fraction < 1 or not 0 < self.train_fraction < 1:
            raise LohpError("heldout_fraction and train_fraction must lie strictly between 0 and 1")
        self.patterns = tuple(self.patterns)


class DigitsFamily(TaskFamily):
    name = "digits"
    Options = DigitsOptions
    options: DigitsOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        x, y = _digits()
        rng = np.random.default_rng(self.split_seed)
        self._x = torch.from_numpy(x)
        self._train_idx, self._eval_idx = {}, {}
        for c in range(10):
            idx = rng.permutation(np.flatnonzero(y == c))
            cut = int(round(self.train_fraction * len(idx)))
            self._train_idx[c], self._eval_idx[c] = idx[:cut], idx[cut:]
        combos = list(itertools.combinations(range(10), self.n_way))
        order = rng.permutation(len(combos))
        n_held = max(1, int(round(self.heldout_fraction * len(combos))))
        self.heldout_combos = [combos[i] for i in sorted(order[:n_held])]
        self.source_combos = [combos[i] for i in sorted(order[n_held:])]

    def model_factory(self) -> nn.Module:
        return make_head(self.head, 64, self.n_way, self.hidden)

    def feature_spec(self) -> dict[str, Any] | None:
        return make_feature_spec(64, self.hidden if self.head == "mlp" else 0, self.patterns,
                                 "sklearn.datasets.load_digits().data rows: 64 pixel values 0-16", scale=16.0)

    def sample(self, seed: int, split: str = "source") -> Task:
        self.check_split(split)
        combos = self.source_combos if split == "source" else self.heldout_combos
        # Distinct streams for source and held-out seeds.
        rng = np.random.default_rng([int(seed), 0 if split == "source" else 1, self.split_seed])
        combo = combos[rng.integers(len(combos))]
        classes = [int(c) for c in rng.permutation(combo)]  # classes[label] = digit
        x_train, y_train, x_eval, y_eval = relabelled_splits(self._x, classes, self._train_idx, self._eval_idx)
        return Task(
            family=self.name, seed=int(seed), split=split,
            x_train=x_train, y_train=y_train, x_eval=x_eval, y_eval=y_eval,
            n_classes=self.n_way, model_factory=self.model_factory, patterns=self.patterns,
            info={"classes": classes, "combo": sorted(classes)},
        )


register_family(DigitsFamily.name, DigitsFamily)
