"""The ``table`` family: a user's own labelled table (CSV / TSV with a header, or ``.npz``
with arrays ``X`` and ``y``), no code to write::

    lohp prepare --family table --family-option path=data.csv --family-option label=species ...

Classes are split once (``split_seed``) into source classes and ``heldout`` (a fraction)
classes that no source task sees; each class's rows once into a training and an evaluation
pool. A task draws ``n_way`` classes from one side, relabels them at random, and trains on
their training rows, evaluates on their evaluation rows (disjoint). Features are
standardised with statistics of the source classes only. ``hidden = 0`` generates a linear
head, ``hidden > 0`` a one-hidden-layer MLP (the ``mlp-units`` policy structure).

The file's sha256 is recorded in the family config (so in every store and policy): a file
that changed since is refused; one that moved is found again with ``path=NEW``.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.io import sha256_file
from lohp.tasks.base import Task, TaskFamily, make_feature_spec, relabelled_splits
from lohp.tasks.registry import register_family


@lru_cache(maxsize=4)
def _read(path: str, label: str, digest: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features [n, F] float32, class index [n], class names); cached per file content."""
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "X" not in z or "y" not in z:
                raise LohpError(f"{p} must hold arrays X (features) and y (labels); it has {', '.join(z.files)}")
            x, raw = np.asarray(z["X"]), np.asarray(z["y"])
        if x.ndim != 2 or raw.ndim != 1 or len(x) != len(raw):
            raise LohpError(f"{p}: X must be [rows, features] and y [rows] (got {list(x.shape)} and {list(raw.shape)})")
        labels = [str(v) for v in raw.tolist()]
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError):
            raise LohpError(f"{p}: X is not numeric") from None
    else:
        delimiter = "\t" if p.suffix in (".tsv", ".tab") else ","
        try:
            # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name
            with open(p, newline="", encoding="utf-8-sig") as fh:
                x, labels = _read_rows(p, csv.reader(fh, delimiter=delimiter), label)
        except UnicodeDecodeError:
            raise LohpError(f"{p} is not a UTF-8 text table (a compressed or binary file?); give lohp the "
                            "uncompressed CSV / TSV, or an .npz with X and y") from None
        except OSError as exc:  # unreadable, a folder, vanished since the option was checked
            raise LohpError(f"cannot read the table {p} ({exc.strerror or exc})") from None
    if len(x) == 0:
        raise LohpError(f"{p} has no data rows")
    x64 = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x64).all():
        bad = int((~np.isfinite(x64)).any(1).sum())
        raise LohpError(f"{p}: {bad} row(s) hold NaN or inf features; drop or impute them first")
    big = np.abs(x64) > np.finfo(np.float32).max
    if big.any():
        raise LohpError(f"{p}: {int(big.any(1).sum())} row(s) hold features beyond float32's range "
                        f"(|value| > {np.finfo(np.float32).max:.3g}); rescale those columns first")
    return (x64.astype(np.float32), *class_index(labels))


def _read_rows(p: Path, reader: Any, label: str) -> tuple[np.ndarray, list[str]]:
    """(features [n, F] float64, label texts) of a CSV reader, with one-line refusals."""
    header = next(reader, None)
    if not header:
        raise LohpError(f"{p} is empty; a table needs a header row and data rows")
    header = [h.strip() for h in header]
    if label not in header:
        raise LohpError(f"{p} has no label column {label!r} (columns: {', '.join(header[:12])}"
                        f"{', ...' if len(header) > 12 else ''}); pass --family-option label=COLUMN")
    if header.count(label) > 1:
        raise LohpError(f"{p} has {header.count(label)} columns named {label!r}; rename all but the label column")
    if len(header) < 2:
        raise LohpError(f"{p} has only the label column {label!r}; a table needs at least one feature column")
    li = header.index(label)
    rows, labels = [], []
    for n, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise LohpError(f"{p} line {n} has {len(row)} fields, the header {len(header)}")
        try:
            rows.append([float(c) for i, c in enumerate(row) if i != li])
        except ValueError:
            bad = next(c for i, c in enumerate(row) if i != li and not _is_number(c))
            raise LohpError(f"{p} line {n}: feature value {bad!r} is not a number; a table's feature "
                            "columns must be numeric (encode categories first)") from None
        labels.append(row[li].strip())
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header) - 1), labels


