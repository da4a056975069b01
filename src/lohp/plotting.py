"""Matplotlib without a screen: every PNG lohp writes goes through these two calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
