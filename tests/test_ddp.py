"""Stage II data-parallel (torchrun, gloo on CPU): 2 processes with global batch B follow the
same loss curve as one process with batch B, and write the same policy format."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

ARGS = ["--method", "lo-di", "--iterations", "6", "--batch-size", "4", "--channels", "8", "--token-size", "8",
        "--depth", "1", "--eval-every", "1000", "--checkpoint-every", "3"]


def _run(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lohp", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _losses(folder):
    with open(folder / "log.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from lohp import api

    root = tmp_path_factory.mktemp("ddp")
    api.prepare(root / "store", family_config={"n_way": 3}, optimizers=("adam", "sgd"), tasks=4, steps=4, seed=0)
    return root / "store"


def test_two_processes_match_one_process_with_the_same_global_batch(store, tmp_path):
    one = _run("train", "--store", store, "--out", tmp_path / "one", *ARGS, "--log-every", "1", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = _run("train", "--store", store, "--out", tmp_path / "two", *ARGS, "--log-every", "1", "--nproc", "2",
               cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    # same batches, gradients averaged over ranks: the curves agree to float32 reduction order
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    ma = json.loads((tmp_path / "one" / "policy.json").read_text())
    mb = json.loads((tmp_path / "two" / "policy.json").read_text())
    assert ma["format"] == mb["format"] and sorted(ma) == sorted(mb) and mb["iteration"] == 6
    from lohp import api

    gen = api.load_policy(tmp_path / "two")
    task = gen.family().sample(0, "heldout")
    assert api.generate(gen, task).theta.isfinite().all()
    assert two.stdout.count("policy in") == 1  # rank 0 reports, the other rank is silent


def test_nproc_must_be_positive_and_split_the_batch(store, tmp_path, cli):
    code, out, err = cli("train", "--store", store, "--out", tmp_path / "p", "--nproc", "0")
    assert code == 2 and "--nproc must be >= 1" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("train", "--store", store, "--out", tmp_path / "p", "--nproc", "3", "--batch-size", "4")
    assert code == 2 and "does not split over 3 processes" in err


def test_kill_9_of_a_rank_then_the_same_command_resumes(store, tmp_path):
    """kill -9 of rank 1 mid-run: torchrun stops the others; the same command resumes from
    rank 0's last checkpoint and ends on the uninterrupted run's losses."""
    import signal
    import time

    args = ["train", "--store", store, "--method", "lo-di", "--iterations", "400", "--batch-size", "4",
            "--channels", "8", "--token-size", "8", "--depth", "1", "--eval-every", "1000", "--checkpoint-every", "3",
            "--log-every", "1"]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lohp", *map(str, args), "--out", str(out), "--nproc", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = out / "checkpoint.json"
    deadline = time.time() + 180
    while time.time() < deadline and not (ckpt.exists() and json.loads(ckpt.read_text())["iteration"] >= 6):
        time.sleep(0.2)
    ranks = subprocess.run(["pgrep", "-f", "--", f"--out {out}"], capture_output=True, text=True).stdout.split()
    workers = [int(p) for p in ranks if int(p) != proc.pid]
    victim = None
    for pid in workers:  # the rank-1 worker: its environment says RANK=1
        try:
            if b"RANK=1\0" in open(f"/proc/{pid}/environ", "rb").read():
                victim = pid
        except OSError:
            pass
    assert victim is not None, "no rank-1 process found"
    os.kill(victim, signal.SIGKILL)
    proc.wait(timeout=120)
    done = json.loads(ckpt.read_text())["iteration"]
    assert 6 <= done < 400
    short = [*map(str, args)]
    short[short.index("--iterations") + 1] = str(done + 3)
    r = subprocess.run([sys.executable, "-m", "lohp", *short, "--out", str(out), "--nproc", "2"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ref = subprocess.run([sys.executable, "-m", "lohp", *short, "--out", str(tmp_path / "ref")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    assert json.loads(ckpt.read_text())["iteration"] == done + 3
    assert _losses(out) == pytest.approx(_losses(tmp_path / "ref"), rel=1e-4, abs=1e-6)