def class_index(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Class index per row and the class names (sorted by length, then text: 2 before 10)."""
    names = sorted(set(labels), key=lambda v: (len(v), v))
    index = {name: i for i, name in enumerate(names)}
    return np.asarray([index[v] for v in labels], dtype=np.int64), names


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@dataclass
class FileOptions(Config):
    """The options of the families on a user's own labelled data (``table``, ``image-folder``,
    ``text-table``): the data, and how classes, rows and tasks are split."""

    what = "table family"

    path: str = setting(help="The data: a file (a folder for image-folder); pass path=NEW if it moved.")
    n_way: int = setting(5, "Classes per task.")
    heldout: float = setting(0.3, "Fraction of the classes held out (no source task sees them).")
    split_seed: int = setting(0, "Seed of the fixed class and row splits.")
    per_class: int | None = setting(None, "At most this many training and evaluation rows per class (none: all).")
    standardize: bool = setting(True, "Standardise features with statistics of the source classes.")
    hidden: int = setting(0, "Target model: 0 a linear head, > 0 a one-hidden-layer MLP of this width.")
    train_fraction: float = setting(0.5, "Fraction of each class's rows in the training pool.")
    sha256: str | None = setting(None, "Content hash the data must have (recorded; a changed file is refused).")
    patterns: tuple[str, ...] = setting(("*",), "Parameter-name patterns of the generated subset.")

    def __post_init__(self) -> None:
        if self.n_way < 2:
            raise LohpError(f"n_way must be >= 2 (got {self.n_way}): a task needs at least two classes")
        if not 0 < self.heldout < 1 or not 0 < self.train_fraction < 1:
            raise LohpError("heldout and train_fraction must lie strictly between 0 and 1")
        if self.hidden < 0 or (self.per_class is not None and self.per_class < 1):
            raise LohpError("hidden must be >= 0 and per_class >= 1")
        self.path, self.n_way, self.heldout = str(self.path), int(self.n_way), float(self.heldout)
        self.split_seed, self.standardize = int(self.split_seed), bool(self.standardize)
        self.hidden, self.train_fraction = int(self.hidden), float(self.train_fraction)
        self.patterns = tuple(self.patterns)


@dataclass
class TableOptions(FileOptions):
    label: str = setting("label", "The label column of a CSV / TSV table.")


class TableFamily(TaskFamily):
    name = "table"
    what = "table file"      # how errors name the data
    is_folder = False
    Options = TableOptions
    options: TableOptions

    def _digest(self, file: Path) -> str:
        return sha256_file(file)

    def _load(self, file: Path, digest: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(features [n, F] float32, class index [n], class names) of the data at ``file``."""
        return _read(str(file.resolve()), self.label, digest)

    def __init__(self, **options: Any):
        super().__init__(**options)
        path = self.path
        file = Path(path).expanduser()
        if file.exists() and not (file.is_dir() if self.is_folder else file.is_file()):
            kind = "a file" if self.is_folder else "a folder" if file.is_dir() else "not a regular file"
            raise LohpError(f"{self.what} {path} is {kind}; pass --family-option path= "
                            f"{'a folder of class folders' if self.is_folder else 'the table file'}")
        if not (file.is_dir() if self.is_folder else file.is_file()):
            raise LohpError(f"{self.what} {path} not found (from {Path.cwd()}); if it moved, pass "
                            "--family-option path=NEW_LOCATION")
        try:
            digest = self._digest(file)
        except OSError as exc:  # exists but unreadable for this user
            raise LohpError(f"cannot read the {self.what} {path} ({exc.strerror or exc})") from None
        if self.sha256 is not None and self.sha256 != digest:
            raise LohpError(f"{self.what} {path} changed since the store was made (sha256 {digest[:12]} vs "
                            f"{self.sha256[:12]}); pass --family-option path=... to the original data, or prepare a "
                            "new store")
        self.options = dataclasses.replace(self.options, sha256=digest)  # recorded in config()

        x, y, names = self._load(file, digest)
        n_classes = len(names)
        rng = np.random.default_rng(self.split_seed)
        order = rng.permutation(n_classes)
        n_held = int(round(self.heldout * n_classes))
        self.heldout_classes = sorted(int(c) for c in order[:n_held])
        self.source_classes = sorted(int(c) for c in order[n_held:])
        for side, classes in (("source", self.source_classes), ("held-out", self.heldout_classes)):
            if len(classes) < self.n_way:
                raise LohpError(f"{path}: {n_classes} classes give {len(classes)} {side} classes (heldout="
                                f"{self.heldout}), fewer than n_way={self.n_way}; lower n_way or change heldout")
        self._train_idx, self._eval_idx = {}, {}
        for c in range(n_classes):
            idx = rng.permutation(np.flatnonzero(y == c))
            cut = int(round(self.train_fraction * len(idx)))
            cut = min(max(cut, 1), len(idx) - 1)
            if len(idx) < 2:
                raise LohpError(f"{path}: class {names[c]!r} has {len(idx)} row(s); each class needs at least 2 "
                                "(one for training, one for evaluation)")
            tr, ev = idx[:cut], idx[cut:]
            if self.per_class is not None:
                tr, ev = tr[:self.per_class], ev[:self.per_class]
            self._train_idx[c], self._eval_idx[c] = tr, ev
        # task inputs are (raw - shift) / scale, recorded in every policy (feature_spec)
        self.input_shift: float | list[float] = 0.0
        self.input_scale: float | list[float] = 1.0
        if self.standardize:
            src = np.concatenate([np.flatnonzero(y == c) for c in self.source_classes])
            mean, std = x[src].mean(0), x[src].std(0)
            scale = np.where(std > 1e-8, std, 1.0)
            x = (x - mean) / scale
            self.input_shift, self.input_scale = mean.tolist(), scale.tolist()
        self._x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.class_names = names
        self.n_features = x.shape[1]

    #: What a raw row of this family's data is (for a person; see feature_spec).
    input_description = "the table's feature columns in file order, without the label column"

    def feature_spec(self) -> dict[str, Any] | None:
        return make_feature_spec(self.n_features, self.hidden, self.patterns, self.input_description,
                                 self.input_shift, self.input_scale)

    def model_factory(self) -> nn.Module:
        if self.hidden == 0:
            return nn.Linear(self.n_features, self.n_way)
        return nn.Sequential(nn.Linear(self.n_features, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.n_way))

    def sample(self, seed: int, split: str = "source") -> Task:
        self.check_split(split)
        pool = self.source_classes if split == "source" else self.heldout_classes
        rng = np.random.default_rng([int(seed), 0 if split == "source" else 1, self.split_seed])
        classes = [int(c) for c in rng.choice(pool, size=self.n_way, replace=False)]  # classes[label] = class
        x_train, y_train, x_eval, y_eval = relabelled_splits(self._x, classes, self._train_idx, self._eval_idx)
        return Task(family=self.name, seed=int(seed), split=split,
                    x_train=x_train, y_train=y_train, x_eval=x_eval, y_eval=y_eval,
                    n_classes=self.n_way, model_factory=self.model_factory, patterns=self.patterns,
                    info={"classes": [self.class_names[c] for c in classes]})


register_family(TableFamily.name, TableFamily)
