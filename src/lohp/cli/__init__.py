"""The ``lohp`` command: thin. Parse, call the library, print.

User errors (:class:`lohp.LohpError`) become one line on stderr and exit status 2. The
commands live in ``core`` (prepare, inspect, generate, evaluate), ``train``, ``bench``
(and demo), ``report`` and ``data``; ``common`` holds what they share."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from typing import Any

import typer
from rich.markup import escape

from lohp import provenance
from lohp.cli import bench, common, core, data, report, train  # noqa: F401  (importing them registers the commands)
from lohp.cli.common import app, console, err_console, parse_family_options, parse_hparams  # noqa: F401
from lohp.errors import LohpError

__all__ = ["app", "console", "err_console", "main", "parse_family_options", "parse_hparams"]


# --------------------------------------------------------------------------- entry point
def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, other click errors, aborts) of the click typer runs on: recent typer
    vendors click as ``typer._click``, older typer uses ``click`` itself."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            continue
    aborts = {typer.Abort, *(m.Abort for m in mods if hasattr(m, "Abort"))}
    return (tuple(m.UsageError for m in mods), tuple(m.ClickException for m in mods), tuple(aborts))


USAGE_ERRORS, CLICK_ERRORS, ABORTS = _click_errors()


def _on_signal(signum: int, frame: Any) -> None:
    """Ctrl-C / SIGTERM: unwind (finally blocks close logs; files are written atomically, so
    nothing half-written stays), say how to resume, exit 130 / 143. Click would otherwise
    turn Ctrl-C into a bare "Aborted"."""

    signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C stops at once
    err_console.print("interrupted; re-run the same command to resume where it stopped "
                      "(finished shards, checkpoints and policies are kept)")
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _on_signal)
    provenance.set_command(list(argv) if argv is not None else sys.argv[1:])  # recorded in results; --nproc re-runs it
    try:
        _run(argv)
    finally:
        provenance.set_command(None)


def _run(argv: list[str] | None) -> None:
    try:
        # not standalone: click's usage errors (a bad integer, an unknown option) reach us and
        # become one line like every other refusal, instead of typer's boxed panel
        code = app(args=argv, prog_name="lohp", standalone_mode=False)
    except USAGE_ERRORS as exc:
        where = f"{exc.ctx.command_path} --help" if exc.ctx is not None else "lohp --help"
        what = " ".join(exc.format_message().split())
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group without a command: its help (printed), exit 2
            if what:
                err_console.print(escape(exc.format_message()), highlight=False)
            sys.exit(exc.exit_code)
        err_console.print(f"[bold red]error:[/] {escape(what)} (see {where})", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except CLICK_ERRORS as exc:
        err_console.print(f"[bold red]error:[/] {escape(' '.join(exc.format_message().split()))}",
                          highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except ABORTS:
        err_console.print("aborted")
        sys.exit(1)
    except LohpError as exc:
        # escaped: messages hold install commands such as pip install -e '.[images]'
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(LohpError.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to resume where it stopped")
        sys.exit(130)
    if isinstance(code, int) and code != 0:  # --help and ctx.exit(n) in non-standalone mode
        sys.exit(code)

