"""Task families by name: built-in ones, :func:`register_family`, and the ``lohp.families``
entry-point group (a package declaring ``[project.entry-points."lohp.families"]
myfam = "mypkg:MyFamily"`` works in every ``lohp`` command of a fresh process)."""

from __future__ import annotations

from typing import Any, Callable

from lohp.errors import LohpError
from lohp.tasks.base import SPLITS, Task, TaskBatch, TaskFamily, accuracy, class_means, cross_entropy
from lohp.tasks.digits import DigitsFamily
from lohp.tasks.images import FashionFeatureFamily, OpenclipartFamily, RotatedFashionFamily, RotatedMnistFamily
from lohp.tasks.image_folder import ImageFolderFamily, TextTableFamily
from lohp.tasks.table import TableFamily
from lohp.tasks.text import FortunesFamily, WordNetFamily

ENTRY_POINT_GROUP = "lohp.families"

# The registry (read it through family_factory / family_names; add with register_family).
FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "digits": DigitsFamily, "openclipart": OpenclipartFamily, "fashion": FashionFeatureFamily,
    "rotated-mnist": RotatedMnistFamily, "rotated-fashion": RotatedFashionFamily,
    "wordnet": WordNetFamily, "fortunes": FortunesFamily, "table": TableFamily,
    "image-folder": ImageFolderFamily, "text-table": TextTableFamily,
}
_entry_points: dict[str, Any] | None = None


def register_family(name: str, factory: Callable[..., TaskFamily], overwrite: bool = False) -> None:
    """Make ``make_family(name, **config)`` (and every lohp command in this process) build
    ``factory(**config)``; stores and policies then record the family by this name."""
    if not name or not isinstance(name, str):
        raise LohpError("a task family needs a non-empty name")
    if not callable(factory):
        raise LohpError(f"the factory of task family {name!r} must be callable (a TaskFamily subclass)")
    if name in FAMILIES and FAMILIES[name] is not factory and not overwrite:
        raise LohpError(f"a task family named {name!r} is already registered; pick another name or pass "
                        "overwrite=True")
    FAMILIES[name] = factory


def _plugins() -> dict[str, Any]:
    """Entry points of installed packages, read once (loaded only when used)."""
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        _entry_points = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _entry_points


def family_names() -> list[str]:
    return sorted(set(FAMILIES) | set(_plugins()))


def family_factory(name: str) -> Callable[..., TaskFamily]:
    if name in FAMILIES:
        return FAMILIES[name]
    ep = _plugins().get(name)
    if ep is None:
        raise LohpError(f"unknown task family {name!r}; choose one of {', '.join(family_names())}, or register "
                        f"yours: lohp.tasks.register_family({name!r}, MyFamily) in Python, or an entry point "
                        f'[project.entry-points."{ENTRY_POINT_GROUP}"] {name} = "mypkg:MyFamily" in your '
                        "package's pyproject.toml (then pip install it)")
    try:
        factory = ep.load()
    except Exception as exc:  # noqa: BLE001 - a plugin can fail in any way
        raise LohpError(f"task family {name!r} comes from entry point {ep.value!r}, which failed to load "
                        f"({type(exc).__name__}: {exc}); fix or reinstall that package") from None
    register_family(name, factory)
    return factory


def make_family(name: str, **config: Any) -> TaskFamily:
    """Build a registered task family by name, e.g. ``make_family("digits", n_way=5)``."""
    factory = family_factory(name)
    try:
        return factory(**config)
    except TypeError as exc:
        raise LohpError(f"bad configuration for family {name!r}: {exc}") from None


__all__ = ["ENTRY_POINT_GROUP", "FAMILIES", "SPLITS", "DigitsFamily", "TableFamily", "Task", "TaskBatch", "TaskFamily", "accuracy",
           "class_means", "cross_entropy", "family_factory", "family_names", "make_family", "register_family"]
