"""Task families on real images from packages (Openclipart, Fashion-MNIST, MNIST).

- :class:`FeatureFamily` (``openclipart``, ``fashion``): n-way classification on frozen
  EfficientNet-Lite0 features; the generated subset is the linear head. Classes are split
  once into disjoint source and held-out sets; images once, per class, into a training
  pool and an evaluation pool. ``shots`` turns a task into a few-shot episode: the
  training split is ``shots`` images per class (the support set), the evaluation split
  ``queries`` other images per class (episodes draw both from all of a class's images).
- :class:`RotatedFamily` (``rotated-mnist``, ``rotated-fashion``): DomainBed-style
  rotated domains (0, 15, ..., 75 degrees), each made of its own images; the generated
  subset is a whole one-hidden-layer MLP on the 784 pixels. Source tasks come from every
  domain but ``heldout_domain``, held-out tasks from that domain only.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lohp.data import features as feats
from lohp.data import images
from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.tasks.base import Task, TaskFamily, make_feature_spec
from lohp.tasks.registry import register_family

FEATURE_DATASETS = ("openclipart", "fashion-mnist")


# --------------------------------------------------------------------------- data (cached per process)
@lru_cache(maxsize=4)
def feature_data(dataset: str, size: int = 64, per_class: int = 60) -> tuple[torch.Tensor, np.ndarray, tuple[str, ...]]:
    """Frozen features ``[n, 1280]``, labels and class names of a dataset (disk-cached)."""

    bar = _progress()
    if dataset == "openclipart":
        x, y, names = images.openclipart(size=size, max_per_class=per_class, progress=bar)
        key = {"data": "openclipart", "size": size, "max_per_class": per_class, "n": len(y)}
    elif dataset == "fashion-mnist":
        x_all, y_all, names = images.fashion_mnist()
        idx = _per_class(y_all, per_class, seed=0)  # a fixed subset: backbone features are the cost
        x, y = x_all[idx], y_all[idx]
        key = {"data": "fashion-mnist", "per_class": per_class, "seed": 0}
    else:
        raise LohpError(f"unknown feature dataset {dataset!r}; choose one of {', '.join(FEATURE_DATASETS)}")
    with contextlib.redirect_stdout(io.StringIO()):  # the model package prints on load
        f = feats.features(key, x, size=size, progress=bar)
    return f, np.asarray(y), tuple(names)


def _per_class(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)]))


def _progress():
    """Progress of long cache builds on stderr (silent when nothing needs building): a tqdm
    bar on a terminal when tqdm is installed, else a plain line every 10 % (logs, CI)."""

    state: dict[str, Any] = {}
    fancy = sys.stderr.isatty()
    if fancy:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            fancy = False

    def update(done: int, total: int, text: str) -> None:
        if fancy:
            if state.get("text") != text:
                if "bar" in state:
                    state["bar"].close()
                state["bar"], state["text"] = tqdm(total=total, desc=text, leave=False), text
            bar = state["bar"]
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
            return
        if state.get("text") != text:
            state.update(text=text, start=time.perf_counter(), last=-1)
        tenth = int(10 * done / max(total, 1))
        if tenth > state["last"]:
            state["last"] = tenth
            print(f"[{time.perf_counter() - state['start']:7.1f} s] {text}: {done}/{total}", file=sys.stderr,
                  flush=True)
    return update


def _split_pools(y: np.ndarray, classes: list[int], train_fraction: float, rng: np.random.Generator
                 ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    train, evals = {}, {}
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(train_fraction * len(idx)))
        train[c], evals[c] = idx[:cut], idx[cut:]
    return train, evals


def _build_task(family: str, seed: int, split: str, x: torch.Tensor, classes: list[int],
                train_idx: dict[int, np.ndarray], eval_idx: dict[int, np.ndarray], model_factory,
                patterns, info: dict[str, Any]) -> Task:
    xs, ys = {"train": [], "eval": []}, {"train": [], "eval": []}
    for label, c in enumerate(classes):
        for part, idx in (("train", train_idx[c]), ("eval", eval_idx[c])):
            xs[part].append(x[torch.as_tensor(idx, dtype=torch.long)])
            ys[part].append(torch.full((len(idx),), label, dtype=torch.long))
    return Task(family=family, seed=int(seed), split=split, x_train=torch.cat(xs["train"]),
                y_train=torch.cat(ys["train"]), x_eval=torch.cat(xs["eval"]), y_eval=torch.cat(ys["eval"]),
                n_classes=len(classes), model_factory=model_factory, patterns=tuple(patterns), info=info)


# --------------------------------------------------------------------------- frozen features
@dataclass
class FeatureOptions(Config):
    what = "frozen-feature family"

    n_way: int = setting(5, "Classes per task.")
    shots: int | None = setting(None, "Training images per class of a few-shot episode (none: the whole pool).")
    queries: int = setting(15, "Evaluation images per class of a few-shot episode.")
    target_shots: int | None = setting(
        None, "Source episodes only: train on this many images per class (>= shots) while the condition sees the "
              "first `shots` of them, so Stage I's targets know more than the support set; held-out episodes "
              "are unchanged.")
    heldout_fraction: float = setting(0.35, "Fraction of the classes held out.")
    train_fraction: float = setting(0.6, "Fraction of each class's images in the training pool.")
    split_seed: int = setting(0, "Seed of the fixed class and image splits.")
    size: int = setting(64, "Image side (px) fed to the backbone.")
    per_class: int = setting(60, "Images per class.")
    patterns: tuple[str, ...] = setting(("*",), "Parameter-name patterns of the generated subset.")

    def __post_init__(self) -> None:
        if self.n_way < 2:
            raise LohpError(f"n_way must be >= 2 (got {self.n_way})")
        if self.shots is not None and self.shots < 1:
            raise LohpError(f"shots must be >= 1 (got {self.shots})")
        if self.target_shots is not None and (self.shots is None or self.target_shots < self.shots):
            raise LohpError(f"target_shots ({self.target_shots}) needs shots and must be >= shots ({self.shots})")
        if not 0 < self.heldout_fraction < 1 or not 0 < self.train_fraction < 1:
            raise LohpError("heldout_fraction and train_fraction must lie strictly between 0 and 1")
        self.patterns = tuple(self.patterns)


class FeatureFamily(TaskFamily):
    """n-way tasks on frozen EfficientNet-Lite0 features; a linear head is generated."""

    dataset = "openclipart"
    Options = FeatureOptions
    options: FeatureOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        n_way, shots, queries = self.n_way, self.shots, self.queries
        self._x, y, self.class_names = feature_data(self.dataset, self.size, self.per_class)
        self._y = y
        rng = np.random.default_rng(self.split_seed)
        order = rng.permutation(len(self.class_names))
        n_held = max(1, int(round(self.heldout_fraction * len(order))))
        self.heldout_classes = sorted(int(c) for c in order[:n_held])
        self.source_classes = sorted(int(c) for c in order[n_held:])
        for split, cls in (("source", self.source_classes), ("held-out", self.heldout_classes)):
            if len(cls) < n_way:
                raise LohpError(f"{self.dataset} has {len(cls)} {split} classes, fewer than n_way={n_way}; "
                                "ask for fewer ways or change heldout_fraction")
        self._train_idx, self._eval_idx = _split_pools(y, list(range(len(self.class_names))), self.train_fraction,
                                                       rng)
        if shots is not None:
            smallest = min(len(self._train_idx[c]) + len(self._eval_idx[c]) for c in self._train_idx)
            most = max(shots, self.target_shots or 0)
            if most + queries > smallest:
                raise LohpError(f"{self.dataset} classes hold too few images for {most} shots and {queries} "
                                f"queries (the smallest class has {smallest}); ask for fewer shots or queries")

    def config(self) -> dict[str, Any]:
        out = super().config()
        if out.get("target_shots") is None:  # unset: stores made before the option keep resuming
            out.pop("target_shots", None)
        return out

    def model_factory(self) -> nn.Module:
        return nn.Linear(self._x.shape[1], self.n_way)

    def feature_spec(self) -> dict[str, Any] | None:
        return make_feature_spec(self._x.shape[1], 0, self.patterns,
                                 f"the frozen EfficientNet-Lite0 features ({self._x.shape[1]:,}-d) of a "
                                 f"{self.size} px image, as lohp.data.features computes them")

    def sample(self, seed: int, split: str = "source") -> Task:
        self.check_split(split)
        pool = self.source_classes if split == "source" else self.heldout_classes
        rng = np.random.default_rng([int(seed), 0 if split == "source" else 1, self.split_seed, 7])
        classes = [int(c) for c in rng.choice(pool, self.n_way, replace=False)]
        train, evals = self._train_idx, self._eval_idx
        support = None
        if self.shots is not None:  # an episode: disjoint support and queries from the class's images
            train, evals, support = {}, {}, {}
            # a source episode with target_shots trains on more images than its support set
            n = self.target_shots if (self.target_shots and split == "source") else self.shots
            for c in classes:
                pick = rng.permutation(np.concatenate([self._train_idx[c], self._eval_idx[c]]))
                train[c], evals[c], support[c] = pick[:n], pick[n:n + self.queries], pick[:self.shots]
        task = _build_task(self.name, seed, split, self._x, classes, train, evals, self.model_factory,
                           self.patterns, {"classes": [self.class_names[c] for c in classes], "shots": self.shots})
        if support is not None and len(train[classes[0]]) > self.shots:
            idx = [torch.as_tensor(support[c], dtype=torch.long) for c in classes]
            rows = (torch.cat([self._x[i] for i in idx]),
                    torch.cat([torch.full((len(i),), label, dtype=torch.long) for label, i in enumerate(idx)]))
            task.condition_features = lambda _t, r=rows: r
            task.info["target_shots"] = len(train[classes[0]])
        return task


class OpenclipartFamily(FeatureFamily):
    name = "openclipart"
    dataset = "openclipart"


@dataclass
class FashionOptions(FeatureOptions):
    """Fashion-MNIST's defaults: 10 classes, so half held out, and more images per class."""

    heldout_fraction: float = setting(0.5, "Fraction of the classes held out.")
    per_class: int = setting(400, "Images per class.")


