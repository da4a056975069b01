"""Results a person can look at: ``lohp report`` pages (checked in a real browser), figures
and tables that tell the truth about their spread, TensorBoard scalars, and progress of a
time-budgeted training in seconds.

One small policy is trained once (through the command line, with a time budget and
TensorBoard when it is installed) and shared by the tests of this module."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lohp.errors import LohpError
from lohp.extras import available

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; "
                                                             ".ci/run installs it): the page is not loaded in a browser")
needs_tensorboard = pytest.mark.skipif(not available("tensorboard"), reason="tensorboard is not installed "
                                                                            "(pip install -e '.[tensorboard]')")

NASTY = 'lo-hp<script>alert("x")</script>&co'  # a label the page must show as text, never run
BUDGET = 120  # a time budget the shared policy's 6 iterations stay well within
ITERATIONS = 6
TRAIN = ["--method", "lo-hp", "--channels", "8", "--token-size", "8", "--depth", "1", "--batch-size", "4",
         "--iterations", ITERATIONS, "--log-every", "3", "--eval-every", "2", "--eval-tasks", "2",
         "--checkpoint-every", "3"]


def run_cli(*args: str) -> tuple[int, str, str]:
    """``lohp ARGS`` in-process (module fixtures cannot use capsys): exit status, stdout, stderr."""
    from lohp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(small_store_path, tmp_path_factory):
    """``lohp train`` with a time budget it does not use up (6 iterations; --tensorboard when
    installed): (policy folder, TensorBoard folder or None, the command's stderr)."""
    root = tmp_path_factory.mktemp("report")
    tb = root / "tb" if available("tensorboard") else None
    code, out, err = run_cli("train", "--store", small_store_path, "--out", root / "policy", *TRAIN,
                             "--time-limit", BUDGET, *(["--tensorboard", tb] if tb else []))
    assert code == 0, err
    return root / "policy", tb, err


def digits_result(path: Path, seeds: int = 1) -> dict:
    """A result JSON of `lohp bench digits`'s shape (as `lohp demo` writes it), with a method
    name that is HTML, at ``path``."""
    def row(method, acc, k=None, curves=None, latency=1.0):
        r = {"method": method, "k": k, "steps": 16, "accuracy": acc, "accuracy_std": 0.0 if seeds == 1 else 0.002,
             "accuracy_wide": acc - 0.1, "latency_ms": latency, "seeds": [acc] * seeds, "hessian_trace": 1.5,
             "iterations_per_second": 40.0}
        if curves is not None:
            r["curves"] = [curves] * seeds
        return r

    rows = [row("adam", 0.9012, latency=12.0), row("sgd", 0.88, latency=11.0),
            row("lo-di", 0.9713, 2, [(1.0, 0.95), (2.0, 0.965), (3.0, 0.9713)], 4.0),
            row(NASTY, 0.9720, 2, [(1.0, 0.96), (2.0, 0.968), (3.0, 0.9720)], 4.5)]
    rows[-1]["time_to_accuracy_speedup"] = 3.2
    result = {"benchmark": "digits", "config": {"seeds": seeds, "work": str(path.parent / "work<&>")},
              "family": {"n_way": 5}, "heldout_tasks": 20, "threads": 2, "rows": rows, "seconds": 64.0,
              "cosines": {"lo-hp": {"mean": 0.8, "values": [0.7, 0.8, 0.9]}},
              "provenance": {"command": f"lohp demo --work '{path.parent}'", "cpu": "Test CPU <x86>", "cpus": 2,
                             "system": "Linux", "threads": 2, "python": "3.11", "torch": "2.13.0",
                             "lohp": "0.1.0", "date": "2025-01-02T03:04:05+00:00"}}
    path.write_text(json.dumps(result))
    return result


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def assert_self_contained(page: str) -> None:
    """No script, no stylesheet or image from anywhere else, a policy that forbids them."""
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page), "a resource outside the page"
    assert not re.search(r"url\(", page)


# --------------------------------------------------------------------------- the report page
@pytest.fixture(scope="module")
def result_page(tmp_path_factory) -> Path:
    """`lohp report` of a demo-like result in a folder whose name is HTML."""
    folder = tmp_path_factory.mktemp("result") / "a <b> & 'c'"
    folder.mkdir()
    digits_result(folder / "demo.json")
    code, out, err = run_cli("report", folder / "demo.json")
    assert code == 0, err
    assert "wrote" in out and "demo.html" in out
    return folder / "demo.html"


