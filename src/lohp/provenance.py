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

_COMMAND: str | None = None


def set_command(argv: list[str] | None) -> None:
    """Record the running ``lohp`` command (``argv`` without the program name; None: no
    command is running)."""
    global _COMMAND
    _COMMAND = None if argv is None else shlex.join(["lohp", *map(str, argv)])


def command() -> str | None:
    return _COMMAND


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
    return {"command": _COMMAND, "cpu": cpu_model(), "cpus": os.cpu_count(), "system": platform.platform(),
            "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "lohp": lohp_version(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
