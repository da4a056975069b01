"""The shape of lohp's code, read with ``ast`` (nothing is imported): lines per module, the
longest functions, import cycles between modules, and imports that point *up* the layer
stack of docs/architecture.md (section 'Import direction').

    python scripts/code_shape.py                       # this checkout's src/lohp
    python scripts/code_shape.py --root OLD/src/lohp   # another tree, e.g. a git worktree
    python scripts/code_shape.py --json shape.json     # also write the numbers

tests/test_architecture.py uses :func:`import_graph`, :func:`cycles` and :func:`upward_imports`, so the
layering this prints is the layering the tests enforce.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

# The layer stack, bottom (0) to top; a module may import its own layer or below. The
# longest matching prefix decides a module's layer (optim.runs trains tasks, so it sits
# above optim). Keep in step with docs/architecture.md, section 'Import direction'.
LAYERS: dict[str, int] = {
    "lohp.errors": 0, "lohp.config": 0, "lohp.io": 0, "lohp.extras": 0, "lohp.layout": 0,
    "lohp.condition": 0, "lohp.optim": 0, "lohp.provenance": 0, "lohp.resources": 0,
    "lohp.data": 1, "lohp.lora": 1, "lohp.export": 1, "lohp.plotting": 1,
    "lohp.tasks": 2, "lohp.testing": 2, "lohp.optim.runs": 2,
    "lohp.trajectories": 3, "lohp.flatness": 3,
    "lohp.losses": 4, "lohp.policy": 4,
    "lohp.policy_folder": 5, "lohp.training": 5, "lohp.generation": 5, "lohp.l2o": 5,
    "lohp.api": 6, "lohp.bench": 6, "lohp.sklearn": 6, "lohp.inspection": 6, "lohp.report": 6,
    "lohp.cli": 7, "lohp.__main__": 7,
    "lohp": 8,  # the package's __init__ (imports only layer 0, but nothing may import it for more)
}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under the package folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load (the module and, for ``from``, each name)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        here = here[:len(here) - (node.level - 1)]
        base = ".".join(here + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Module-level import edges between the package's modules (importing ``a.b.c`` counts as
    importing ``a.b``'s ``__init__`` too), and every import inside a function as
    ``(module, line, name)``."""
    mods = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    inner = []
    for m, path in mods.items():
        tree = ast.parse(path.read_text())
        pkg = path.name == "__init__.py"
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in imported_names(node, m, pkg):
                    parts = name.split(".")
                    for i in range(2, len(parts) + 1):
                        q = ".".join(parts[:i])
                        if q in mods and q != m and not m.startswith(q + "."):
                            edges[m].add(q)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        inner.append((m, node.lineno, imported_names(node, m, pkg)[0]))
    return edges, inner


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle a depth-first search meets (empty: the graph is acyclic)."""
    state: dict[str, int] = {}
    found = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return found


def layer(module: str, layers: dict[str, int] = LAYERS) -> int | None:
    """The layer of ``module`` by its longest listed prefix (None: not listed)."""
    parts = module.split(".")
    if len(parts) == 1:  # the package itself
        return layers.get(module)
    for i in range(len(parts), 1, -1):
        key = ".".join(parts[:i])
        if key in layers:
            return layers[key]
    return None


def upward_imports(edges: dict[str, set[str]], layers: dict[str, int] = LAYERS) -> list[str]:
    """``a -> b`` for every import from a lower layer into a higher one, and for modules no
    layer lists (a new top-level module must be placed)."""
    out = []
    for m in sorted(edges):
        if layer(m, layers) is None:
            out.append(f"{m}: in no layer")
            continue
        out += [f"{m} (layer {layer(m, layers)}) -> {n} (layer {layer(n, layers)})" for n in sorted(edges[m])
                if layer(n, layers) is not None and layer(n, layers) > layer(m, layers)]
    return out


def functions(root: Path) -> list[tuple[int, str]]:
    """``(lines, module:qualified name)`` of every function and method."""
    out = []
    for m, path in modules(root).items():
        tree = ast.parse(path.read_text())

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        out.append((child.end_lineno - child.lineno + 1, f"{m}:{name}"))
                    walk(child, name + ".")

        walk(tree, "")
    return sorted(out, reverse=True)


def shape(root: Path, top: int = 12) -> dict:
    mods = modules(root)
    lines = {m: len(p.read_text().splitlines()) for m, p in mods.items()}
    edges, _ = import_graph(root)
    by_package: dict[str, int] = {}
    for m, n in lines.items():
        key = ".".join(m.split(".")[:2])
        by_package[key] = by_package.get(key, 0) + n
    return {"root": str(root), "modules": len(mods), "lines": sum(lines.values()),
            "lines_by_package": dict(sorted(by_package.items(), key=lambda kv: -kv[1])),
            "largest_modules": sorted(((n, m) for m, n in lines.items()), reverse=True)[:top],
            "longest_functions": functions(root)[:top],
            "cycles": cycles(edges), "upward_imports": upward_imports(edges),
            "import_edges": sum(len(v) for v in edges.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "lohp")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    s = shape(args.root, args.top)
    print(f"{s['root']}: {s['modules']} modules, {s['lines']} lines, {s['import_edges']} import edges")
    print("lines by package: " + ", ".join(f"{k} {v}" for k, v in s["lines_by_package"].items()))
    print("largest modules:")
    for n, m in s["largest_modules"]:
        print(f"  {n:5d}  {m}")
    print("longest functions:")
    for n, f in s["longest_functions"]:
        print(f"  {n:5d}  {f}")
    print(f"import cycles: {len(s['cycles'])}" + "".join(f"\n  {' -> '.join(c)}" for c in s["cycles"]))
    print(f"upward imports: {len(s['upward_imports'])}" + "".join(f"\n  {u}" for u in s["upward_imports"]))
    if args.json:
        args.json.write_text(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