@pytest.fixture(scope="module")
def policy_page(trained, tmp_path_factory) -> Path:
    """The page of the shared policy with a `lohp evaluate --json` result saved in its folder."""
    from lohp.report import write_report

    folder = tmp_path_factory.mktemp("policy") / "policy"
    shutil.copytree(trained[0], folder)
    evaluation = digits_result(folder / "evaluation.json")
    evaluation.update(benchmark="evaluate", policy=str(folder), family="digits")
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    page = write_report(folder)
    assert page == folder.parent / "policy.html"  # beside the folder, not inside it
    return page


def test_a_result_page_is_self_contained_escaped_and_says_one_seed(result_page):
    page = result_page.read_text()
    assert_self_contained(page)
    assert NASTY not in page and "lo-hp&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;co" in page
    assert "a &lt;b&gt; &amp; &#x27;c&#x27;" in page and "Test CPU &lt;x86&gt;" in page  # a path, a machine
    for text in ("<h1>lohp demo</h1>", "lohp demo --work", "2025-01-02T03:04:05+00:00", "torch threads",
                 'id="table-1"', 'id="run-table"', 'id="settings-table"'):
        assert text in page, text
    assert "0.9720 (1 seed)" in page and "± 0.0000" not in page
    pngs = images(page)
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)  # latency, curves, cosines


def test_an_existing_page_is_replaced_only_with_overwrite(cli, tmp_path):
    """Also: a result of a benchmark this lohp does not have is shown with the shared columns."""
    src = tmp_path / "plugin.json"
    src.write_text(json.dumps({"benchmark": "not-installed", "rows": [{"method": "m", "accuracy": 0.5}]}))
    assert cli("report", src)[0] == 0
    page = (tmp_path / "plugin.html").read_text()
    assert "not registered in this lohp" in page and "<td>0.5000</td>" in page
    code, out, err = cli("report", src)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert cli("report", src, "--overwrite")[0] == 0
    code, out, err = cli("report", src, "--out", tmp_path / "elsewhere" / "page.html")
    assert code == 0 and (tmp_path / "elsewhere" / "page.html").exists()
    code, out, err = cli("report", src, "--out", src, "--overwrite")
    assert code == 2 and "the input itself" in err


def _unreadable(root: Path, kind: str) -> Path:
    if kind == "list":
        (root / "x.json").write_text("[1, 2]")
        return root / "x.json"
    if kind == "binary":
        (root / "x.png").write_bytes(b"\x89PNG\x00\xff")
        return root / "x.png"
    if kind in ("folder", "store"):
        (root / "d").mkdir()
        if kind == "store":
            (root / "d" / "manifest.json").write_text("{}")
        return root / "d"
    return root / "missing.json"


@pytest.mark.parametrize("kind, pattern", [("missing", "does not exist"), ("list", "not a lohp result"),
                                           ("binary", "is not JSON"), ("folder", "not a policy folder"),
                                           ("store", "trajectory store")])
def test_what_report_cannot_read_is_one_line(cli, tmp_path, kind, pattern):
    code, out, err = cli("report", _unreadable(tmp_path, kind))
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(pattern, err), err


def test_a_policy_page_says_what_the_policy_is_and_how_it_was_trained(policy_page):
    page = policy_page.read_text()
    assert_self_contained(page)
    for text in ("what it generates", "how it was trained", "held-out accuracy during training", "digits",
                 "lo-hp", "class-rows", "api.load_policy", "evaluation.json", "lohp train --store"):
        assert text in page, text
    assert len(images(page)) == 2  # the training log, the saved evaluation's accuracy vs latency


@needs_chromium
def test_pages_load_in_a_real_browser_with_every_table_and_image(result_page, policy_page, tmp_path):
    """Headless Chromium opens each page from disk (no server, no network): every table is
    in the DOM, every image decoded (complete, natural width > 0), and a screenshot is kept
    in this test's tmp folder."""
    pages = {"result": (result_page, ["run-table", "table-1", "settings-table"], 3),
             "policy": (policy_page, ["run-table", "policy-what", "policy-trained", "policy-curve",
                                      "evaluation-1-1", "settings-table"], 2)}
    probe = ("<script>addEventListener('load', () => { for (const i of document.images) "
             "i.setAttribute('data-decoded', String(i.complete && i.naturalWidth > 0)); "
             "document.body.setAttribute('data-probed', document.images.length); });</script>")
    for name, (page, tables, n_images) in pages.items():
        text = page.read_text()
        # the page with a probe placed before its content policy (which forbids scripts)
        probed = tmp_path / f"{name}.html"
        probed.write_text(text.replace("<head>", "<head>" + probe, 1))
        shot = tmp_path / f"{name}-screenshot.png"
        res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                              "--virtual-time-budget=5000", "--window-size=1280,2400", f"--screenshot={shot}",
                              "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr[-2000:]
        dom = res.stdout
        assert f'data-probed="{n_images}"' in dom, (name, dom[:500])
        assert dom.count('data-decoded="true"') == n_images and 'data-decoded="false"' not in dom
        for table_id in tables:
            assert f'id="{table_id}"' in dom, (name, table_id)
        assert dom.count("<table") == text.count("<table")
        assert name == "policy" or "lo-hp&lt;script&gt;" in dom  # shown as text, never run
        assert shot.read_bytes().startswith(b"\x89PNG"), res.stderr[-2000:]


