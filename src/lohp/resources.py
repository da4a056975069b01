"""What a request will cost, estimated before any work (depends on ``errors`` only).

A size option typed with a few zeros too many (``--tasks 1000000000``, ``--steps 1e9``)
would otherwise allocate for minutes, or fill the disk, before anything is printed. The
commands estimate the memory and disk a request needs from the sizes it names and refuse,
in one line naming the estimate and what is available, what cannot fit; ``--yes`` runs it
anyway (lohp never prompts: it runs in scripts and batch jobs).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lohp.errors import LohpError


def human(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(nbytes) < 1000 or unit == "PB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} PB"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(path: Path | str) -> int | None:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def check_fits(what: str, need: float, have: int | None, where: str, fix: str, yes: bool = False) -> None:
    """Refuse (one line) a request whose estimate ``need`` exceeds ``have`` (unless ``yes``)."""
    if yes or have is None or need <= have:
        return
    raise LohpError(f"{what} needs about {human(need)} of {where}, and {human(have)} is available; {fix}, "
                    "or pass --yes to run it anyway")
