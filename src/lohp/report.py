"""``lohp report``: one self-contained HTML page for a result or a policy folder.

The page holds the tables (formatted as the terminal prints them), the figures (drawn with
matplotlib from the JSON and inlined as base64 PNG, never copied from files that may be
missing or stale), the command, the machine, the thread count and the date. It has no
script, no stylesheet or image from anywhere else (a Content-Security-Policy forbids every
other source), so it opens in any browser without a server or a network. Every label,
name and path is HTML-escaped.

What a page can be made from:

- the ``--json`` result of a benchmark (``lohp bench NAME``), of ``lohp evaluate`` or the
  ``demo.json`` of ``lohp demo`` (:func:`result_page`);
- a policy folder written by ``lohp train`` (:func:`policy_page`): what it generates, how
  it was trained, its training log and curves, the ``lohp evaluate --json`` results saved
  in it, and how to load it.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from lohp.bench import evaluate as bench_evaluate
from lohp.bench import runner
from lohp.bench.harness import format_cell, spread_text
from lohp.bench.runner import SCENARIO_COLUMNS, Columns, TableSpec
from lohp.errors import LohpError
from lohp.io import atomic_write_bytes, check_output_file, ensure_writable_dir, read_json
from lohp.layout import ParamLayout
from lohp.plotting import figure_bytes
from lohp.provenance import lohp_version
from lohp.training.logs import LOG, curves_figure, log_rows

PAGE_SUFFIX = ".html"
POLICY_META = "policy.json"
STORE_MANIFEST = "manifest.json"
# Only inline styles and data: images; no script, no request to anywhere.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 72em; padding: 0 1.2em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.55em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.source, footer { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 0.9em; }
caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #f3f3f3; }
table.results td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.results td:first-child { text-align: left; }
table.kv th { text-align: left; white-space: nowrap; }
table.kv td { word-break: break-word; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
code, pre { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
p.note { color: #444; font-size: 0.9em; }
details summary { cursor: pointer; margin: 0.6em 0; }
"""


def esc(value: Any) -> str:
    """``value`` as HTML text (``&``, ``<``, ``>``, and both quotes escaped)."""
    return html.escape(str(value), quote=True)


def page_path(path: str | Path) -> Path:
    """The default page of ``path``: ``runs/digits.json`` -> ``runs/digits.html``, a policy
    folder ``runs/policy`` -> ``runs/policy.html`` (beside it, not inside it)."""
    path = Path(path)
    if path.is_dir():
        path = path if path.name not in ("", ".", "..") else path.resolve()
        return path.parent / f"{path.name}{PAGE_SUFFIX}"
    if path.suffix.lower() == PAGE_SUFFIX:
        return path.with_name(path.name + PAGE_SUFFIX)
    return path.with_suffix(PAGE_SUFFIX)


