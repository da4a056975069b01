"""Trajectory store: layout on disk, random access, resume (also after a real kill -9), damage."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lohp.errors import LohpError
from lohp.io import atomic_write_json
from lohp.layout import ParamLayout
from lohp.trajectories import TrajectoryStore, make_config, prepare, summarize
from lohp import io as store_mod  # the atomic writers live in lohp.io

# the small store of conftest.py: 3 tasks x 2 seeds x (sgd, adam), 6 steps, 4 runs per shard
N_TRAJ, N_REC, N_SHARDS = 12, 7, 4


# ----------------------------------------------------------------------------- helpers
def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_files(path: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted((Path(path) / "shards").glob("shard-*.safetensors"))}


def manifest_without_timing(path: Path) -> dict:
    m = json.loads((Path(path) / "manifest.json").read_text())
    for sh in m["shards"]:
        sh.pop("train_seconds")
    m.pop("checksum", None)  # of the content with the timings
    return m


def assert_same_store(a: Path, b: Path) -> None:
    """Bit for bit: same shard files, same manifest apart from wall-clock timings."""
    fa, fb = shard_files(a), shard_files(b)
    assert list(fa) == list(fb) and fa == fb
    for name in fa:
        ta, tb = load_file(Path(a) / "shards" / name), load_file(Path(b) / "shards" / name)
        assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert manifest_without_timing(a) == manifest_without_timing(b)
    assert json.loads((Path(a) / "config.json").read_text()) == json.loads((Path(b) / "config.json").read_text())


def assert_no_duplicates(path: Path, expected: int) -> None:
    store = TrajectoryStore.open(path, verify=True)
    keys = [(t["optimizer"], t["task_seed"], t["seed"]) for t in store]
    assert len(keys) == len(set(keys)) == expected
    assert sorted(t["id"] for t in store) == list(range(expected))
    files = sorted(p.name for p in (Path(path) / "shards").iterdir())
    assert all(not n.endswith(".tmp") for n in files), files
    assert len([n for n in files if n.endswith(".safetensors")]) == len(store.shards)


# ----------------------------------------------------------------------------- a prepared store
def test_prepare_and_open(small_store_path, small_config):
    store = TrajectoryStore.open(small_store_path, verify=True)
    assert store.complete and len(store) == N_TRAJ and len(store.shards) == N_SHARDS
    assert store.config == json.loads(json.dumps(small_config))
    assert_no_duplicates(small_store_path, N_TRAJ)
    fam = store.family()
    assert store.layout == fam.sample(0).layout and store.layout.size == 64 * 3 + 3
    combos = {(o, t, s) for o in ("sgd", "adam") for t in range(3) for s in range(2)}
    assert {(t["optimizer"], t["task_seed"], t["seed"]) for t in store} == combos
    for i, tr in enumerate(store):
        assert store.steps(i) == list(range(7)) and tr["split"] == "source" and tr["family"] == "digits"
        assert set(tr["metrics"]) == {"train_loss", "eval_loss", "eval_metric"}
        assert all(len(v) == N_REC for v in tr["metrics"].values())
        assert tr["hparams"] == next(o["hparams"] for o in small_config["optimizers"] if o["name"] == tr["optimizer"])
        assert tr["task"]["classes"] == store.task(i).info["classes"]
    # files on disk: safetensors + JSON only, never pickle (and the writers' and readers' lock files, empty of data)
    names = {p.suffix for p in small_store_path.rglob("*") if p.is_file() and p.name not in (".lohp.lock",
                                                                                              ".lohp.readers")}
    assert names == {".json", ".safetensors"}


def test_stored_trajectories_are_consistent_with_their_tasks(small_store_path):
    """Independent checks of the stored numbers: theta_0 is the task's init and the stored
    metrics are what Task.evaluate says about the stored weights."""
    store = TrajectoryStore.open(small_store_path)
    for i in range(len(store)):
        tr, task = store.trajectories[i], store.task(i)
        theta = store.theta(i)
        assert theta.shape == (N_REC, store.layout.size) and theta.dtype == torch.float32
        assert torch.equal(theta[0], task.init_theta(tr["init_seed"]))
        for k in (0, N_REC - 1):
            ev, trn = task.evaluate(theta[k], "eval"), task.evaluate(theta[k], "train")
            assert store.metrics(i)["eval_metric"][k] == pytest.approx(ev["accuracy"], abs=1e-6)
            assert store.metrics(i)["eval_loss"][k] == pytest.approx(ev["loss"], rel=1e-5)
            assert store.metrics(i)["train_loss"][k] == pytest.approx(trn["loss"], rel=1e-5)
    # same task and init seed: sgd and adam start from the same theta_0 but end elsewhere
    by = {(t["optimizer"], t["task_seed"], t["seed"]): i for i, t in enumerate(store)}
    a, b = store.theta(by[("sgd", 1, 1)]), store.theta(by[("adam", 1, 1)])
    assert torch.equal(a[0], b[0]) and not torch.equal(a[-1], b[-1])


def test_summary_matches_an_independent_computation(small_store_path):
    store = TrajectoryStore.open(small_store_path)
    s = summarize(store)
    assert s["trajectories"] == N_TRAJ and s["checksums_ok"] is True and s["complete"] is True
    assert s["parameters"] == 64 * 3 + 3 and s["steps"] == 6 and s["records_per_trajectory"] == N_REC
    assert s["size_bytes"] == sum(p.stat().st_size for p in small_store_path.rglob("*") if p.is_file())
    for name in ("sgd", "adam"):
        finals = torch.tensor([store.task(i).evaluate(store.theta(i)[-1])["accuracy"]
                               for i, t in enumerate(store) if t["optimizer"] == name], dtype=torch.float64)
        d = s["optimizers"][name]
        assert d["count"] == 6
        assert d["final_metric_mean"] == pytest.approx(finals.mean().item(), abs=1e-6)
        assert d["final_metric_std"] == pytest.approx(finals.std(unbiased=False).item(), abs=1e-6)


def test_theta_random_access_equals_slices(small_store_path):
    store = TrajectoryStore.open(small_store_path)
    raw = {n: load_file(small_store_path / "shards" / n)["theta"] for n in shard_files(small_store_path)}
    for i in range(len(store)):
        tr = store.trajectories[i]
        full = store.theta(i)
        assert torch.equal(full, raw[store.shards[tr["shard"]]["file"]][tr["index"]])
        for start, stop in [(None, None), (0, 1), (2, 5), (3, None), (None, 4), (6, 7), (-2, None),
                            (1, -1), (5, 3), (0, 100)]:
            assert torch.equal(store.theta(i, start, stop), full[start:stop]), (i, start, stop)
    assert torch.equal(store.all_thetas([3, 0]), torch.stack([store.theta(3), store.theta(0)]))
    assert store.all_thetas().shape == (N_TRAJ, N_REC, store.layout.size)
    with pytest.raises(IndexError):
        store.theta(N_TRAJ)
    with pytest.raises(IndexError):
        store.theta(-1)


def test_theta_reads_only_its_rows(small_store_path, monkeypatch):
    """Random access goes through safetensors' memory-mapped slices, not a full load."""
    import safetensors.torch

    def boom(*a, **k):
        raise AssertionError("the whole shard was loaded")

    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    monkeypatch.setattr(safetensors.torch, "load", boom)
    monkeypatch.setattr(torch, "load", boom)
    store = TrajectoryStore.open(small_store_path)
    assert store.theta(5, 1, 3).shape == (2, store.layout.size)