def test_bench_writes_its_page_beside_the_json(tmp_path, monkeypatch):
    """`lohp bench NAME --json X.json` writes X.html beside it (with where the numbers come
    from); a page already there is replaced only with --overwrite."""
    from dataclasses import dataclass

    from lohp.bench import runner
    from lohp.cli import bench as cli_bench
    from lohp.config import Config, setting

    @dataclass
    class PageConfig(Config):
        what = "page benchmark"
        size: int = setting(2, "Rows.")

        @classmethod
        def quick(cls):
            return cls(size=1)

    def run(cfg, note=None, train_progress=None):
        return {"benchmark": "page-bench", "config": cfg.to_dict(), "threads": 1,
                "rows": [{"method": f"m{i}", "accuracy": 0.5, "accuracy_std": 0.0, "seeds": [0.5]}
                         for i in range(cfg.size)]}

    monkeypatch.setattr(runner, "BENCHMARKS", dict(runner.BENCHMARKS))
    runner.register_benchmark("page-bench", PageConfig, run,
                              tables=lambda r: [("rows", r["rows"], [("method", "method", ""), runner.ACCURACY])])
    commands = list(cli_bench.bench_app.registered_commands)
    try:
        cli_bench.add_missing_commands()
        out = tmp_path / "r.json"
        code, stdout, err = run_cli("bench", "page-bench", "--json", out)
        assert code == 0, err
        page = (tmp_path / "r.html").read_text()
        assert "wrote " + str(tmp_path / "r.html") in " ".join(stdout.split())
        assert "<h1>lohp bench page-bench</h1>" in page and "0.5000 (1 seed)" in page
        assert "lohp bench page-bench --json" in page  # the command, recorded in the JSON too
        assert json.loads(out.read_text())["provenance"]["command"].startswith("lohp bench page-bench")
        out.unlink()
        code, _, err = run_cli("bench", "page-bench", "--json", out)
        assert code == 2 and "report page" in err and "--overwrite" in err
        assert run_cli("bench", "page-bench", "--json", out, "--overwrite")[0] == 0
    finally:
        cli_bench.bench_app.registered_commands[:] = commands


# --------------------------------------------------------------------------- figures and tables
def test_one_seed_is_said_not_printed_as_a_zero_spread():
    from rich.console import Console

    from lohp.bench.harness import format_accuracy, print_table
    from lohp.bench.runner import ACCURACY

    rows = [{"method": "one[x]", "accuracy": 0.97, "accuracy_std": 0.0, "seeds": [0.97]},
            {"method": "three", "accuracy": 0.9, "accuracy_std": 0.01, "seeds": [0.89, 0.9, 0.91]},
            {"method": "closed", "accuracy": 0.8, "accuracy_std": None, "n_seeds": 1},
            {"method": "unknown", "accuracy": 0.7, "accuracy_std": None}]
    console = Console(file=io.StringIO(), width=120)
    print_table(rows, "t", [("method", "method", ""), ACCURACY], console)
    text = console.file.getvalue()
    assert "0.9700 (1 seed)" in text and "0.9000 ± 0.0100" in text and "0.8000 (1 seed)" in text
    assert "± 0.0000" not in text and "one[x]" in text
    assert format_accuracy(rows[3]) == "0.7000"


def test_learning_curves_hold_the_references_and_say_what_the_spread_is():
    from lohp.bench.harness import accuracy_latency_figure, learning_curves_figure

    one = {"method": "lo-hp", "k": 2, "seeds": [0.973], "accuracy": 0.973, "accuracy_std": 0.0, "latency_ms": 4.0,
           "curves": [[(1.0, 0.9710), (2.0, 0.9720), (3.0, 0.9730)]]}
    adam = {"method": "adam", "accuracy": 0.90, "accuracy_std": 0.0, "seeds": [0.9], "latency_ms": 10.0}
    fig = learning_curves_figure([one, adam], "t")
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo <= 0.90 and hi >= 0.973 and hi - lo >= 0.05  # the reference is on the axis
    assert "1 seed" in ax.get_ylabel()
    assert "3 evaluations" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    close = learning_curves_figure([one], "t").axes[0].get_ylim()
    assert close[1] - close[0] >= 0.05  # 0.971-0.973 does not fill the axis
    three = {**one, "seeds": [0.97, 0.973, 0.976], "accuracy_std": 0.003, "curves": one["curves"] * 3}
    assert "each seed" in learning_curves_figure([three], "t").axes[0].get_ylabel()
    assert "1 seed: no spread measured" in accuracy_latency_figure([one, adam], "t").axes[0].get_ylabel()
    assert "sample std over 3 seeds" in accuracy_latency_figure([three], "t").axes[0].get_ylabel()