# --------------------------------------------------------------------------- HTML pieces
def results_table(title: str, rows: Sequence[dict[str, Any]], columns: Columns, table_id: str) -> str:
    """A results table: the columns' headers, each cell as the terminal table prints it."""
    head = "".join(f"<th>{esc(header)}</th>" for _, header, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(format_cell(r, key, fmt))}</td>" for key, _, fmt in columns)
                   + "</tr>" for r in rows)
    return (f'<table class="results" id="{esc(table_id)}"><caption>{esc(title)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def kv_table(title: str, items: Iterable[tuple[str, Any]], table_id: str) -> str:
    """A two-column table of names and values (dicts and lists as compact JSON)."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_text(v))}</td></tr>" for k, v in items)
    return f'<table class="kv" id="{esc(table_id)}"><caption>{esc(title)}</caption><tbody>{body}</tbody></table>'


def figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _number(text: str | None) -> int | float | None:
    """A value of log.csv (None when empty)."""
    if text in (None, ""):
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(", ", ": "), default=str)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def document(title: str, source: str, sections: Sequence[str]) -> str:
    """The whole page: ``sections`` (HTML) under a title, the source and a footer."""
    made = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n<p class=\"source\">from <code>{esc(source)}</code></p>\n"
            + "\n".join(sections)
            + f"\n<footer><p>Made by lohp report (lohp {esc(lohp_version())}) on {esc(made)}. "
              "Self-contained: no script, no network; the figures are drawn from the data above.</p></footer>\n"
              "</body></html>\n")


def run_section(prov: dict[str, Any] | None, threads: Any = None, seconds: Any = None,
                fallback_date: str | None = None, extra: Sequence[tuple[str, Any]] = ()) -> str:
    """Where the numbers come from: command, machine, threads, versions, date, duration."""
    prov = prov or {}
    missing = "not recorded (written by an older lohp, or from Python)"
    command = prov.get("command") or ("not a lohp command (from Python)" if prov else missing)
    machine = (f"{prov['cpu']}, {prov.get('cpus')} logical CPUs, {prov.get('system', '')}".rstrip(", ")
               if prov.get("cpu") else missing)
    date = prov.get("date") or (f"{fallback_date} (file date)" if fallback_date else missing)
    items = [("command", command), ("machine", machine),
             ("torch threads", threads if threads is not None else prov.get("threads", missing))]
    items += list(extra)
    if prov.get("torch"):
        items.append(("versions", f"lohp {prov.get('lohp')}, torch {prov.get('torch')}, "
                                  f"Python {prov.get('python')}"))
    items.append(("date", date))
    if isinstance(seconds, (int, float)):
        items.append(("duration", f"{seconds:.0f} s"))
    return "<section id=\"run\"><h2>Run</h2>" + kv_table("how these numbers were made", items, "run-table") \
        + "</section>"


def _file_date(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- results
def _benchmark_of(result: dict[str, Any]) -> runner.Benchmark | None:
    name = str(result.get("benchmark"))
    for candidate in (name, name.split("-")[0]):  # prepare-ray: bench prepare's Ray result
        if candidate in runner.BENCHMARKS:
            return runner.BENCHMARKS[candidate]
    return None


def _generic_columns(rows: Sequence[dict[str, Any]]) -> Columns:
    keys = set().union(*(r.keys() for r in rows)) if rows else set()
    return [c for c in SCENARIO_COLUMNS if c[0] in keys]


def _figures(plots: Any, result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The result's figures, drawn by its benchmark's ``plots`` into a temporary folder and
    inlined; (figures, notes about figures that could not be drawn)."""
    if plots is None:
        return [], []
    with tempfile.TemporaryDirectory(prefix="lohp-report-") as tmp:
        try:
            paths = plots(result, Path(tmp))
        except (KeyError, TypeError, ValueError, IndexError, LohpError) as exc:
            return [], [f"the figures could not be drawn from this result ({type(exc).__name__}: {exc}); "
                        "it was probably written by another lohp version"]
        return [figure(Path(p).read_bytes(), Path(p).stem.replace("_", " ")) for p in paths], []


def result_tables(result: dict[str, Any]) -> tuple[str, list[TableSpec], Any, list[str]]:
    """(title, tables, plots function, notes) of a result JSON."""
    rows = result["rows"]
    name = str(result["benchmark"])
    if name == "evaluate":
        title = f"lohp evaluate: {result.get('policy', '?')}"
        what = f"{result.get('policy', 'the policy')} on {result.get('heldout_tasks', '?')} held-out " \
               f"{result.get('family', '')} tasks"
        return title, [(what, rows, SCENARIO_COLUMNS)], bench_evaluate.plots, []
    bench = _benchmark_of(result)
    if bench is None:
        return (f"lohp bench {name}", [(f"{name}: rows", rows, _generic_columns(rows))], None,
                [f"the benchmark {name!r} is not registered in this lohp (a plugin that is not installed?): "
                 "its rows are shown with the shared columns, without figures"])
    try:
        tables = bench.tables(result)
        notes = list(bench.notes(result)) if bench.notes is not None else []
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise LohpError(f"this result does not look like one of lohp bench {bench.name} "
                        f"({type(exc).__name__}: {exc}); was it written by another lohp version?") from None
    command = str((result.get("provenance") or {}).get("command") or "")
    title = "lohp demo" if command.startswith("lohp demo") else f"lohp bench {bench.name}"
    return title, tables, bench.plots, notes


def result_page(result: dict[str, Any], source: str | Path) -> str:
    """The page of a result (a benchmark's, ``lohp evaluate``'s or ``lohp demo``'s JSON)."""
    source = Path(source)
    title, tables, plots, notes = result_tables(result)
    sections = [run_section(result.get("provenance"), result.get("threads"), result.get("seconds"),
                            _file_date(source) if source.exists() else None)]
    body = [results_table(t, rows, cols, f"table-{i + 1}") for i, (t, rows, cols) in enumerate(tables)]
    all_rows = [r for _, rows, _ in tables for r in rows]
    if any("accuracy" in c[0] for _, _, cols in tables for c in cols):
        body.append(f'<p class="note">accuracy: mean ± sample standard deviation over seeds; "(1 seed)": a '
                    f"single seed, so no spread was measured. Here: {esc(spread_text(all_rows))}. A dash: not "
                    "measured for that row.</p>")
    body += [f'<p class="note">{esc(n)}</p>' for n in notes]
    sections.append("<section id=\"results\"><h2>Results</h2>" + "\n".join(body) + "</section>")
    figures, figure_notes = _figures(plots, result)
    if figures or figure_notes:
        sections.append("<section id=\"figures\"><h2>Figures</h2>" + "\n".join(figures)
                        + "".join(f'<p class="note">{esc(n)}</p>' for n in figure_notes) + "</section>")
    settings = [(k, v) for k, v in sorted((result.get("config") or {}).items())]
    other = [(k, v) for k, v in result.items()
             if k not in ("rows", "config", "provenance", "benchmark") and not isinstance(v, (dict, list))]
    sections.append("<section id=\"settings\"><h2>Settings</h2><details open><summary>the settings of the run "
                    "and the result's other fields</summary>"
                    + kv_table("settings", settings, "settings-table")
                    + kv_table("other fields", other, "fields-table") + "</details></section>")
    return document(title, str(source), sections)


# --------------------------------------------------------------------------- policy folders
def _read_policy(folder: Path) -> dict[str, Any]:
    path = folder / POLICY_META
    meta = read_json(path, "policy description")
    if not isinstance(meta, dict) or "layout" not in meta or "method" not in meta:
        raise LohpError(f"{path} is not a lohp policy description; lohp report takes a policy folder written by "
                        "lohp train")
    if "checksum" in meta:  # sealed: an edited description is refused, as everywhere in lohp
        meta = read_json(path, "policy description", sealed=True)
    return meta


def _evaluations(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The ``lohp evaluate --json`` results saved in the folder."""
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and obj.get("benchmark") == "evaluate" and isinstance(obj.get("rows"), list):
            out.append((path, obj))
    return out


def policy_page(folder: str | Path) -> str:
    """The page of a policy folder: what it generates, how it was trained, its training log
    and curves, its saved evaluations, how to load it."""
    folder = Path(folder)
    meta = _read_policy(folder)
    rows = log_rows(folder, int(meta.get("iteration", 0)))
    last = rows[-1] if rows else {}
    prov = meta.get("provenance")
    fallback = folder / "policy.safetensors"
    fallback = fallback if fallback.exists() else folder / POLICY_META
    processes = [("processes", prov["processes"])] if prov and prov.get("processes", 1) > 1 else []
    sections = [run_section(prov, None, float(last["seconds"]) if last.get("seconds") else None,
                            _file_date(fallback), processes)]

    try:
        size = ParamLayout.from_dict(meta["layout"]).size
    except (KeyError, TypeError, ValueError):
        size = None
    structure = meta.get("structure") or {}
    condition = meta.get("condition") or {}
    what = [("family", meta.get("family")), ("family options", meta.get("family_config")),
            ("structure", structure.get("kind")), ("generated values d", size),
            ("method", meta.get("method")), ("k (offline steps per policy step)", meta.get("k")),
            ("policy steps N", meta.get("n_steps")), ("Stage I steps T", meta.get("total_steps")),
            ("condition", f"{condition.get('kind', 'class means')}, {condition.get('points', 1)} point(s) per class"),
            ("starting weights s0", f"{meta.get('init')} (sigma {meta.get('init_sigma')})")]
    tc = meta.get("train_config") or {}
    accuracy = [r for r in rows if r.get("heldout_accuracy") not in (None, "")]
    trained = [("store", meta.get("store")), ("store optimizers", meta.get("store_optimizers")),
               ("trajectories", meta.get("trajectories")), ("iterations", meta.get("iteration")),
               ("training seconds", _number(last.get("train_seconds"))), ("time limit (s)", tc.get("time_limit")),
               ("batch size", tc.get("batch_size")), ("learning rate", tc.get("lr")),
               ("policy parameters", meta.get("parameters")),
               ("last held-out accuracy", _number(accuracy[-1]["heldout_accuracy"]) if accuracy else None)]
    body = [kv_table("what it generates", what, "policy-what"), kv_table("how it was trained", trained, "policy-trained")]
    if accuracy:
        curve = [{"iteration": int(r["iteration"]), "train_seconds": float(r.get("train_seconds") or r["seconds"]),
                  "heldout_accuracy": float(r["heldout_accuracy"])} for r in accuracy]
        body.append(results_table(f"held-out accuracy during training ({tc.get('eval_tasks', '?')} tasks each)",
                                  curve, [("iteration", "iteration", ""), ("train_seconds", "training s", ".1f"),
                                          ("heldout_accuracy", "held-out accuracy", ".4f")], "policy-curve"))
    if last:
        body.append(kv_table(f"the log's last row (iteration {last.get('iteration')})",
                             [(k, _number(v)) for k, v in last.items() if v not in (None, "")], "policy-last"))
    else:
        body.append(f'<p class="note">no {LOG} rows yet: training has not logged an iteration</p>')
    sections.append("<section id=\"policy\"><h2>Policy</h2>" + "\n".join(body) + "</section>")

    figures = []
    fig = curves_figure(rows, f"{meta.get('method')} (k={meta.get('k')}): training log", columns=3)
    if fig is not None:
        figures.append(figure(figure_bytes(fig, dpi=90), "loss, diagnostics and held-out accuracy against iteration "
                                                         f"({LOG})"))
    evaluations = []
    for i, (path, result) in enumerate(_evaluations(folder)):
        title, tables, plots, _ = result_tables(result)
        evaluations += [results_table(f"{path.name}: {t}", r, c, f"evaluation-{i + 1}-{j + 1}")
                        for j, (t, r, c) in enumerate(tables)]
        figures += _figures(plots, result)[0]
    if evaluations:
        sections.append("<section id=\"evaluations\"><h2>Evaluations saved in the folder</h2>"
                        + "\n".join(evaluations) + '<p class="note">accuracy: mean ± sample standard deviation '
                        'over seeds; "(1 seed)": no spread measured.</p></section>')
    if figures:
        sections.append("<section id=\"figures\"><h2>Figures</h2>" + "\n".join(figures) + "</section>")
    use = (f"from lohp import api\ngen = api.load_policy({str(folder)!r})\n"
           "task = gen.family().sample(0, \"heldout\")      # or any task of the family\n"
           "weights = api.generate(gen, task)              # no task gradient\n\n"
           f"# or: lohp generate --policy {folder} --out weights.safetensors\n"
           f"#     lohp evaluate --policy {folder} --json {folder}/evaluation.json")
    sections.append(f"<section id=\"use\"><h2>How to use it</h2><pre><code>{esc(use)}</code></pre></section>")
    settings = [(f"{group}.{k}", v) for group in ("policy_config", "loss_config", "train_config")
                for k, v in sorted((meta.get(group) or {}).items())]
    sections.append("<section id=\"settings\"><h2>Settings</h2><details open><summary>policy, loss and training "
                    "settings</summary>" + kv_table("settings", settings, "settings-table") + "</details></section>")
    return document(f"policy {folder.name or folder.resolve().name}: {meta.get('method')} for {meta.get('family')}",
                    str(folder), sections)


# --------------------------------------------------------------------------- entry points
def load_result(path: Path) -> dict[str, Any]:
    """A result JSON, or one line saying what ``lohp report`` takes."""
    takes = ("lohp report takes the --json result of lohp bench, lohp evaluate or lohp demo (runs/demo/demo.json), "
             "or a policy folder")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LohpError(f"{path} is not JSON; {takes}") from None
    except OSError as exc:
        raise LohpError(f"cannot read {path} ({exc.strerror or exc})") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("rows"), list) and obj.get("benchmark")):
        raise LohpError(f"{path} is not a lohp result (it has no 'benchmark' and 'rows'); {takes}")
    return obj


def build(path: str | Path) -> str:
    """The page of ``path`` (a result JSON or a policy folder) as HTML text."""
    path = Path(path)
    if not path.exists():
        raise LohpError(f"{path} does not exist; lohp report takes a result JSON (lohp bench ... --json, lohp "
                        "evaluate --json, runs/demo/demo.json) or a policy folder")
    if path.is_dir():
        if (path / POLICY_META).exists():
            return policy_page(path)
        if (path / STORE_MANIFEST).exists():
            raise LohpError(f"{path} is a trajectory store; lohp report takes a result JSON or a policy folder "
                            f"(lohp inspect {path} summarises a store)")
        raise LohpError(f"{path} is not a policy folder (no {POLICY_META}); lohp report takes a result JSON or a "
                        "policy folder written by lohp train")
    return result_page(load_result(path), path)


def check_page(out: Path, overwrite: bool, source: Path | None = None) -> Path:
    """Refuse (one line) a page path that is a folder or special file, the input itself, or
    an existing file without ``overwrite``."""
    out = Path(out)
    check_output_file(out)
    if source is not None and out.resolve() == Path(source).resolve():
        raise LohpError(f"--out {out} is the input itself; choose another file")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise LohpError(f"{out} already exists; pass --overwrite to replace it, or choose another file with --out")
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    return out


def write_report(path: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the page of ``path`` to ``out`` (default :func:`page_path`); returns ``out``."""
    path = Path(path)
    out = check_page(Path(out) if out is not None else page_path(path), overwrite, path)
    text = build(path)
    atomic_write_bytes(out, text.encode("utf-8"))
    return out


def write_result_page(result: dict[str, Any], source: str | Path, out: str | Path | None = None) -> Path:
    """The page of an in-memory ``result`` (just written to ``source``), beside it by
    default; replaced when it exists (it belongs to that result)."""
    out = Path(out) if out is not None else page_path(source)
    atomic_write_bytes(check_output_file(out), result_page(result, source).encode("utf-8"))
    return out