def test_record_every(tmp_path):
    cfg = make_config(family_config={"n_way": 2}, optimizers=("sgd",), tasks=1, steps=7, record_every=3)
    store = prepare(tmp_path / "s", cfg)
    assert store.steps(0) == [0, 3, 6, 7] and store.theta(0).shape == (4, 64 * 2 + 2)
    assert len(store.metrics(0)["eval_metric"]) == 4


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("damage", ["shard_and_record", "record_only", "tensors_only", "manifest",
                                    "corrupt_shard", "truncated_shard", "corrupt_record"])
def test_resume_after_simulated_interruption(store_copy, small_store_path, small_config, damage):
    shards = store_copy / "shards"
    victim = "shard-00002"
    if damage in ("shard_and_record", "tensors_only"):
        (shards / f"{victim}.safetensors").unlink()
    if damage in ("shard_and_record", "record_only"):
        (shards / f"{victim}.json").unlink()
    if damage == "manifest":
        (store_copy / "manifest.json").unlink()
    if damage == "corrupt_shard":
        data = bytearray((shards / f"{victim}.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (shards / f"{victim}.safetensors").write_bytes(bytes(data))
    if damage == "truncated_shard":
        data = (shards / f"{victim}.safetensors").read_bytes()
        (shards / f"{victim}.safetensors").write_bytes(data[: len(data) // 2])
    if damage == "corrupt_record":
        (shards / f"{victim}.json").write_text('{"file": "shard-0')
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-0000[013].*")}

    prepare(store_copy, small_config)
    assert_same_store(store_copy, small_store_path)
    assert_no_duplicates(store_copy, N_TRAJ)
    # completed shards are kept, not recomputed
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-0000[013].*")} == kept


def test_resume_ignores_and_removes_leftover_temporary_files(store_copy, small_store_path, small_config):
    shards = store_copy / "shards"
    (shards / "shard-00001.json").unlink()
    (shards / "shard-00001.safetensors").rename(shards / ".shard-00001.safetensors.x1y2z3.tmp")
    (shards / ".shard-00001.json.abcdef.tmp").write_text('{"half')
    (store_copy / ".manifest.json.qwerty.tmp").write_text("{")
    with pytest.raises(LohpError, match="missing"):  # the renamed file is not taken for the shard
        TrajectoryStore.open(store_copy)
    prepare(store_copy, small_config)
    assert_same_store(store_copy, small_store_path)
    assert_no_duplicates(store_copy, N_TRAJ)
    assert not list(store_copy.rglob("*.tmp"))


def test_resume_after_kill_during_the_first_config_write(tmp_path, small_config):
    """Killed before anything but a half-written config.json temp file exists."""
    out = tmp_path / "s"
    (out / "shards").mkdir(parents=True)
    (out / ".config.json.k1ll3d.tmp").write_text('{"family": "dig')
    cfg = make_config(family_config={"n_way": 2}, optimizers=("sgd",), tasks=1, steps=2)
    store = prepare(out, cfg)
    assert len(store) == 1 and store.complete and not list(out.rglob("*.tmp"))


def test_resume_is_idempotent(store_copy, small_config):
    before = {p.name: p.stat().st_mtime_ns for p in (store_copy / "shards").iterdir()}
    prepare(store_copy, small_config)
    after = {p.name: p.stat().st_mtime_ns for p in (store_copy / "shards").iterdir()}
    assert before == after
    assert_no_duplicates(store_copy, N_TRAJ)


KILL_ARGS = ["prepare", "--tasks", "3", "--seeds", "1", "--steps", "8", "--batch-size", "8", "--n-way", "3",
             "--optimizers", "sgd,adam", "--shard-runs", "1", "--seed", "5"]


@pytest.mark.slow
def test_kill_9_during_prepare_then_resume_equals_uninterrupted(tmp_path, cli):
    out, ref = tmp_path / "killed", tmp_path / "ref"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "lohp.cli", *KILL_ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        def shard_written() -> bool:
            return (out / "shards").is_dir() and any((out / "shards").glob("shard-*.json"))

        while not shard_written():
            assert proc.poll() is None, "lohp prepare ended before it could be killed"
            assert time.monotonic() < deadline, "lohp prepare wrote no shard in time"
            time.sleep(0.005)
        assert proc.poll() is None, "lohp prepare ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    records = sorted((out / "shards").glob("shard-*.json"))
    assert 1 <= len(records) < 6, "the kill should land mid-run"
    # the interrupted folder is a consistent (incomplete) store, or says how to resume
    try:
        partial = TrajectoryStore.open(out, verify=True)
        assert not partial.complete and len(partial) <= len(records)
    except LohpError as exc:
        assert "resume" in str(exc)
    done_before = {p.name: p.stat().st_mtime_ns for p in records}

    code, _, err = cli(*KILL_ARGS, "--out", out)
    assert code == 0, err
    code, _, err = cli(*KILL_ARGS, "--out", ref)
    assert code == 0, err
    assert_same_store(out, ref)
    assert_no_duplicates(out, 6)
    for name, mtime in done_before.items():  # shards finished before the kill were kept
        assert (out / "shards" / name).stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_save_tensors_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "t.safetensors"
    store_mod.atomic_save_tensors(target, {"a": torch.ones(3)})
    old = target.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "save_file", half_then_fail)
    with pytest.raises(OSError):
        store_mod.atomic_save_tensors(target, {"a": torch.zeros(3)})
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


def test_atomic_write_json_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    store_mod.atomic_write_json(target, {"v": 1})

    def fail(*a, **k):
        raise OSError("no space")

    monkeypatch.setattr(store_mod.os, "fsync", fail)
    with pytest.raises(OSError):
        store_mod.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_same_tensors_give_the_same_bytes(tmp_path):
    """Equal tensors and metadata must give equal files (resume is bit for bit, checksums are stable),
    whatever order safetensors' hash map puts the metadata keys in."""
    tensors = {"theta": torch.randn(2, 3, 4), "steps": torch.arange(3)}
    meta = {"format": "x/1", "optimizer": "adam", "seed": "3", "layout": '{"a": [1, 2]}'}
    digests = set()
    for i in range(12):
        store_mod.atomic_save_tensors(tmp_path / f"f{i}.safetensors", tensors, metadata=dict(meta))
        digests.add(sha(tmp_path / f"f{i}.safetensors"))
    assert len(digests) == 1
    back = load_file(tmp_path / "f0.safetensors")
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_leftover_temp_files_are_not_counted_as_shards(store_copy):
    shards = store_copy / "shards"
    (shards / ".shard-00000.safetensors.abc123.tmp").write_bytes(b"garbage")
    (shards / ".shard-00009.safetensors.abc123.tmp").write_bytes(b"garbage")
    store = TrajectoryStore.open(store_copy, verify=True)
    assert len(store.shards) == N_SHARDS and len(store) == N_TRAJ
    assert not any(sh["file"].endswith(".tmp") for sh in store.shards)
    assert summarize(store)["shards"] == N_SHARDS


# ----------------------------------------------------------------------------- damage
def test_truncated_shard_is_a_clear_error(store_copy):
    p = store_copy / "shards" / "shard-00001.safetensors"
    data = p.read_bytes()
    for keep in (len(data) - 1, len(data) // 2, 20, 4, 0):
        p.write_bytes(data[:keep])
        with pytest.raises(LohpError, match="truncated or corrupt|does not match"):
            TrajectoryStore.open(store_copy)


def test_corrupt_bytes_fail_the_checksum(store_copy):
    p = store_copy / "shards" / "shard-00003.safetensors"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0x01  # one bit in the tensor data: the header still parses
    p.write_bytes(bytes(data))
    store = TrajectoryStore.open(store_copy)  # the cheap structural check cannot see it
    with pytest.raises(LohpError, match="checksum mismatch for shard shard-00003"):
        store.verify()
    with pytest.raises(LohpError, match="checksum"):
        TrajectoryStore.open(store_copy, verify=True)
    with pytest.raises(LohpError, match="checksum"):
        summarize(store)
    i = next(i for i, t in enumerate(store) if store.shards[t["shard"]]["file"] == p.name)
    with pytest.raises(LohpError, match="checksum"):
        store.theta(i)  # reading a trajectory checks its shard first
    j = next(i for i, t in enumerate(store) if store.shards[t["shard"]]["file"] != p.name)
    assert store.theta(j).shape[0] == N_REC  # the intact shards still read


def edit_manifest(path: Path, fn) -> None:
    """A manifest whose content is wrong but sealed (as a faulty writer would leave it), so the
    checks behind the checksum are what is tested; an unsealed edit is test_sealed's case."""
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    atomic_write_json(path / "manifest.json", m, sealed=True)


def _transpose_layout(m):
    e = m["layout"]["entries"][0]
    e["shape"] = e["shape"][::-1]


def _rename_layout(m):
    m["layout"]["entries"][1]["name"] = "head.bias"


def _swap_files(m):  # shards 0 (sgd) and 2 (adam) have the same shape
    a, b = m["shards"][0], m["shards"][2]
    a["file"], b["file"] = b["file"], a["file"]


def _drop_trajectory(m):
    m["trajectories"].pop()


def _bad_index(m):
    m["trajectories"][0]["index"] = 9


def _bad_shard(m):
    m["trajectories"][0]["shard"] = 17


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["shards"][0].update(runs=3), "does not match"),
    (lambda m: m["shards"][1].update(records=5), "does not match"),
    (lambda m: m["layout"]["entries"].pop(), "does not match|malformed"),
    (lambda m: m["layout"].update(size=10), "malformed"),
    (lambda m: m["shards"][2].update(file="shard-00042.safetensors"), "missing"),
    (_swap_files, "checksum mismatch"),
    (lambda m: m.pop("layout"), "lacks"),
    (lambda m: m.pop("config"), "lacks"),
    (lambda m: m["shards"][1].pop("runs"), "lacks"),
    (_transpose_layout, "does not match the model of its digits tasks"),
    (_rename_layout, "does not match the model of its digits tasks"),
    (lambda m: m.update(format="something-else/9"), "not a lohp-trajectories"),
    (_drop_trajectory, "does not match"),
    (_bad_index, "does not match"),
    (_bad_shard, "does not match"),
], ids=["runs", "records", "layout-entry", "layout-size", "missing-file", "swapped-shard", "no-layout",
        "no-config", "no-runs", "layout-transposed", "layout-renamed",
        "format", "dropped-trajectory", "bad-index", "bad-shard"])
def test_manifest_not_matching_shards_is_a_clear_error(store_copy, edit, message):
    edit_manifest(store_copy, edit)
    with pytest.raises(LohpError, match=message):
        TrajectoryStore.open(store_copy, verify=True)


def test_missing_or_corrupt_manifest(store_copy, tmp_path):
    (store_copy / "manifest.json").write_text('{"format": "lohp-traj')
    with pytest.raises(LohpError, match="corrupt"):
        TrajectoryStore.open(store_copy)
    (store_copy / "manifest.json").unlink()
    with pytest.raises(LohpError, match="interrupted lohp prepare.*resume"):
        TrajectoryStore.open(store_copy)
    with pytest.raises(LohpError, match="no trajectory store"):
        TrajectoryStore.open(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LohpError, match="not a lohp store"):
        TrajectoryStore.open(tmp_path / "empty")


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("change", [dict(steps=7), dict(optimizers=("sgd",)), dict(tasks=4), dict(seed=4),
                                    dict(hparams={"sgd": {"lr": 0.01}}), dict(family_config={"n_way": 4})])
def test_rerun_with_other_arguments_is_a_clear_error(store_copy, small_args, change):
    before = shard_files(store_copy)
    with pytest.raises(LohpError, match="other arguments.*differs in.*same arguments"):
        prepare(store_copy, make_config(**{**small_args, **change}))
    assert shard_files(store_copy) == before  # nothing was touched
    TrajectoryStore.open(store_copy, verify=True)


def test_non_store_folder_is_refused(tmp_path, small_config):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(LohpError, match="not empty"):
        prepare(out, small_config)
    assert (out / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_a_store(store_copy):
    cfg = make_config(family_config={"n_way": 2}, optimizers=("adam",), tasks=1, steps=3)
    store = prepare(store_copy, cfg, overwrite=True)
    assert len(store) == 1 and store.complete and store.config["steps"] == 3
    assert sorted(p.name for p in (store_copy / "shards").iterdir()) == ["shard-00000.json",
                                                                         "shard-00000.safetensors"]


def test_unwritable_output_folder(tmp_path, small_config):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LohpError, match="cannot write to output folder"):
        prepare(blocker / "store", small_config)


# ----------------------------------------------------------------------------- layout checks
def test_check_layout(small_store_path):
    store = TrajectoryStore.open(small_store_path)
    store.check_layout(store.task(0).model())
    store.check_layout(store.layout)
    with pytest.raises(LohpError, match="does not match the store"):
        store.check_layout(nn.Linear(64, 4))
    with pytest.raises(LohpError, match="no parameter matches"):
        store.check_layout(nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3)))
    with pytest.raises(LohpError, match="does not match the store"):
        store.check_layout(nn.Linear(64, 3).double())
    with pytest.raises(LohpError, match="does not match the store"):
        store.check_layout(ParamLayout.from_module(nn.Linear(64, 3), ("weight",)))


def test_tensor_files_get_ordinary_permissions(tmp_path):
    """A policy folder handed to a colleague must be readable: lohp's tensor files get the
    same mode as a file Python creates (umask applied), not a temporary file's 0600."""
    import stat

    plain = tmp_path / "plain"
    plain.write_text("x")
    store_mod.atomic_save_tensors(tmp_path / "w.safetensors", {"a": torch.ones(2)})
    store_mod.atomic_write_json(tmp_path / "m.json", {"a": 1})
    want = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == want