def test_the_demo_evaluates_enough_times_for_a_curve():
    from lohp.bench.digits import demo_config
    from lohp.bench.scenario import CURVE_POINTS, iteration_options

    cfg = demo_config("unused")
    o = iteration_options(cfg.iterations)
    evaluations = [i for i in range(1, o["iterations"] + 1) if i % o["eval_every"] == 0 or i == o["iterations"]]
    assert len(evaluations) >= CURVE_POINTS


def test_evaluations_fall_between_log_intervals(trained):
    """eval_every 2 with log_every 3: every second iteration is evaluated (and logged), not
    only the common multiples (the cause of the demo's one-point curves)."""
    rows = list(csv.DictReader(open(trained[0] / "log.csv")))
    evaluated = [int(r["iteration"]) for r in rows if r["heldout_accuracy"]]
    assert int(rows[-1]["iteration"]) == ITERATIONS
    assert evaluated == list(range(2, ITERATIONS + 1, 2))
    assert all(float(r["iterations_per_second"]) > 0 for r in rows)


# --------------------------------------------------------------------------- progress and TensorBoard
def test_budgeted_training_shows_progress_in_seconds(trained):
    err = trained[2]
    assert re.search(rf"\d+\.\d/{BUDGET:g} s", err), err
    assert f"/{ITERATIONS}" not in err


def _scalars(directory: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _log(folder: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in csv.DictReader(open(folder / "log.csv")):
        for k, v in r.items():
            if k != "iteration" and v:
                out.setdefault(k, {})[int(r["iteration"])] = float(v)
    return out


@needs_tensorboard
def test_tensorboard_has_the_same_numbers_as_the_log_also_after_a_resume(trained, tmp_path):
    policy, tb, _ = trained
    log, scalars = _log(policy), _scalars(tb)
    for tag in ("loss", "logpf_real", "cos_real", "dist", "heldout_accuracy", "iterations_per_second"):
        assert tag in scalars, tag
    assert set(scalars) == set(log)
    for tag, values in log.items():
        assert scalars[tag] == pytest.approx(values, rel=1e-6), tag
    # a resumed run (here: its log, reopened at iteration 3 as the trainer does) mirrors the
    # log again: the steps after the checkpoint are replaced, none is there twice or lost
    from lohp.training.logs import TrainLog

    shutil.copytree(policy, tmp_path / "p")
    shutil.copytree(tb, tmp_path / "tb")
    with TrainLog(tmp_path / "p", 3, ["loss_on", "loss_off"], "lo-hp", tensorboard=tmp_path / "tb") as resumed:
        for i in (4, 5):
            resumed.write(i, 100.0 + i, {"loss": 10.0 * i, "heldout_accuracy": 0.5})
    log, scalars = _log(tmp_path / "p"), _scalars(tmp_path / "tb")
    assert sorted(log["loss"]) == [2, 3, 4, 5] and log["loss"][5] == 50.0 and 6 not in scalars["loss"]
    assert log["iterations_per_second"][5] == pytest.approx(1.0)
    for tag, values in log.items():
        assert scalars[tag] == pytest.approx(values, rel=1e-6), tag


def test_a_missing_tensorboard_is_one_line_naming_the_extra(cli, small_store_path, tmp_path, monkeypatch):
    import builtins
    import sys

    real = builtins.__import__

    def blocked(name, *a, **k):
        if name.split(".")[0] == "tensorboard" or name.startswith("torch.utils.tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    for m in list(sys.modules):
        if m.split(".")[0] == "tensorboard" or m.startswith("torch.utils.tensorboard"):
            monkeypatch.delitem(sys.modules, m)
    monkeypatch.setattr(builtins, "__import__", blocked)
    code, out, err = cli("train", "--store", small_store_path, "--out", tmp_path / "p", *TRAIN,
                         "--tensorboard", tmp_path / "tb")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "pip install -e '.[tensorboard]'" in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "tb").exists()  # refused before any work
    with pytest.raises(LohpError, match="tensorboard"):
        from lohp.training.logs import summary_writer

        summary_writer()
