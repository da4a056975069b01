"""Sealed metadata: the JSON lohp reads back (a store's manifest and config, a policy's and a
checkpoint's description) and the metadata of its tensor files carry a checksum; an edit is
refused in one line, an artefact written before sealing opens with one warning line."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lohp import io
from lohp.errors import LohpError


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(io, "_WARNED", set())


def _edit_json(path, change):
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _one_line(code, err):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_sealed_json_round_trips_and_refuses_any_edit(tmp_path):
    path = tmp_path / "m.json"
    obj = {"steps": 8, "seeds": (1, 2), "split": {"seed": 0}, "lr": 0.1 + 0.2, 3: "int key"}
    io.atomic_write_json(path, obj, sealed=True)
    back = io.read_json(path, "manifest", sealed=True)
    assert back == json.loads(json.dumps(obj))  # the object as JSON gives it back, without the checksum
    for change in (lambda o: o.update(steps=9), lambda o: o["split"].update(seed=1), lambda o: o.pop("lr"),
                   lambda o: o.update(extra=True)):
        io.atomic_write_json(path, obj, sealed=True)
        _edit_json(path, change)
        with pytest.raises(LohpError, match="was changed after lohp wrote it") as err:
            io.read_json(path, "manifest", sealed=True)
        assert "\n" not in str(err.value)
    # a reformatted but unchanged file (other indentation) still opens
    io.atomic_write_json(path, obj, sealed=True)
    path.write_text(json.dumps(json.loads(path.read_text())))
    assert io.read_json(path, "manifest", sealed=True)["steps"] == 8


def test_an_unsealed_json_opens_with_one_warning_line(tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"steps": 8}))
    assert io.read_json(path, "manifest", sealed=True) == {"steps": 8}
    assert io.read_json(path, "manifest", sealed=True) == {"steps": 8}
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "without a metadata checksum" in err


def test_tensor_metadata_is_sealed(tmp_path, capsys):
    import torch

    path = tmp_path / "w.safetensors"
    io.atomic_save_tensors(path, {"w": torch.ones(3)}, metadata={"layout": "[1,2]", "split_seed": "0"})
    assert torch.equal(io.load_tensors(path, "weights", "fix")["w"], torch.ones(3))
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    save_file(load_file(str(path)), str(path), metadata={**meta, "split_seed": "1"})  # data intact, metadata edited
    with pytest.raises(LohpError, match="metadata changed after lohp wrote it"):
        io.load_tensors(path, "weights", "fix")
    # written before sealing (data digest only): opens, one warning line
    old = {k: v for k, v in meta.items() if k != io.META_DIGEST_KEY}
    save_file(load_file(str(path)), str(path), metadata=old)
    capsys.readouterr()
    io.load_tensors(path, "weights", "fix")
    assert "without a metadata checksum" in capsys.readouterr().err


def test_an_edited_store_manifest_or_config_is_refused(store_copy, cli):
    def seed_plus_one(m):
        m["trajectories"][0]["task_seed"] += 1

    _edit_json(store_copy / "manifest.json", seed_plus_one)
    code, _, err = cli("inspect", store_copy)
    _one_line(code, err)
    assert "manifest" in err and "was changed after lohp wrote it" in err


def test_an_edited_store_config_is_refused_on_resume(store_copy, small_args, cli):
    _edit_json(store_copy / "config.json", lambda c: c.update(steps=c["steps"] + 1))
    code, _, err = cli("prepare", "--out", store_copy, "--family", "digits", "--n-way", "3", "--tasks", "3",
                       "--steps", "6")
    _one_line(code, err)
    assert "store config" in err and "was changed after lohp wrote it" in err


def test_a_store_written_before_sealing_opens_with_one_warning(store_copy, capsys):
    from lohp.trajectories import TrajectoryStore

    _edit_json(store_copy / "manifest.json", lambda m: m.pop("checksum"))
    capsys.readouterr()
    store = TrajectoryStore.open(store_copy)
    assert len(store) > 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "without a metadata checksum" in err


def test_an_edited_policy_description_is_refused(small_store_path, tmp_path, cli):
    from lohp import api

    api.train(small_store_path, tmp_path / "p", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 2, "batch_size": 2, "eval_tasks": 1})
    # the held-out classes follow split_seed: an edit would silently change what the policy serves
    _edit_json(tmp_path / "p" / "policy.json", lambda m: m["family_config"].update(split_seed=1))
    code, _, err = cli("generate", "--policy", tmp_path / "p", "--out", tmp_path / "w.safetensors", "--no-latency")
    _one_line(code, err)
    assert "policy description" in err and "was changed after lohp wrote it" in err
    assert not (tmp_path / "w.safetensors").exists()


# --------------------------------------------------------------------------- size bounds
@pytest.mark.parametrize("size", [("--tasks", "1000000000"), ("--steps", "1000000000")])
def test_a_store_that_cannot_fit_is_refused_before_any_work(tmp_path, cli, size):
    import time

    t0 = time.perf_counter()
    code, _, err = cli("prepare", "--out", tmp_path / "s", "--n-way", "3", *size)
    _one_line(code, err)
    assert "needs about" in err and "TB of disk" in err and "--yes" in err
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "s").exists()


def test_yes_runs_what_the_estimate_refuses(tmp_path, cli, monkeypatch):
    import importlib

    stage_one = importlib.import_module("lohp.trajectories.prepare")

    monkeypatch.setattr(stage_one, "available_memory", lambda: 1000)  # a machine with 1 KB free
    args = ("prepare", "--n-way", "3", "--tasks", "2", "--steps", "2", "--optimizers", "sgd")
    code, _, err = cli(*args, "--out", tmp_path / "s")
    _one_line(code, err)
    assert "of memory, and 1.0 KB is available" in err and not (tmp_path / "s").exists()
    code, _, err = cli(*args, "--out", tmp_path / "s", "--yes")
    assert code == 0, err
    assert (tmp_path / "s" / "manifest.json").exists()


def test_evaluate_refuses_tasks_that_cannot_fit(small_store_path, tmp_path, cli, monkeypatch):
    from lohp import api
    from lohp.bench import evaluate as ev

    api.train(small_store_path, tmp_path / "p", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 2, "batch_size": 2, "eval_tasks": 1})
    monkeypatch.setattr(ev, "available_memory", lambda: 10_000_000)  # 10 MB: far from 100,000 tasks
    code, _, err = cli("evaluate", "--policy", tmp_path / "p", "--tasks", "100000", "--json", tmp_path / "e.json")
    _one_line(code, err)
    assert "100,000 held-out tasks needs about" in err and "of memory" in err and not (tmp_path / "e.json").exists()
