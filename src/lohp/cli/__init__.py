"""The ``lohp`` command: thin. Parse, call the library, print.

User errors (:class:`lohp.LohpError`) become one line on stderr and exit status 2. The
commands live in ``core`` (prepare, inspect, generate, evaluate), ``train``, ``bench``
(and demo) and ``data``; ``common`` holds what they share."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from rich.markup import escape

from lohp.cli import bench, common, core, data, train  # noqa: F401  (importing them registers the commands)
from lohp.cli.common import app, console, err_console, parse_family_options, parse_hparams  # noqa: F401
from lohp.errors import LohpError

__all__ = ["app", "console", "err_console", "main", "parse_family_options", "parse_hparams"]


# --------------------------------------------------------------------------- entry point
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
    common._CURRENT_ARGV = list(argv) if argv is not None else sys.argv[1:]
    try:
        app(args=argv, prog_name="lohp")
    except LohpError as exc:
        # escaped: messages hold install commands such as pip install -e '.[images]'
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(LohpError.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to resume where it stopped")
        sys.exit(130)

