"""The lohp command: help, prepare -> inspect, and one clear line (exit 2) for every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lohp.trajectories import TrajectoryStore

# Known cli.py defect (reported, not fixed here: cli.py is being edited elsewhere): `lohp prepare`
# opens its progress bar before the device check and before prepare() compares the folder with
# the arguments, so those errors print an empty "preparing ━━━ 0/?" line above the error line.

PREP = ["prepare", "--tasks", "2", "--seeds", "1", "--steps", "3", "--n-way", "3", "--batch-size", "8"]


def assert_clear_error(code: int, err: str, pattern: str) -> None:
    """Exit 2, no traceback, and the last line on stderr is the error (other lines allowed)."""
    import re

    assert code == 2, f"exit status {code}, stderr: {err!r}"
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and re.search(pattern, last), err


def assert_one_line_error(code: int, err: str, pattern: str | None = None) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, f"exit status {code}, stderr: {err!r}"
    assert len(lines) == 1, f"want one line on stderr, got: {err!r}"
    assert "Traceback" not in err and lines[0].startswith("error:")
    if pattern is not None:
        import re

        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- help
@pytest.mark.parametrize("args, expect", [
    ([], ["prepare", "inspect", "bench"]),
    (["prepare"], ["--family", "--optimizers", "--tasks", "--seeds", "--steps", "--out", "--lr"]),
    (["inspect"], ["--json", "--verify", "store"]),
    (["bench"], ["prepare"]),
    (["bench", "prepare"], ["--json", "--quick"]),
])
def test_help_for_every_subcommand(cli, args, expect):
    code, out, err = cli(*args, "--help")
    assert code == 0, err
    assert "Usage" in out
    for word in expect:
        assert word.lower() in out.lower(), (args, word)


# ----------------------------------------------------------------------------- prepare -> inspect
def test_prepare_then_inspect_json(cli, tmp_path):
    out = tmp_path / "store"
    code, stdout, err = cli(*PREP, "--optimizers", "sgd,adam,sam", "--out", out)
    assert code == 0, err
    assert "stored 6 trajectories" in stdout
    assert "shard" in err  # the progress bar (on stderr)

    code, stdout, err = cli("inspect", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert isinstance(summary["trajectories"], int) and summary["trajectories"] == 6
    assert set(summary["optimizers"]) == {"sgd", "adam", "sam"}
    assert summary["checksums_ok"] is True and summary["complete"] is True
    # independent reference: evaluate every stored final weight vector on its task
    store = TrajectoryStore.open(out)
    for name, d in summary["optimizers"].items():
        assert isinstance(d["count"], int) and d["count"] == 2
        finals = [store.task(i).evaluate(store.theta(i)[-1])["accuracy"]
                  for i, t in enumerate(store) if t["optimizer"] == name]
        assert d["final_metric_mean"] == pytest.approx(sum(finals) / len(finals), abs=1e-6)
        assert d["final_metric_std"] == pytest.approx(torch.tensor(finals, dtype=torch.float64)
                                                      .std(unbiased=False).item(), abs=1e-6)
    assert summary["steps"] == 3 and summary["parameters"] == 64 * 3 + 3

    # the same command again resumes: nothing to do, nothing duplicated
    code, stdout, err = cli(*PREP, "--optimizers", "sgd,adam,sam", "--out", out)
    assert code == 0 and "stored 6 trajectories" in stdout


def test_inspect_table(cli, small_store_path):
    code, out, err = cli("inspect", small_store_path)
    assert code == 0, err
    for word in ("sgd", "adam", "12 trajectories", "steps 6", "parameters per trajectory", "MB on disk",
                 "complete", "all shard checksums verified"):
        assert word in out, word


def test_prepare_hyper_parameters_reach_the_store(cli, tmp_path):
    out = tmp_path / "s"
    code, _, err = cli(*PREP, "--optimizers", "sgd,sam", "--lr", "sgd=0.05,sam=0.3", "--hparam", "sam.rho=0.2",
                       "--hparam", "sgd.momentum=0", "--record-every", "2", "--out", out)
    assert code == 0, err
    store = TrajectoryStore.open(out)
    hp = {t["optimizer"]: t["hparams"] for t in store}
    assert hp["sgd"]["lr"] == 0.05 and hp["sgd"]["momentum"] == 0
    assert hp["sam"]["lr"] == 0.3 and hp["sam"]["rho"] == 0.2
    assert store.steps(0) == [0, 2, 3]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("extra, pattern", [
    (["--family", "cifar"], "unknown task family 'cifar'"),
    (["--optimizers", "sgd,lion"], "unknown optimizer 'lion'"),
    (["--optimizers", ","], "at least one optimizer"),
    (["--optimizers", "sgd,sgd"], "listed twice"),
    (["--steps", "0"], "steps must be > 0"),
    (["--steps", "-4"], "steps must be > 0"),
    (["--lr", "sgd=0"], "lr must be > 0"),
    (["--lr", "sgd=-0.1"], "lr must be > 0"),
    (["--optimizers", "adam", "--lr", "adam=0.0"], "lr must be > 0"),
    (["--lr", "sgd"], "OPT=VALUE"),
    (["--lr", "sgd=fast"], "not a number"),
    (["--lr", "lion=0.1"], "not in the optimizer list"),
    (["--hparam", "sam.rho=0"], "rho must be > 0"),
    (["--hparam", "sgd.beta1=0.9"], "no hyper-parameter beta1"),
    (["--hparam", "rho=0.1"], "OPT.NAME=VALUE"),
    (["--tasks", "0"], "tasks must be > 0"),
    (["--seeds", "0"], "seeds must be > 0"),
    (["--batch-size", "0"], "batch size must be > 0"),
    (["--record-every", "0"], "record_every must be > 0"),
    (["--shard-runs", "0"], "shard_runs must be > 0"),
    (["--init", "xavier"], "unknown init"),
    (["--head", "resnet"], "unknown head"),
    (["--n-way", "10"], "n_way"),
    (["--split", "test"], "unknown split"),
    (["--device", "nonsense"], "device 'nonsense' is not usable"),
])
def test_prepare_bad_input_is_one_line_exit_2(cli, tmp_path, extra, pattern):
    out = tmp_path / "store"
    code, _, err = cli(*PREP, *extra, "--out", out)
    assert_one_line_error(code, err, pattern)
    if "--device" not in extra:  # argument errors are found before anything is written
        assert not out.exists()


@pytest.mark.parametrize("case", ["device", "other-arguments", "not-a-store"])
def test_prepare_errors_found_after_the_progress_bar_opened(cli, store_copy, tmp_path, case):
    """Exit 2 and a clear last line (the one-line form is checked elsewhere)."""
    if case == "device":
        code, _, err = cli(*PREP, "--device", "nonsense", "--out", tmp_path / "s")
        assert_clear_error(code, err, "device 'nonsense' is not usable.*try --device cpu")
    elif case == "other-arguments":
        code, _, err = cli(*PREP, "--out", store_copy)
        assert_clear_error(code, err, "other arguments.*same arguments to resume, another --out, or --overwrite")
    else:
        (tmp_path / "notes.txt").write_text("mine")
        code, _, err = cli(*PREP, "--out", tmp_path)
        assert_clear_error(code, err, "not empty and is not a lohp store")


def test_unwritable_output_folder(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = cli(*PREP, "--out", blocker / "store")
    assert_one_line_error(code, err, "cannot write to output folder.*writable --out")
    code, _, err = cli(*PREP, "--out", blocker)
    assert_one_line_error(code, err, "cannot write to output folder")
    assert blocker.read_text() == "not a folder"


def test_prepare_into_a_store_made_with_other_arguments(cli, store_copy):
    code, _, err = cli(*PREP, "--out", store_copy)
    assert_one_line_error(code, err, "other arguments.*same arguments to resume, another --out, or --overwrite")
    TrajectoryStore.open(store_copy, verify=True)  # untouched


def test_prepare_into_a_folder_that_is_not_a_store(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli(*PREP, "--out", tmp_path)
    assert_one_line_error(code, err, "not empty and is not a lohp store")


def _truncate(p: Path) -> None:
    shard = p / "shards" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])


def _corrupt(p: Path) -> None:
    shard = p / "shards" / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x10
    shard.write_bytes(bytes(data))


def _edit_manifest(fn):
    def edit(p: Path) -> None:
        from lohp.io import atomic_write_json

        m = json.loads((p / "manifest.json").read_text())
        fn(m)
        atomic_write_json(p / "manifest.json", m, sealed=True)  # wrong but sealed: the checks behind the seal
    return edit


def _transpose(m):
    e = m["layout"]["entries"][0]
    e["shape"] = e["shape"][::-1]


@pytest.mark.parametrize("damage, pattern", [
    (_truncate, "shard-00001.safetensors is truncated or corrupt.*re-run lohp prepare"),
    (_corrupt, "checksum mismatch for shard shard-00002.*re-run lohp prepare"),
    (_edit_manifest(lambda m: m["shards"][0].update(runs=2)), "manifest does not match its shards"),
    (_edit_manifest(lambda m: m["trajectories"].pop()), "manifest does not match its shards"),
    (_edit_manifest(lambda m: m["shards"][3].update(file="shard-00007.safetensors")), "missing"),
    (_edit_manifest(_transpose), "layout does not match the model"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "corrupt"),
    (lambda p: (p / "manifest.json").unlink(), "interrupted lohp prepare.*resume"),
], ids=["truncated", "corrupt", "manifest-runs", "manifest-trajectories", "manifest-missing-shard",
        "layout-vs-model", "manifest-not-json", "no-manifest"])
def test_inspect_damaged_store_is_one_line_exit_2(cli, store_copy, damage, pattern):
    damage(store_copy)
    code, out, err = cli("inspect", store_copy)
    assert_one_line_error(code, err, pattern)
    code, out, err = cli("inspect", store_copy, "--json")
    assert_one_line_error(code, err, pattern)
    assert out.strip() == ""  # no half JSON on stdout


def test_inspect_without_verify_skips_checksums(cli, store_copy):
    _corrupt(store_copy)
    code, out, err = cli("inspect", store_copy, "--json", "--no-verify")
    assert code == 0, err
    assert json.loads(out)["checksums_ok"] is None


def test_inspect_missing_store(cli, tmp_path):
    code, _, err = cli("inspect", tmp_path / "nowhere")
    assert_one_line_error(code, err, "no trajectory store")


def test_bad_input_from_a_real_process(tmp_path):
    """The installed entry point: exit 2, one line on stderr, no traceback."""
    res = subprocess.run([sys.executable, "-m", "lohp.cli", *PREP, "--lr", "sgd=0", "--out", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "40"})
    assert_one_line_error(res.returncode, res.stderr, "sgd: lr must be > 0")


# ----------------------------------------------------------------------------- bench
def test_bench_prepare_quick_json(cli, tmp_path):
    target = tmp_path / "out" / "bench.json"
    code, out, err = cli("bench", "prepare", "--quick", "--optimizers", "sgd", "--json", target)
    assert code == 0, err
    result = json.loads(target.read_text())
    assert isinstance(result["speedup"], float) and result["speedup"] > 0
    assert result["rows"][0]["optimizer"] == "sgd" and result["rows"][0]["runs"] == 8
    assert "speedup" in out


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_command_says_how_to_resume(small_store_path, tmp_path, sig, code):
    """Ctrl-C / SIGTERM during training: one line naming how to resume, exit 128 + signal, and
    the same command then resumes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(iterations):
        return [sys.executable, "-m", "lohp", "train", "--store", str(small_store_path), "--out", str(tmp_path / "p"),
                "--iterations", str(iterations), "--channels", "8", "--token-size", "8", "--depth", "1",
                "--checkpoint-every", "5"]

    proc = subprocess.Popen(cmd(1_000_000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (tmp_path / "p" / "checkpoint.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "interrupted; re-run the same command to resume" in err
    done = json.loads((tmp_path / "p" / "checkpoint.json").read_text())["iteration"]
    again = subprocess.run(cmd(done + 2), capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "p" / "checkpoint.json").read_text())["iteration"] == done + 2


def test_generate_refuses_to_replace_a_file_without_overwrite(small_store_path, tmp_path, cli):
    code, _, err = cli("train", "--store", small_store_path, "--out", tmp_path / "p", "--iterations", "2",
                       "--channels", "8", "--token-size", "8", "--depth", "1")
    assert code == 0, err
    out = tmp_path / "w.safetensors"
    assert cli("generate", "--policy", tmp_path / "p", "--out", out, "--no-latency")[0] == 0
    before = out.read_bytes()
    code, _, err = cli("generate", "--policy", tmp_path / "p", "--out", out, "--seed", "5", "--no-latency")
    assert code == 2 and "--overwrite" in err and out.read_bytes() == before
    assert cli("generate", "--policy", tmp_path / "p", "--out", out, "--seed", "5", "--overwrite", "--no-latency")[0] == 0
    assert out.read_bytes() != before


def test_progress_in_a_log_file_is_plain_lines(small_store_path, tmp_path):
    """stderr to a file: no bar drawn at the end only, but dated plain lines as work goes."""
    log = tmp_path / "train.log"
    with open(log, "w") as fh:
        r = subprocess.run([sys.executable, "-m", "lohp", "train", "--store", str(small_store_path), "--out",
                            str(tmp_path / "p"), "--iterations", "5", "--channels", "8", "--token-size", "8",
                            "--depth", "1"], stdout=fh, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    text = log.read_text()
    assert r.returncode == 0 and "[" in text and " s] 1/5 lo-hp loss=" in text and "━" not in text


def test_data_families_lists_each_familys_declared_options(cli):
    """lohp data families NAME shows the Options dataclass: every field, its default and help."""
    import dataclasses
    import json

    from lohp.tasks import family_factory, family_names

    code, out, _ = cli("data", "families", "--json")
    assert code == 0 and sorted(json.loads(out)) == family_names()
    code, out, _ = cli("data", "families", "digits", "--json")
    rows = json.loads(out)["digits"]
    fields = dataclasses.fields(family_factory("digits").Options)
    assert [r["option"] for r in rows] == [f.name for f in fields]
    assert {r["option"]: r["default"] for r in rows}["n_way"] == "5" and all(r["help"] for r in rows)
    code, _, err = cli("data", "families", "no-such-family")
    assert code == 2 and "unknown task family 'no-such-family'" in err
