"""Where a result or a policy comes from: the command, the machine, torch's thread count, the
date. Written into result JSON (``--json``) and policy folders, shown by ``lohp report``.

The command is the ``lohp`` command line when :func:`set_command` was called (the command
line does, first thing); from Python it is None."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

_ARGV: list[str] | None = None  # set once per command by lohp.cli.main, read by what records or re-runs it


def set_command(argv: list[str] | None) -> None:
    """Record the running ``lohp`` command (``argv`` without the program name; None: no
    command is running)."""
    global _ARGV
    _ARGV = None if argv is None else [str(a) for a in argv]


def command() -> str | None:
    """The running command as a shell line (``lohp ...``), or None."""
    return None if _ARGV is None else shlex.join(["lohp", *_ARGV])


def arguments() -> list[str] | None:
    """The running command's arguments (without ``lohp``), or None (lohp train --nproc re-runs them)."""
    return None if _ARGV is None else list(_ARGV)


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo's model name), else platform's."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def lohp_version() -> str:
    try:
        return version("lohp")
    except PackageNotFoundError:
        return "unknown"


def provenance() -> dict[str, Any]:
    """This process's command, machine (CPU, logical CPUs, system; no host name), torch's
    thread count, versions and the local date and time (ISO 8601 with its UTC offset)."""
    return {"command": command(), "cpu": cpu_model(), "cpus": os.cpu_count(), "system": platform.platform(),
            "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "lohp": lohp_version(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
