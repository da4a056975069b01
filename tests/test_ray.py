"""Stage I on Ray (a local 2-CPU cluster): the same store, byte for byte; a dying worker retried."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

ARGS = dict(family="digits", family_config={"n_way": 3}, optimizers=("sgd", "adam"), tasks=3, seeds=1, steps=4,
            batch_size=8, seed=1, shard_runs=2)


@pytest.fixture(scope="module")
def cluster():
    from lohp.trajectories import ray_executor

    ray_executor.init(None, num_cpus=2)
    yield ray
    ray.shutdown()


def _checksums(path):
    manifest = json.loads((path / "manifest.json").read_text())
    return [s["sha256"] for s in manifest["shards"]], manifest["complete"]


def test_a_store_made_on_ray_is_byte_identical_to_a_local_one(tmp_path, cluster, monkeypatch):
    from lohp import api

    api.prepare(tmp_path / "local", **ARGS)
    from lohp.trajectories import ray_executor

    monkeypatch.setattr(ray_executor, "CRASH_ONCE", str(tmp_path / "crashed"))  # the first task's worker dies
    api.prepare(tmp_path / "ray", executor="ray", **ARGS)
    assert (tmp_path / "crashed").exists()  # a worker was killed, and Ray retried its task
    local, ray_sums = _checksums(tmp_path / "local"), _checksums(tmp_path / "ray")
    assert local == ray_sums and local[1] is True and len(local[0]) == 4


def test_resume_on_ray_keeps_finished_shards(tmp_path, cluster):
    from lohp import api

    api.prepare(tmp_path / "s", executor="ray", **ARGS)
    shards = sorted((tmp_path / "s" / "shards").glob("shard-*.safetensors"))
    keep = {p.name: p.stat().st_mtime_ns for p in shards}
    victim = shards[1]
    victim.unlink()
    (tmp_path / "s" / "manifest.json").unlink()  # as if the driver died before the manifest
    api.prepare(tmp_path / "s", executor="ray", **ARGS)
    for p in sorted((tmp_path / "s" / "shards").glob("shard-*.safetensors")):
        if p.name != victim.name:
            assert p.stat().st_mtime_ns == keep[p.name]  # not recomputed
    api.prepare(tmp_path / "l", **ARGS)
    assert _checksums(tmp_path / "s") == _checksums(tmp_path / "l")


def test_bad_ray_input_fails_in_one_line_within_seconds(tmp_path, cli):
    import time

    t0 = time.perf_counter()
    code, out, err = cli("prepare", "--out", tmp_path / "x", "--tasks", "2", "--steps", "2",
                         "--ray-address", "127.0.0.1:1")
    assert code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "x").exists()
    code, out, err = cli("prepare", "--out", tmp_path / "x", "--ray-address", "nonsense")
    assert code == 2 and "is not HOST:PORT" in err
    code, out, err = cli("prepare", "--out", tmp_path / "x", "--ray", "--ray-workers", "0")
    assert code == 2 and "--ray-workers must be >= 1" in err


def test_ray_missing_is_refused_with_the_install_command(tmp_path, cli, monkeypatch):
    import builtins

    real = builtins.__import__

    def blocked(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", blocked)
    code, out, err = cli("prepare", "--out", tmp_path / "x", "--ray")
    assert code == 2 and "pip install -e '.[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