class FashionFeatureFamily(FeatureFamily):
    """Fashion-MNIST through the same frozen backbone (the cross-dataset row)."""

    name = "fashion"
    dataset = "fashion-mnist"
    Options = FashionOptions


# --------------------------------------------------------------------------- rotated domains
ANGLES = (0, 15, 30, 45, 60, 75)


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate ``[n, H, W]`` images counter-clockwise about their centre (bilinear, zero fill)."""
    if degrees % 360 == 0:
        return images
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=images.dtype)
    grid = F.affine_grid(theta.expand(len(images), 2, 3), (len(images), 1, *images.shape[1:]), align_corners=False)
    return F.grid_sample(images[:, None], grid, align_corners=False)[:, 0]


@lru_cache(maxsize=2)
def rotated_domains(dataset: str, per_domain: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DomainBed-style: shuffle, cut into one disjoint image set per angle, rotate each.
    Returns pixels ``[n, 784]`` in [0, 1], labels, domain index."""

    x, y, _ = images.mnist() if dataset == "mnist" else images.fashion_mnist()
    idx = np.random.default_rng(seed).permutation(len(y))[:per_domain * len(ANGLES)]
    xs, ds = [], []
    for d, angle in enumerate(ANGLES):
        part = idx[d * per_domain:(d + 1) * per_domain]
        xs.append(rotate(torch.from_numpy(x[part]).float() / 255.0, angle).reshape(len(part), -1))
        ds.append(torch.full((len(part),), d))
    return torch.cat(xs), torch.from_numpy(y[idx]), torch.cat(ds)


