"""Task families by name."""

from __future__ import annotations

from typing import Any, Callable

from lohp.errors import LohpError
from lohp.tasks.base import SPLITS, Task, TaskBatch, TaskFamily, accuracy, class_means, cross_entropy
from lohp.tasks.digits import DigitsFamily
from lohp.tasks.images import FashionFeatureFamily, OpenclipartFamily, RotatedFashionFamily, RotatedMnistFamily
from lohp.tasks.text import FortunesFamily, WordNetFamily

FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "digits": DigitsFamily, "openclipart": OpenclipartFamily, "fashion": FashionFeatureFamily,
    "rotated-mnist": RotatedMnistFamily, "rotated-fashion": RotatedFashionFamily,
    "wordnet": WordNetFamily, "fortunes": FortunesFamily,
}


def make_family(name: str, **config: Any) -> TaskFamily:
    """Build a registered task family by name, e.g. ``make_family("digits", n_way=5)``."""
    try:
        factory = FAMILIES[name]
    except KeyError:
        raise LohpError(f"unknown task family {name!r}; choose one of {', '.join(sorted(FAMILIES))}") from None
    try:
        return factory(**config)
    except TypeError as exc:
        raise LohpError(f"bad configuration for family {name!r}: {exc}") from None


__all__ = ["FAMILIES", "SPLITS", "DigitsFamily", "Task", "TaskBatch", "TaskFamily", "accuracy",
           "class_means", "cross_entropy", "make_family"]
