"""One strict config base for every settings dataclass in lohp.

``Config.from_dict`` refuses unknown keys with one line (a typo is never silently
dropped), ``to_dict`` is JSON-able, ``replace`` returns a validated copy (``__post_init__``
runs again). Subclasses are ordinary dataclasses::

    @dataclass
    class MyConfig(Config):
        what = "my"          # how errors name these settings
        steps: int = setting(4, "Steps per run.")

:func:`setting` attaches the help text a field's command-line option shows, so the CLI
derives its options (name, type, default, help) from the dataclass: one place per default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from lohp.errors import LohpError

C = TypeVar("C", bound="Config")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
            cli: bool = True) -> Any:
    """A dataclass field with the help text of its command-line option.

    ``factory`` is ``default_factory``; ``cli=False`` keeps a field off the command line
    (still reachable through ``--set KEY=VALUE`` where a command offers it)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help, "cli": cli})


def setting_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def setting_default(f: dataclasses.Field) -> Any:
    """The field's default value (its factory called), or ``dataclasses.MISSING`` when required."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _refuse_unknown(cls: Any, keys: Any, what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(keys) - known
    if unknown:
        raise LohpError(f"unknown {what} setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")


def config_from_dict(cls: type, d: dict[str, Any], what: str) -> Any:
    """Build the dataclass ``cls`` from ``d``, refusing unknown keys with one line."""
    _refuse_unknown(cls, d, what)
    return cls(**d)


class Config:
    """Mixin for settings dataclasses: strict ``from_dict``, ``to_dict``, ``replace``."""

    what: str = "config"

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        return config_from_dict(cls, dict(d), cls.what)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: C, **changes: Any) -> C:
        _refuse_unknown(self, changes, self.what)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def parse_setting(cls: type, key: str, text: str, flag: str = "--set") -> Any:
    """The text of ``KEY=VALUE`` converted to the type the settings dataclass ``cls`` declares
    for ``key``: a str field keeps the text as typed (never split or read as a number), an
    int or float field must parse as one, a bool is true/false, a list or tuple of scalars is
    comma-separated, an optional field also takes ``none``. A bad value is one line."""
    hints = typing.get_type_hints(cls)
    tp = hints[key]
    args = typing.get_args(tp)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else tp
    text = text.strip()
    if optional and text.lower() == "none":
        return None
    origin, items = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple) and items and items[0] in (bool, int, float, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        values = [parse_setting_scalar(items[0], p, f"{flag} {key}") for p in parts]
        return values if origin is list else tuple(values)
    if tp in (bool, int, float, str):
        return parse_setting_scalar(tp, text, f"{flag} {key}")
    return dataclasses.MISSING  # no declared scalar form: the caller's generic parsing


def parse_setting_scalar(tp: type, text: str, what: str) -> Any:
    if tp is str:
        return text
    if tp is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise LohpError(f"{what} takes true or false (got {text!r})")
    try:
        return int(text) if tp is int else float(text)
    except ValueError:
        kind = "a whole number" if tp is int else "a number"
        raise LohpError(f"{what} takes {kind} (got {text!r})") from None
