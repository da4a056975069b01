"""The result row every scenario table shows, and the one spread convention.

A scenario benchmark (digits, transfer, few-shot, domain, lora, l2o, ``lohp evaluate``)
builds its rows as :class:`Row` objects and writes them with :meth:`Row.to_dict`; tables,
plots and ``lohp report`` read the JSON dicts. Keys that only some rows have (the method
and speed issues add more) travel in :attr:`Row.extra` without editing the class::

    row = Row.over_seeds("adam", per_seed_accuracy, steps=32, latency_ms=1.9, lr=0.01)
    row.update({"dataset": "fashion"})      # a field where the key is one, else extra
    json_row = row.to_dict()

Spread: :func:`mean_std` is the mean and the *sample* standard deviation (ddof = 1) over
seeds; one seed has no spread (None in JSON, "1 seed" in tables), never 0.0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from lohp.errors import LohpError


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and *sample* standard deviation (ddof = 1) over seeds: the one spread every
    benchmark reports. One value has no spread (None); no values give NaN, NaN."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


@dataclass
class Row:
    """One row of a scenario table (statistics over seeds).

    Always written: ``method``, ``k``, ``steps``, ``accuracy``, ``accuracy_std``,
    ``accuracy_wide``, ``latency_ms``. Written when set (not None): the other fields.
    ``per_task`` (seed 0's per-task metric, for confidence intervals) is dropped from JSON
    by :func:`public_rows`. Anything else goes in ``extra``, written after the fields."""

    method: str
    accuracy: float
    accuracy_std: float | None = None              # sample std over seeds; None: one seed
    k: int | None = None                           # policy stride (None: not a stepped policy)
    steps: int | None = None                       # gradient or policy steps to the weights
    accuracy_wide: float | None = None             # accuracy from s_0 drawn WIDE times wider
    latency_ms: float | None = None                # median ms to produce the weights
    latency_with_condition_ms: float | None = None  # ... computing the task's condition too
    time_to_accuracy_speedup: float | None = None  # Adam's time to this accuracy / latency with condition
    seeds: list[float] | None = None               # per-seed accuracy (its length: the seed count)
    n_seeds: int | None = None                     # the seed count where ``seeds`` is not kept
    per_task: list[Any] | None = None              # seed 0's per-task metric (not in JSON)
    curves: list[Any] | None = None                # per-seed learning curves [(seconds, accuracy)]
    extra: dict[str, Any] = field(default_factory=dict)

    ALWAYS = ("method", "k", "steps", "accuracy", "accuracy_std", "accuracy_wide", "latency_ms")

    def __post_init__(self) -> None:
        clash = set(self.extra) & _FIELDS
        if clash:
            raise LohpError(f"row extra key(s) {', '.join(sorted(clash))} are Row fields; set the field instead")

    @classmethod
    def over_seeds(cls, method: str, per_seed: Sequence[float], **fields: Any) -> "Row":
        """The row of per-seed accuracies: their mean, sample std (None for one seed) and list;
        ``fields``: more fields by name, any other key into ``extra``."""
        mean, std = mean_std(per_seed)
        row = cls(method, mean, std, seeds=[float(a) for a in per_seed])
        row.update(fields)
        return row

    def update(self, values: dict[str, Any]) -> "Row":
        """Set each key: the field of that name, else an ``extra`` key (like ``dict.update``)."""
        for key, value in values.items():
            if key in _FIELDS:
                setattr(self, key, value)
            elif key == "extra":
                raise LohpError("Row.update sets fields and extra keys, not extra itself")
            else:
                self.extra[key] = value
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """The field or ``extra`` value of ``key`` (``default`` when unset)."""
        value = getattr(self, key) if key in _FIELDS else self.extra.get(key, default)
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        """``row[key]`` reads the row as its JSON dict (KeyError for a key it does not write)."""
        return self.to_dict()[key]

    def to_dict(self) -> dict[str, Any]:
        """The JSON row: the always-written keys, the other fields that are set, then ``extra``."""
        out = {key: getattr(self, key) for key in self.ALWAYS}
        for key in _OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Row":
        """A row read back from JSON (keys that are no field go to ``extra``)."""
        if "method" not in d or "accuracy" not in d:
            raise LohpError(f"a result row needs method and accuracy (got keys {', '.join(d) or 'none'})")
        known = {k: v for k, v in d.items() if k in _FIELDS}
        return cls(**known, extra={k: v for k, v in d.items() if k not in _FIELDS})


_FIELDS = frozenset(f.name for f in dataclasses.fields(Row)) - {"extra"}
_OPTIONAL = tuple(f.name for f in dataclasses.fields(Row) if f.name not in Row.ALWAYS and f.name != "extra")


def public_rows(rows: Iterable[Row | dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for JSON: dicts without the per-task lists (the curves stay: they are the
    learning curves)."""
    return [{k: v for k, v in (r.to_dict() if isinstance(r, Row) else r).items() if k != "per_task"}
            for r in rows]
