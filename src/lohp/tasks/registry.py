"""The registry of task families by name: :func:`register_family` (the built-in families
register themselves through it, each at the end of its own module, as a user's family
does), and the ``lohp.families`` entry-point group (a package declaring
``[project.entry-points."lohp.families"] myfam = "mypkg:MyFamily"`` works in every ``lohp``
command of a fresh process)."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from importlib.metadata import entry_points
from typing import Any, Callable

from lohp.config import parse_setting_scalar
from lohp.errors import LohpError
from lohp.tasks.base import TaskFamily

ENTRY_POINT_GROUP = "lohp.families"

# The registry (read it through family_factory / family_names; add with register_family).
FAMILIES: dict[str, Callable[..., TaskFamily]] = {}
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


def family_options(factory: Callable[..., Any]) -> list[str] | None:
    """The option names ``factory`` takes: its ``Options`` dataclass's fields, else the
    keyword parameters of its signature; None when they cannot be told."""
    options = getattr(factory, "Options", None)
    if options is not None and dataclasses.is_dataclass(options):
        return sorted(f.name for f in dataclasses.fields(options))
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return sorted(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def make_family(name: str, **config: Any) -> TaskFamily:
    """Build a registered task family by name, e.g. ``make_family("digits", n_way=5)``."""
    factory = family_factory(name)
    config = _typed_options(name, factory, config)
    try:
        return factory(**config)
    except TypeError as exc:
        known = family_options(factory)
        hint = "" if known is None else f"; known options: {', '.join(known) or '(none)'}"
        raise LohpError(f"bad configuration for family {name!r}: {exc}{hint}") from None


def _family_scalar(name: str, key: str, tp: type, text: str) -> Any:
    """One option's text as its dataclass type, in the wording family checks already use."""
    try:
        return parse_setting_scalar(tp, text, key)
    except LohpError:
        kind = {int: "an integer", float: "a number", bool: "true or false"}[tp]
        raise LohpError(f"{name}: {key} must be {kind} (got {text!r})") from None


def _typed_options(name: str, factory: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Text given for a number or a flag of the family's ``Options`` dataclass (from a command
    line) becomes that number or flag, or one line naming the option; a number or a list given
    for a ``str`` option (the command line's generic parsing of ``label=2020`` or
    ``path=a,b.csv``) is turned back into its text."""
    options = getattr(factory, "Options", None)
    if options is None or not dataclasses.is_dataclass(options):
        return config
    try:
        hints = typing.get_type_hints(options)
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave the values as given
        return config
    out = dict(config)
    for key, value in config.items():
        tp = hints.get(key)
        args = typing.get_args(tp)
        if args and type(None) in args:
            rest = [a for a in args if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else tp
        if tp in (int, float, bool) and isinstance(value, str):
            out[key] = _family_scalar(name, key, tp, value)
        elif tp is str and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            out[key] = ",".join(value)
        elif tp is str and isinstance(value, int) and not isinstance(value, bool):
            out[key] = str(value)
    return out


def family_feature_spec(name: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The :meth:`TaskFamily.feature_spec` of the family ``name`` built from ``config`` (what
    a policy records), or None for a family that declares none (it is not built then)."""
    factory = family_factory(name)
    if getattr(factory, "feature_spec", TaskFamily.feature_spec) is TaskFamily.feature_spec:
        return None
    return make_family(name, **config).feature_spec()
