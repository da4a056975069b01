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
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from lohp.errors import LohpError
from lohp.tasks.base import Task, TaskFamily, relabelled_splits

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


class DigitsFamily(TaskFamily):
    name = "digits"

    def __init__(self, n_way: int = 5, head: str = "linear", hidden: int = 32,
                 heldout_fraction: float = 0.3, train_fraction: float = 0.6,
                 split_seed: int = 0, patterns: tuple[str, ...] | list[str] = ("*",)):
        if not 2 <= n_way <= 9:
            raise LohpError(f"n_way must be between 2 and 9 for digits (got {n_way}); "
                            "10 classes leave no held-out class combination")
        if head not in HEADS:
            raise LohpError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        if not 0 < heldout_fraction < 1 or not 0 < train_fraction < 1:
            raise LohpError("heldout_fraction and train_fraction must lie strictly between 0 and 1")
        self.n_way, self.head, self.hidden = n_way, head, hidden
        self.heldout_fraction, self.train_fraction = heldout_fraction, train_fraction
        self.split_seed, self.patterns = split_seed, tuple(patterns)

        x, y = _digits()
        rng = np.random.default_rng(split_seed)
        self._x = torch.from_numpy(x)
        self._train_idx, self._eval_idx = {}, {}
        for c in range(10):
            idx = rng.permutation(np.flatnonzero(y == c))
            cut = int(round(train_fraction * len(idx)))
            self._train_idx[c], self._eval_idx[c] = idx[:cut], idx[cut:]
        combos = list(itertools.combinations(range(10), n_way))
        order = rng.permutation(len(combos))
        n_held = max(1, int(round(heldout_fraction * len(combos))))
        self.heldout_combos = [combos[i] for i in sorted(order[:n_held])]
        self.source_combos = [combos[i] for i in sorted(order[n_held:])]

    def config(self) -> dict[str, Any]:
        return {"n_way": self.n_way, "head": self.head, "hidden": self.hidden,
                "heldout_fraction": self.heldout_fraction, "train_fraction": self.train_fraction,
                "split_seed": self.split_seed, "patterns": list(self.patterns)}

    def model_factory(self) -> nn.Module:
        return make_head(self.head, 64, self.n_way, self.hidden)

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
