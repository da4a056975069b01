"""The ``text-table`` family: a CSV / TSV with a text column and a label column, seen through
the frozen MiniLM-L6 (a head on its embeddings) or with LoRA adapters of MiniLM-L6 (``lora=true``).
Classes, rows and tasks are split exactly as in the ``table`` family::

    lohp prepare --family text-table --family-option path=reviews.csv --family-option text=body ...

Needs the ``lora`` extra (MiniLM; peft for the adapter export).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lohp.config import setting
from lohp.data.text import frozen_embeddings, token_ids
from lohp.errors import LohpError
from lohp.lora import LORA_PATTERNS, LoraSpec, make_classifier
from lohp.tasks.base import Task, class_means, relabelled_splits
from lohp.tasks.registry import register_family
from lohp.tasks.table import TableFamily, TableOptions, class_index
from lohp.tasks.text import TextFamily


@dataclass
class TextTableOptions(TableOptions):
    what = "text-table family"

    patterns: tuple[str, ...] | None = setting(None, "Parameter-name patterns of the generated subset "
                                                     "(none: *, or the LoRA patterns with lora=true).")
    text: str = setting("text", "The text column of the CSV / TSV table.")
    max_length: int = setting(32, "Tokens per text (MiniLM).")
    lora: bool = setting(False, "Generate LoRA adapters of MiniLM-L6 plus a head, not a head on frozen embeddings.")
    rank: int = setting(8, "LoRA rank (lora=true only).")
    alpha: int = setting(16, "LoRA scaling alpha (lora=true only).")

    def __post_init__(self) -> None:
        self.max_length, self.lora = int(self.max_length), _flag(self.lora)
        if self.lora:
            if self.hidden:
                raise LohpError("text-table: hidden applies to the frozen-embedding head; with lora=true the "
                                "target is LoRA + a linear head (drop hidden)")
            if int(self.rank) < 1:
                raise LohpError(f"text-table: rank must be >= 1 (got {self.rank})")
            self.rank, self.alpha = int(self.rank), int(self.alpha)
        if self.patterns is None:
            self.patterns = LORA_PATTERNS if self.lora else ("*",)
        super().__post_init__()


class TextTableFamily(TableFamily):
    """``text-table``: a CSV / TSV with a text column and a label column.

    ``lora=false`` (default): each text is the mean-pooled frozen MiniLM-L6 embedding (384-d,
    cached) and the generated target is a linear head (``hidden=0``) or an MLP on it.
    ``lora=true``: the target is MiniLM-L6 with LoRA adapters (``rank``, ``alpha``) on the
    query / value projections plus a linear head, on the texts' token ids; the condition is
    the per-class mean of the frozen embeddings of the training texts, as in ``wordnet``.
    Needs the ``lora`` extra (MiniLM; peft for the adapter export)."""

    name = "text-table"
    what = "text table"
    Options = TextTableOptions
    options: TextTableOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.lora:
            self.spec = LoraSpec(self.rank, self.alpha, ("query", "value"), None)
            # LoRA runs are slow and want the LoRA learning rates (see lohp.tasks.text.TextFamily).
            self.optimizer_defaults = TextFamily.optimizer_defaults
            self.default_shard_runs = TextFamily.default_shard_runs

    def _load(self, file: Path, digest: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name
        with open(file, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if file.suffix in (".tsv", ".tab") else ",")
            missing = [c for c in (self.text, self.label) if c not in (reader.fieldnames or [])]
            if missing:
                raise LohpError(f"{file} has no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])}); "
                                f"pass --family-option {'text' if missing[0] == self.text else 'label'}=COLUMN")
            texts, labels = [], []
            for n, row in enumerate(reader, start=2):
                body = (row[self.text] or "").strip()
                if not body:
                    raise LohpError(f"{file} line {n}: the text is empty; drop the row or fill it")
                texts.append(body)
                labels.append((row[self.label] or "").strip())
        if not texts:
            raise LohpError(f"{file} has no data rows")
        x = frozen_embeddings(texts, self.max_length).numpy().astype(np.float32)
        if self.lora:
            self._tokens = token_ids(texts, self.max_length)
        return (x, *class_index(labels))

    def config(self) -> dict[str, Any]:
        out = super().config()
        if not self.lora:  # rank and alpha only mean something with lora=true
            del out["rank"], out["alpha"]
        return out

    input_description = ("the mean-pooled frozen MiniLM-L6 embedding (384-d) of each text, as "
                         "lohp.data.text.frozen_embeddings computes it")

    def feature_spec(self) -> dict[str, Any] | None:
        return None if self.lora else super().feature_spec()  # LoRA tasks are token ids

    def model_factory(self) -> nn.Module:
        if not self.lora:
            return super().model_factory()

        return make_classifier(self.spec, self.n_way)

    def sample(self, seed: int, split: str = "source") -> Task:
        task = super().sample(seed, split)
        if not self.lora:
            return task
        classes = [self.class_names.index(c) for c in task.info["classes"]]
        tok_train, y_train, tok_eval, y_eval = relabelled_splits(self._tokens, classes, self._train_idx,
                                                                 self._eval_idx)
        cond = class_means(task.x_train, task.y_train, self.n_way)  # frozen embeddings of the training texts
        return Task(family=self.name, seed=task.seed, split=split, x_train=tok_train, y_train=y_train,
                    x_eval=tok_eval, y_eval=y_eval, n_classes=self.n_way, model_factory=self.model_factory,
                    patterns=self.patterns, info=task.info,
                    condition_fn=lambda _t, c=cond: c,
                    condition_features=lambda _t, f=(task.x_train, task.y_train): f)

    def frozen_features(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen MiniLM embeddings (standardised as the head sees them) of the task's training
        and evaluation texts: the linear-probe baseline's inputs."""
        if not self.lora:
            return task.x_train, task.x_eval
        classes = [self.class_names.index(c) for c in task.info["classes"]]
        x_train, _, x_eval, _ = relabelled_splits(self._x, classes, self._train_idx, self._eval_idx)
        return x_train, x_eval

    def check_policy(self, trained: dict[str, Any]) -> None:
        mine = self.config()
        for key, what in (("lora", "lora"), ("rank", "LoRA rank"), ("n_way", "number of classes"),
                          ("hidden", "hidden width")):
            if trained.get(key, mine.get(key)) != mine.get(key):
                raise LohpError(f"{what} {mine.get(key)} does not match the policy, which was trained with "
                                f"{trained[key]}; pass --family-option {key}={trained[key]} or train a policy "
                                "on a store prepared with this setting")


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise LohpError(f"expected true or false, got {value!r}")
    return bool(value)


register_family(TextTableFamily.name, TextTableFamily)
