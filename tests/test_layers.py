"""The layer stack of docs/architecture.md ('Import direction'), enforced: no module imports
from a layer above its own, and every module has a layer. The graph and the stack come from
scripts/code_shape.py, the tool that measures the code's shape, so what it prints is what
this test checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lohp

ROOT = Path(lohp.__file__).parent
_SPEC = importlib.util.spec_from_file_location("code_shape", Path(__file__).resolve().parents[1] / "scripts" /
                                               "code_shape.py")
shape = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(shape)


def test_no_module_imports_from_a_layer_above_its_own():
    edges, _ = shape.import_graph(ROOT)
    bad = shape.upward_imports(edges)
    assert not bad, ("imports against the layer stack (move the code down, or place a new module in "
                     "scripts/code_shape.py's LAYERS and docs/architecture.md): " + "; ".join(bad))


def test_the_layer_check_sees_an_upward_import_and_an_unplaced_module(tmp_path):
    pkg = tmp_path / "lohp"
    (pkg / "policy").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "policy" / "__init__.py").write_text("")
    (pkg / "policy" / "io.py").write_text("from lohp.training import loop\n")   # layer 4 -> 5
    (pkg / "training").mkdir()
    (pkg / "training" / "__init__.py").write_text("")
    (pkg / "training" / "loop.py").write_text("from lohp.policy import io\n")   # 5 -> 4: fine
    (pkg / "newthing.py").write_text("")
    edges, _ = shape.import_graph(pkg)
    bad = shape.upward_imports(edges)
    assert any(b.startswith("lohp.policy.io (layer 4) -> lohp.training") for b in bad)
    assert "lohp.newthing: in no layer" in bad
    assert not any(b.startswith("lohp.training.loop") for b in bad)
    assert shape.cycles(edges)  # policy.io <-> training.loop
