"""Command-line options derived from settings dataclasses, so a default lives in one place.

``@with_options(Group("train_options", TrainConfig))`` adds one typer option per field of
``TrainConfig`` (name ``--field-name``, the field's type, its default, the help text given
with :func:`lohp.config.setting`) to the decorated command, and passes the values to it
as one dict keyword ``train_options``. A group with ``unset=True`` defaults every option
to "not given" (``None``) and passes only the given ones, for settings whose defaults
another layer decides (a method's preset, a benchmark's ``--quick`` settings).

Fields typer cannot show as an option (dicts, nested configs) and fields declared with
``setting(..., cli=False)`` are left out; commands reach them with ``--set KEY=VALUE``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

import typer

from lohp.config import setting_default, setting_help
from lohp.errors import LohpError

SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class Group:
    """One settings dataclass offered as options; the command receives ``name=dict``."""

    name: str
    cls: type
    include: tuple[str, ...] | None = None   # only these fields (default: every CLI field)
    exclude: tuple[str, ...] = ()
    unset: bool | tuple[str, ...] = False     # True or field names: default None, passed only when given
    unset_help: str = "(default: {default})"  # how an unset option's help names the default in effect


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def _list_parser(item: type, flag: str, container: type = list) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            return container(item(p) for p in parts)
        except ValueError:
            raise LohpError(f"{flag} takes a comma-separated list of {item.__name__} (got {text!r})") from None
    return parse


def _sequence_item(tp: Any) -> tuple[type, type] | None:
    """``(item type, container)`` of ``list[T]`` / ``tuple[T, ...]`` with a scalar T, else None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and len(args) == 1 and args[0] in SCALARS:
        return args[0], list
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in SCALARS:
        return args[0], tuple
    return None


def is_seed(name: str) -> bool:
    """Settings that are seeds or seed offsets: whole numbers >= 0 (numpy refuses others)."""
    return name.endswith("seed") or name == "task_start"


def check_seed(value: Any, flag: str) -> Any:
    """``value`` when it is a whole number >= 0 (or None), else one line naming ``flag``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise LohpError(f"{flag} takes a whole number >= 0 (got {value})")
    return value


def _option(f: dataclasses.Field, tp: Any, unset: bool, unset_help: str) -> tuple[Any, Any, Callable[[Any], Any]] | None:
    """``(annotation, typer.Option, convert)`` for one field, or None when it has no option form."""
    flag = "--" + f.name.replace("_", "-")
    base, optional = _unwrap_optional(tp)
    default = setting_default(f)
    default = None if default is dataclasses.MISSING else default
    convert: Callable[[Any], Any] = lambda v: v  # noqa: E731
    sequence = _sequence_item(base)
    if sequence is not None:
        item, container = sequence
        shown = ",".join(str(x) for x in default) if isinstance(default, (list, tuple)) else default
        convert = _list_parser(item, flag, container)
        annotation: Any = Optional[str]
        default = shown
    elif base in SCALARS:
        annotation = Optional[base] if (optional or unset) else base
        if base is int and is_seed(f.name):
            convert = functools.partial(check_seed, flag=flag)
    else:
        return None
    help_text = setting_help(f)
    if unset:
        if default is not None:
            help_text = f"{help_text} {unset_help.format(default=default)}".strip()
        default = None
    return annotation, typer.Option(default, help=help_text, show_default=not unset), convert


def with_options(*groups: Group) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command: add each group's fields as options (see the module doc)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func)
        group_names = {g.name for g in groups}
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(func).parameters.values() if p.name not in group_names]
        taken = {p.name for p in own}
        generated: list[inspect.Parameter] = []
        owners: dict[str, tuple[Group, str, Callable[[Any], Any], bool]] = {}
        for g in groups:
            field_hints = typing.get_type_hints(g.cls)
            for f in dataclasses.fields(g.cls):
                if (g.include is not None and f.name not in g.include) or f.name in g.exclude:
                    continue
                if g.include is None and not f.metadata.get("cli", True):
                    continue
                unset = g.unset is True or (isinstance(g.unset, tuple) and f.name in g.unset)
                made = _option(f, field_hints[f.name], unset, g.unset_help)
                if made is None:
                    continue
                if f.name in taken:  # a programming error: two groups (or the command) claim one option
                    raise TypeError(f"option --{f.name} of {func.__name__} comes from two places")
                taken.add(f.name)
                annotation, option, convert = made
                generated.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                                   annotation=annotation))
                owners[f.name] = (g, f.name, convert, unset)

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            given: dict[str, dict[str, Any]] = {g.name: {} for g in groups}
            for name, (g, field_name, convert, unset) in owners.items():
                value = kwargs.pop(name)
                if value is None and unset:
                    continue
                given[g.name][field_name] = convert(value) if value is not None else None
            return func(**kwargs, **given)

        params = own + generated
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


