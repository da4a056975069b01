"""Text classification families on MiniLM-L6 + LoRA: ``wordnet`` and ``fortunes``.

A task is ``n_way`` categories (WordNet noun lexicographer categories, or fortune-cookie
topics) in a random label order, with ``shots`` training and ``eval_shots`` evaluation
texts per class. Categories are split once into disjoint *source* and *held-out* sets,
so a held-out task only has categories no source task ever saw. Each category's texts
are split once into a training pool and an evaluation pool: a task's evaluation texts
never occur in any task's training split.

Inputs are cached MiniLM token ids ``[n, max_length]``; the target is
:class:`lohp.lora.LoraClassifier` (generated subset: LoRA A/B + head). The condition
c is the per-class mean of the *frozen* MiniLM embeddings of the training texts
``[n_way, 384]`` (computed once per category pool and cached on disk).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lohp.config import Config, setting
from lohp.data.text import fortune_topics, frozen_embeddings, token_ids, wordnet_glosses
from lohp.errors import LohpError
from lohp.lora import LORA_PATTERNS, LoraSpec, make_classifier
from lohp.tasks.base import Task, TaskFamily, as_type
from lohp.tasks.registry import register_family


@dataclass
class TextOptions(Config):
    """Options of the text families; ``n_way`` and ``heldout`` default per family (None: that default)."""

    what = "text family"

    n_way: int | None = setting(5, "Categories per task.")
    shots: int = setting(16, "Training texts per class.")
    eval_shots: int = setting(16, "Evaluation texts per class.")
    heldout: int | None = setting(8, "Categories held out (no source task sees them).")
    max_length: int = setting(32, "Tokens per text (MiniLM).")
    rank: int = setting(8, "LoRA rank.")
    alpha: int = setting(16, "LoRA scaling alpha.")
    targets: tuple[str, ...] = setting(("query", "value"), "LoRA target modules of MiniLM-L6.")
    layers: tuple[int, ...] | None = setting(None, "MiniLM-L6 layers (0-5) that get LoRA (none: all).")
    pool: int = setting(64, "At most this many training and evaluation texts per category.")
    split_seed: int = setting(0, "Seed of the fixed category and text splits.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name in ("n_way", "heldout") and getattr(self, f.name) is None:
                setattr(self, f.name, f.default)
        for f in dataclasses.fields(self):
            if f.name not in ("targets", "layers"):
                setattr(self, f.name, as_type(getattr(self, f.name), int, f.name, self.what))
        targets = [self.targets] if isinstance(self.targets, str) else self.targets
        layers = [self.layers] if isinstance(self.layers, int) else self.layers
        spec = LoraSpec(self.rank, self.alpha, tuple(targets), None if layers is None else tuple(layers))
        self.targets, self.layers = spec.targets, spec.layers
        for key in ("shots", "eval_shots", "pool"):
            if getattr(self, key) <= 0:
                raise LohpError(f"{self.what}: {key} must be > 0 (got {getattr(self, key)})")
        if self.n_way < 2:
            raise LohpError(f"{self.what}: n_way must be at least 2 (got {self.n_way})")


@dataclass
class WordNetOptions(TextOptions):
    what = "wordnet"


@dataclass
class FortunesOptions(TextOptions):
    what = "fortunes"

    n_way: int | None = setting(4, "Categories per task.")
    heldout: int | None = setting(6, "Categories held out (no source task sees them).")


class TextFamily(TaskFamily):
    """Shared machinery; subclasses provide :meth:`_texts` and their ``Options``."""

    name = "text"
    Options = TextOptions
    options: TextOptions
    # Stage I learning rates for LoRA + head: the digits defaults diverge here; these were
    # picked on a few wordnet source tasks (T = 32, batch 16), where SGD at 0.2 diverged.
    default_shard_runs = 4  # a LoRA run is slow: resume in units of 4 runs
    optimizer_defaults = {"adam": {"lr": 5e-3}, "adamw": {"lr": 5e-3}, "sam-adam": {"lr": 5e-3},
                          "sgd": {"lr": 0.1}, "sam": {"lr": 0.1}}

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.spec = LoraSpec(self.rank, self.alpha, self.targets, self.layers)
        texts = self._texts()
        names = sorted(texts)
        if not self.n_way <= self.heldout <= len(names) - self.n_way:
            raise LohpError(f"{self.name} has {len(names)} categories: heldout must lie between n_way={self.n_way} "
                            f"and {len(names) - self.n_way} so both sides can form {self.n_way}-way tasks "
                            f"(got {self.heldout})")
        rng = np.random.default_rng(self.split_seed)
        order = [names[i] for i in rng.permutation(len(names))]
        self.heldout_categories = sorted(order[:self.heldout])
        self.source_categories = sorted(order[self.heldout:])
        # One fixed train/eval pool per category: disjoint, at most `pool` texts each.
        self._pools: dict[str, dict[str, list[str]]] = {}
        for cat in names:
            items = texts[cat]
            perm = np.random.default_rng([self.split_seed, names.index(cat)]).permutation(len(items))
            half = min(self.pool, len(items) // 2)
            need = max(self.shots, self.eval_shots)
            if half < need:
                raise LohpError(f"{self.name} category {cat!r} has {len(items)} texts, too few for {self.shots} "
                                f"training and {self.eval_shots} evaluation texts per class; lower --shots")
            self._pools[cat] = {"train": [items[i] for i in perm[:half]],
                                "eval": [items[i] for i in perm[half:2 * half]]}

    # ------------------------------------------------------------------ subclass API
    def _texts(self) -> dict[str, list[str]]:
        raise NotImplementedError

    # ------------------------------------------------------------------ family API
    def model_factory(self):
        return make_classifier(self.spec, self.n_way)

    @functools.lru_cache(maxsize=64)
    def _tokens(self, category: str, part: str) -> torch.Tensor:
        return token_ids(self._pools[category][part], self.max_length)

    @functools.lru_cache(maxsize=64)
    def _embeddings(self, category: str, part: str) -> torch.Tensor:
        return frozen_embeddings(self._pools[category][part], self.max_length)

    def _draw(self, seed: int, split: str) -> tuple[list[str], dict[str, list[np.ndarray]]]:
        self.check_split(split)
        cats = self.source_categories if split == "source" else self.heldout_categories
        rng = np.random.default_rng([int(seed), 0 if split == "source" else 1, self.split_seed, 7])
        classes = [cats[i] for i in rng.choice(len(cats), self.n_way, replace=False)]
        idx: dict[str, list[np.ndarray]] = {"train": [], "eval": []}
        for c in classes:
            for part, n in (("train", self.shots), ("eval", self.eval_shots)):
                idx[part].append(np.sort(rng.choice(len(self._pools[c][part]), n, replace=False)))
        return classes, idx

    def sample(self, seed: int, split: str = "source") -> Task:
        classes, idx = self._draw(seed, split)
        xs, ys = {"train": [], "eval": []}, {"train": [], "eval": []}
        for label, c in enumerate(classes):
            for part in ("train", "eval"):
                xs[part].append(self._tokens(c, part)[torch.from_numpy(idx[part][label])])
                ys[part].append(torch.full((len(idx[part][label]),), label, dtype=torch.long))
        train_feats = [self._embeddings(c, "train")[torch.from_numpy(i)] for c, i in zip(classes, idx["train"])]
        cond = torch.stack([f.mean(0) for f in train_feats])  # [n_way, 384]
        feats = (torch.cat(train_feats), torch.cat(ys["train"]))  # what a coreset condition summarises
        return Task(
            family=self.name, seed=int(seed), split=split,
            x_train=torch.cat(xs["train"]), y_train=torch.cat(ys["train"]),
            x_eval=torch.cat(xs["eval"]), y_eval=torch.cat(ys["eval"]),
            n_classes=self.n_way, model_factory=self.model_factory, patterns=_patterns(),
            info={"classes": classes, "combo": sorted(classes)},
            condition_fn=lambda task, c=cond: c,
            condition_features=lambda task, f=feats: f,
        )

    def frozen_features(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen MiniLM embeddings of the task's training and evaluation texts (linear probe)."""
        classes, idx = self._draw(task.seed, task.split)
        out = []
        for part in ("train", "eval"):
            out.append(torch.cat([self._embeddings(c, part)[torch.from_numpy(i)] for c, i in zip(classes, idx[part])]))
        return out[0], out[1]

    def texts(self, task: Task, part: str = "train") -> list[str]:
        classes, idx = self._draw(task.seed, task.split)
        return [self._pools[c][part][j] for c, i in zip(classes, idx[part]) for j in i]

    def check_policy(self, trained: dict[str, Any]) -> None:
        """Refuse (one line) a LoRA rank / target / layers / class count the policy was not trained for."""
        mine = self.config()
        for key, what in (("rank", "LoRA rank"), ("targets", "LoRA target modules"), ("layers", "LoRA layers"),
                          ("n_way", "number of classes")):
            if key in trained and trained[key] != mine[key]:
                have, want = mine[key], trained[key]
                fmt = (lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v))
                raise LohpError(f"{what} {fmt(have)} does not match the policy, which was trained for {fmt(want)}; "
                                f"use {fmt(want)} or train a policy on a store prepared with {fmt(have)}")


def _patterns() -> tuple[str, ...]:
    return LORA_PATTERNS


class WordNetFamily(TextFamily):
    """WordNet 3.0 noun definitions, 26 lexicographer categories (8 held out)."""

    name = "wordnet"
    Options = WordNetOptions

    def _texts(self) -> dict[str, list[str]]:
        return wordnet_glosses()


class FortunesFamily(TextFamily):
    """Fortune cookies, the 16 topics with at least 400 texts (6 held out)."""

    name = "fortunes"
    Options = FortunesOptions

    def _texts(self) -> dict[str, list[str]]:
        return fortune_topics()


register_family(WordNetFamily.name, WordNetFamily)
register_family(FortunesFamily.name, FortunesFamily)
