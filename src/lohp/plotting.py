"""Matplotlib without a screen: every PNG lohp writes goes through these two calls."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from lohp.io import atomic_write_bytes, check_output_file


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_path(target: str | Path, default_name: str) -> Path:
    """``--plot TARGET``: a folder (existing, or a path without a suffix) receives
    ``default_name``; any other path is the file itself. The one rule every command uses."""
    target = Path(target)
    return target / default_name if (target.is_dir() or target.suffix == "") else target


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """Render in memory, then write like every lohp output (atomically; never over a device,
    FIFO or folder)."""
    path = check_output_file(path)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
