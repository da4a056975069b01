"""Shared fixtures: few threads, tiny stores, fast tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# Fixtures of the image scenarios (made-up features and domains), for every test module.
pytest_plugins = ["tests.image_fixtures"]

# LOHP_TEST_THREADS=1 leaves the other core to a benchmark running beside the tests.
torch.set_num_threads(int(os.environ.get("LOHP_TEST_THREADS", "2")))

# A tiny Stage I run: 3 tasks x 2 seeds x 2 optimizers, 6 steps, shards of 4 runs (so each
# optimizer has two shards, the second one short).
SMALL = dict(family="digits", family_config={"n_way": 3}, optimizers=("sgd", "adam"), tasks=3, seeds=2,
             steps=6, batch_size=16, record_every=1, seed=3, shard_runs=4)


@pytest.fixture(scope="session")
def small_args() -> dict:
    """The keyword arguments of make_config() behind the small store."""
    return dict(SMALL)


@pytest.fixture(scope="session")
def small_config() -> dict:
    from lohp.trajectories import make_config

    return make_config(**SMALL)


@pytest.fixture(scope="session")
def small_store_path(tmp_path_factory, small_config) -> Path:
    """A prepared store shared (read-only!) by every test; copy it before changing it."""
    from lohp.trajectories import prepare

    out = tmp_path_factory.mktemp("store") / "small"
    prepare(out, small_config)
    return out


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory, small_store_path) -> Path:
    """A tiny lo-di policy trained on the small store (2 iterations), shared (read-only!)
    by every test; copy it before changing it."""
    from lohp import api

    out = tmp_path_factory.mktemp("policy") / "tiny"
    api.train(small_store_path, out, "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 2, "batch_size": 2, "eval_tasks": 1})
    return out


@pytest.fixture
def store_copy(small_store_path, tmp_path) -> Path:
    """A private copy of the small store that a test may damage."""
    dst = tmp_path / "copy"
    shutil.copytree(small_store_path, dst)
    return dst


@pytest.fixture(scope="session")
def digits():
    from lohp.tasks import DigitsFamily

    return DigitsFamily(n_way=5)


@pytest.fixture
def cli(capsys):
    """Run ``lohp ARGS`` in-process: returns (exit status, stdout, stderr)."""
    from lohp.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
