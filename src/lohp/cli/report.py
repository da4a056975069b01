"""lohp report: one self-contained HTML page for a result JSON or a policy folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lohp.cli.common import app, console
from lohp.report import write_report


@app.command()
def report(
    path: Path = typer.Argument(..., help="A result JSON (lohp bench ... --json, lohp evaluate --json, "
                                          "runs/demo/demo.json) or a policy folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="The page (default: PATH with .html, beside it)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
) -> None:
    """One self-contained HTML page (tables, figures, command, machine, date) that opens in any browser offline."""

    page = write_report(path, out, overwrite)
    console.print(f"wrote {page} (self-contained: open it in any browser, or send it)")
