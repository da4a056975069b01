"""The model card: ``README.md`` in every policy folder, written with the policy.

It tells a person who receives the folder what the policy generates (family, options,
structure, d), what it learned from (the store, the method, the budget), how good it was on
held-out tasks while it trained (``log.csv``), how it compares with Adam-T and the
closed-form baselines when a ``lohp evaluate --json`` result was saved into the folder
(``evaluate.json`` by convention; the newest evaluate result in the folder counts), and the
three lines of Python that load and use it. ``lohp inspect POLICY`` prints the same text.

The card is a function of the folder's files only (never of how its path was spelled), so
it is the same wherever the folder is copied. Every name that comes from a user (labels,
paths, family options, method names) is shown as a Markdown code span with its control
characters escaped, so nothing in it is interpreted as Markdown, HTML or a terminal escape.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from lohp.errors import LohpError
from lohp.io import atomic_write_bytes, read_json, sha256_file
from lohp.policy.io import META, WEIGHTS
from lohp.training.logs import log_rows

CARD = "README.md"
EVALUATION = "evaluate.json"  # the conventional name; any evaluate result in the folder counts
_STRUCTURES = {"class-rows": "a linear head", "mlp-units": "a one-hidden-layer MLP",
               "lora-dims": "LoRA adapters plus a linear head"}
_CLOSED_FORM = ("adam-cond", "adam-means", "prototype", "prototype-l2", "lda", "linear-probe")


# --------------------------------------------------------------------------- safe Markdown
def safe_text(text: Any) -> str:
    """``text`` with line breaks, control characters and other unprintable characters (a
    terminal escape, a bidirectional override) written as Python escapes."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def code(text: Any, table: bool = False) -> str:
    """``text`` as one Markdown code span (a fence longer than any backtick run inside it);
    ``table``: inside a table cell, where ``|`` must be escaped even in code."""
    s = safe_text(text)
    if not s:
        return '`""`'
    fence = "`" * (max((len(m) for m in re.findall("`+", s)), default=0) + 1)
    pad = " " if s[0] in "` " or s[-1] in "` " else ""
    if table:
        s = s.replace("|", "\\|")
    return f"{fence}{pad}{s}{pad}{fence}"


