"""Matplotlib without a screen: every PNG lohp writes goes through these calls, and the
accuracy axes they share."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

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


def figure_bytes(fig: Any, dpi: int = 120, fmt: str = "png") -> bytes:
    """The figure rendered in memory (then closed)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=fmt)
    pyplot().close(fig)
    return buf.getvalue()


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """Render in memory, then write like every lohp output (atomically; never over a device,
    FIFO or folder)."""
    path = check_output_file(path)
    atomic_write_bytes(path, figure_bytes(fig, dpi, path.suffix.lstrip(".").lower() or "png"))


def accuracy_limits(values: Sequence[float], min_span: float = 0.05) -> tuple[float, float]:
    """y-limits of an accuracy axis that hold every value (curves *and* reference lines) with
    a margin, and span at least ``min_span``, so 0.971 vs 0.973 does not fill the figure;
    kept within [0, 1] when the values are."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return 0.0, 1.0
    lo, hi = min(v), max(v)
    span = max(hi - lo, min_span)
    lo, hi = (lo + hi) / 2 - 0.55 * span, (lo + hi) / 2 + 0.55 * span
    if min(v) >= 0 and max(v) <= 1:  # an accuracy: stay within [0, 1], shifting rather than cutting
        if lo < 0:
            lo, hi = 0.0, min(1.0, hi - lo)
        if hi > 1:
            lo, hi = max(0.0, lo - (hi - 1)), 1.0
    return lo, hi

