"""The Python examples of docs/architecture.md ('Extending lohp') run as written: every
block, in order, in one fresh process (the blocks build on each other and register into
lohp's registries, so they stay out of the test process), in an empty working folder. The
entry-point plugin block names a package that is only an illustration and is skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs/architecture.md"
ILLUSTRATIONS = ("lohp_blobs",)  # a plugin package the page describes, not one that exists


def _blocks() -> list[str]:
    return [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
            if not any(name in b for name in ILLUSTRATIONS)]


def test_the_architecture_examples_run(tmp_path):
    blocks = _blocks()
    assert len(blocks) >= 8  # one per registry at least: a page that lost its examples fails here
    script = "\n".join(f"# --- block {i}\nexec(compile({b!r}, 'docs/architecture.md block {i}', 'exec'))"
                       for i, b in enumerate(blocks))
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "LOHP_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr[-3000:]