def _python_block(lines: list[str]) -> list[str]:
    body = "\n".join(lines)
    fence = "`" * max(3, max((len(m) for m in re.findall("`+", body)), default=0) + 1)
    return [f"{fence}python", *lines, fence]


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _option(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# --------------------------------------------------------------------------- what the card reads
def training_accuracy(folder: Path, iteration: int) -> dict[str, Any] | None:
    """Held-out accuracy measured while training (``log.csv`` rows up to ``iteration``):
    the last and best values, their iterations, the number of evaluations and the training
    seconds of the last row; None when the log has none."""
    try:
        rows = log_rows(folder, iteration)
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        return None
    points = []
    for r in rows:
        try:
            points.append((int(r["iteration"]), float(r["heldout_accuracy"])))
        except (KeyError, TypeError, ValueError):
            continue
    if not points:
        return None
    best = max(points, key=lambda p: (p[1], -p[0]))
    seconds = None
    try:
        seconds = float(rows[-1].get("train_seconds") or rows[-1]["seconds"])
    except (KeyError, TypeError, ValueError):
        pass
    return {"last": points[-1][1], "last_iteration": points[-1][0], "best": best[1], "best_iteration": best[0],
            "evaluations": len(points), "train_seconds": seconds, "logged_iteration": int(rows[-1]["iteration"])}


def is_evaluation(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("benchmark") == "evaluate" and isinstance(obj.get("rows"), list)


def saved_evaluation(folder: Path) -> tuple[str, dict[str, Any]] | None:
    """The newest ``lohp evaluate --json`` result saved in the policy folder (file name and
    content), or None."""
    found = []
    for path in Path(folder).glob("*.json"):
        if path.name in (META, "checkpoint.json") or not path.is_file():
            continue
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if is_evaluation(obj):
            found.append((path.stat().st_mtime_ns, path.name != EVALUATION, path.name, obj))
    if not found:
        return None
    found.sort(key=lambda f: (-f[0], f[1], f[2]))
    return found[0][2], found[0][3]


# --------------------------------------------------------------------------- the card
def model_card(folder: str | Path, meta: dict[str, Any] | None = None) -> str:
    """The Markdown text of ``folder``'s model card (``meta``: its ``policy.json``, read
    from the folder when not given)."""
    folder = Path(folder)
    if meta is None:
        meta = read_json(folder / META, "policy description", sealed=True)
    name = folder.resolve().name or str(folder)
    fam, method = meta.get("family", "?"), meta.get("method", "?")
    iteration = int(meta.get("iteration") or 0)
    acc = training_accuracy(folder, iteration)
    out = [f"# lohp policy {code(name)}: {code(method)} on {code(fam)} tasks", ""]
    n_steps, k, total = meta.get("n_steps"), meta.get("k"), meta.get("total_steps")
    out += [f"A trained Lo-Hp policy: from a task's training split it generates the weights of the task's model in "
            f"N = {n_steps} policy steps (standing for T = {total} optimizer steps, k = {k}), without computing a "
            f"gradient of the task loss. `policy.json` describes it and `policy.safetensors` holds its weights; both "
            "carry checksums, which `lohp inspect` on this folder re-checks. This card is written by lohp with the "
            "policy (and again after a `lohp evaluate --json` result is saved here).", ""]
    out += _what_it_generates(meta)
    out += _how_it_was_trained(meta, iteration, acc)
    out += _heldout_while_training(meta, iteration, acc)
    saved = saved_evaluation(folder)
    if saved is not None:
        out += _evaluation(folder, meta, *saved)
    out += _use_it(name, meta.get("feature_spec"))
    return "\n".join(out)


def _what_it_generates(meta: dict[str, Any]) -> list[str]:
    fam, options = meta.get("family", "?"), meta.get("family_config") or {}
    layout, structure = meta.get("layout") or {}, (meta.get("structure") or {}).get("kind", "?")
    out = ["## What it generates", "", f"- family: {code(fam)}"]
    if options:
        out.append("- family options: " + ", ".join(code(f"{k}={_option(v)}") for k, v in sorted(options.items())))
    entries = ", ".join(f"{code(e.get('name'))} {list(e.get('shape', []))}" for e in layout.get("entries", []))
    out.append(f"- target: {_STRUCTURES.get(structure, 'a model')} (structure {code(structure)}), "
               f"d = {layout.get('size', '?'):,} generated parameters: {entries}"
               if isinstance(layout.get("size"), int) else f"- target: structure {code(structure)}")
    cond = meta.get("condition") or {}
    if cond:
        points = cond.get("points", 1)
        out.append(f"- condition: {'class means' if points == 1 else f'a coreset of {points} points per class'} of "
                   "the task's training split")
    spec = meta.get("feature_spec")
    if spec:
        out.append(f"- input: rows of {spec['n_features']:,} features ({code(spec.get('input', ''))}), "
                   + _transform(spec))
    return out + [""]


def _how_it_was_trained(meta: dict[str, Any], iteration: int, acc: dict[str, Any] | None) -> list[str]:
    tc = meta.get("train_config") or {}
    out = ["## How it was trained", "", f"- method: {code(meta.get('method', '?'))}"]
    store = meta.get("store")
    if store is not None:
        opts = ", ".join(code(o) for o in meta.get("store_optimizers") or [])
        sha = str(meta.get("store_manifest_sha") or "")[:12]
        out.append(f"- store: {code(store)} ({meta.get('trajectories', '?')} trajectories of {opts or '?'}; "
                   f"manifest sha256 {code(sha)})")
    budget = [f"{tc.get('iterations', '?'):,} iterations" if isinstance(tc.get("iterations"), int)
              else "? iterations"]
    if tc.get("time_limit") is not None:
        budget.append(f"a limit of {_fmt(float(tc['time_limit']), 0)} training seconds")
    out.append(f"- budget: {' and '.join(budget)}; batch {tc.get('batch_size', '?')} tasks, "
               f"learning rate {tc.get('lr', '?')}, seed {tc.get('seed', '?')}")
    trained = f"- trained: iteration {iteration:,}"
    if acc is not None and acc.get("train_seconds") is not None:
        trained += f", {acc['train_seconds']:.1f} training seconds"
    out.append(trained + (f"; {meta['parameters']:,} policy parameters" if isinstance(meta.get("parameters"), int)
                          else ""))
    return out + [""]


def _heldout_while_training(meta: dict[str, Any], iteration: int, acc: dict[str, Any] | None) -> list[str]:
    out = ["## Held-out accuracy while training", ""]
    if acc is None:
        out.append("No held-out accuracy in `log.csv` yet" + (" (not trained yet)." if iteration == 0 else "."))
    else:
        tasks = (meta.get("train_config") or {}).get("eval_tasks", "?")
        out.append(f"From `log.csv`: {acc['last']:.4f} at iteration {acc['last_iteration']:,} (the last evaluation), "
                   f"best {acc['best']:.4f} at iteration {acc['best_iteration']:,}; {acc['evaluations']} "
                   f"evaluation(s), each the mean over {tasks} held-out task(s) from fixed "
                   "starting weights.")
    return out + [""]


def _use_it(name: str, spec: dict[str, Any] | None) -> list[str]:
    out = ["## Use it", ""]
    lines = ["from lohp import api",
             f"gen = api.load_policy({name!r})  # this folder",
             'weights = api.generate(gen, gen.family().sample(0, "heldout"))  # .theta, .named; any Task of the family']
    out += _python_block([safe_text(x) for x in lines])
    if spec:
        out += ["", f"On rows of {spec['n_features']:,} raw features `X` with labels `y` (any {spec['n_features']:,}-"
                "column table; the preprocessing above is applied for you):", ""]
        out += _python_block([safe_text(x) for x in [
            "from lohp.sklearn import GeneratedClassifier",
            f"clf = GeneratedClassifier({name!r}).fit(X, y)  # generates the head, no gradient",
            "clf.predict(X_new), clf.predict_proba(X_new), clf.score(X_test, y_test)"]])
    return out + [""]


def _transform(spec: dict[str, Any]) -> str:
    shift, scale = spec.get("shift", 0.0), spec.get("scale", 1.0)
    if isinstance(shift, list) or isinstance(scale, list):
        return ("standardised with the per-feature mean and standard deviation of the source classes "
                "(saved in `policy.json`, key `feature_spec`)")
    if shift == 0.0 and scale == 1.0:
        return "used as they are"
    if shift == 0.0:
        return f"divided by {scale:g}"
    return f"task inputs are (x - {shift:g}) / {scale:g}"


def _evaluation(folder: Path, meta: dict[str, Any], file: str, result: dict[str, Any]) -> list[str]:
    out = [f"## Against Adam-T and the closed forms ({code(file)})", ""]
    tasks, cfg = result.get("heldout_tasks", "?"), result.get("config") or {}
    seeds = cfg.get("seeds", 1)
    when = ""
    recorded = result.get("policy_sha256")
    if recorded is None:
        when = " The result does not record which state of the policy it measured."
    else:
        try:
            current = sha256_file(folder / WEIGHTS)
        except OSError:
            current = None
        if recorded != current:
            when = (f" It measured an earlier state of this policy (iteration {result.get('policy_iteration', '?')}; "
                    f"the policy is now at iteration {int(meta.get('iteration') or 0):,}): re-run `lohp evaluate` "
                    "to refresh it.")
    out.append(f"`lohp evaluate` on {tasks} held-out {code(result.get('family', '?'))} tasks, "
               f"{seeds} seed(s), {result.get('threads', '?')} thread(s); accuracy on each task's evaluation split, "
               f"ms to produce the weights.{when}")
    out += ["", "| method | what | steps | accuracy | ms |", "|---|---|---|---|---|"]
    for row in result.get("rows") or []:
        if not isinstance(row, dict):
            continue
        m = str(row.get("method", "?"))
        what = ("Adam-T (Adam for the policy's T steps)" if m == "adam" else "Adam for N steps" if m == "adam-n"
                else "closed form" if m in _CLOSED_FORM else "SGD for T steps" if m == "sgd"
                else "this policy" if m == meta.get("method") and row.get("k") is not None else "")
        acc = row.get("accuracy")
        spread = "1 seed" if seeds == 1 else f"± {_fmt(row.get('accuracy_std'))} over {seeds} seeds"
        acc_text = f"{_fmt(acc)} ({spread})" if isinstance(acc, (int, float)) else "-"
        lat = row.get("latency_with_condition_ms", row.get("latency_ms"))
        out.append(f"| {code(m, table=True)} | {what} | {_fmt(row.get('steps')) if row.get('steps') else '-'} | "
                   f"{acc_text} | {_fmt(lat, 2) if isinstance(lat, (int, float)) else '-'} |")
    out.append("")
    return out


def write_card(folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``folder``'s ``README.md`` (atomically)."""
    path = Path(folder) / CARD
    atomic_write_bytes(path, model_card(folder, meta).encode())
    return path


def refresh_card(folder: str | Path) -> Path | None:
    """Rewrite the card of a policy folder (after an evaluate result was saved into it); None
    when ``folder`` holds no readable policy description."""
    if not (Path(folder) / META).is_file():
        return None
    try:
        return write_card(folder)
    except LohpError:
        return None
