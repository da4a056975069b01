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