@dataclass
class RotatedOptions(Config):
    what = "rotated-domain family"

    heldout_domain: int = setting(0, "The held-out domain: one of the angles 0, 15, ..., 75.")
    n_way: int = setting(5, "Classes per task (2-10).")
    hidden: int = setting(32, "Hidden width of the generated MLP.")
    per_domain: int = setting(1600, "Images per domain.")
    train_fraction: float = setting(0.6, "Fraction of each (domain, class) pool's images for training.")
    split_seed: int = setting(0, "Seed of the fixed image and pool splits.")
    patterns: tuple[str, ...] = setting(("*",), "Parameter-name patterns of the generated subset.")

    def __post_init__(self) -> None:
        if self.heldout_domain not in ANGLES:
            raise LohpError(f"unknown domain {self.heldout_domain!r}; the domains are the angles "
                            f"{', '.join(map(str, ANGLES))}")
        if not 2 <= self.n_way <= 10:
            raise LohpError(f"n_way must be between 2 and 10 (got {self.n_way})")
        if self.hidden < 1:
            raise LohpError("hidden must be >= 1")
        self.heldout_domain = int(self.heldout_domain)
        self.patterns = tuple(self.patterns)


class RotatedFamily(TaskFamily):
    """n-way tasks in rotated domains; a whole MLP (784 -> hidden -> n_way) is generated."""

    dataset = "mnist"
    Options = RotatedOptions
    options: RotatedOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._x, y, dom = rotated_domains(self.dataset, self.per_domain, self.split_seed)
        rng = np.random.default_rng(self.split_seed)
        # Pools per (domain, class): one key space so every domain keeps its own images.
        keys = (dom * 10 + y).numpy()
        self._train_idx, self._eval_idx = _split_pools(keys, sorted(set(keys.tolist())), self.train_fraction, rng)
        self.source_domains = [a for a in ANGLES if a != self.heldout_domain]

    @property
    def domains(self) -> tuple[int, ...]:
        return ANGLES

    def model_factory(self) -> nn.Module:
        return nn.Sequential(nn.Linear(784, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.n_way))

    def feature_spec(self) -> dict[str, Any] | None:
        return make_feature_spec(784, self.hidden, self.patterns,
                                 "784 pixel values 0-255 of a 28 x 28 image, row by row", scale=255.0)

    def sample(self, seed: int, split: str = "source") -> Task:
        self.check_split(split)
        rng = np.random.default_rng([int(seed), 0 if split == "source" else 1, self.split_seed, 11])
        angle = int(rng.choice(self.source_domains)) if split == "source" else self.heldout_domain
        d = ANGLES.index(angle)
        classes = [int(c) for c in rng.choice(10, self.n_way, replace=False)]
        train = {c: self._train_idx[d * 10 + c] for c in classes}
        evals = {c: self._eval_idx[d * 10 + c] for c in classes}
        return _build_task(self.name, seed, split, self._x, classes, train, evals, self.model_factory,
                           self.patterns, {"classes": classes, "domain": angle})


class RotatedMnistFamily(RotatedFamily):
    name = "rotated-mnist"
    dataset = "mnist"


class RotatedFashionFamily(RotatedFamily):
    name = "rotated-fashion"
    dataset = "fashion-mnist"


register_family(OpenclipartFamily.name, OpenclipartFamily)
register_family(FashionFeatureFamily.name, FashionFeatureFamily)
register_family(RotatedMnistFamily.name, RotatedMnistFamily)
register_family(RotatedFashionFamily.name, RotatedFashionFamily)
