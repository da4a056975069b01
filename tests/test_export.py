"""Export targets (lohp/export.py): lohp generate writes through the target registered for
the policy's structure kind; a new target is one registration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lohp.errors import LohpError
from lohp.export import ExportTarget, get_target, register_target, target_for, target_names
from lohp.generation import GeneratedWeights


def test_defaults_and_lookup():
    assert target_for("class-rows").name == "safetensors" and target_for("no-such-kind").name == "safetensors"
    with pytest.raises(LohpError, match="unknown export target 'nope'; choose one of"):
        get_target("nope")
    with pytest.raises(LohpError, match="already registered"):
        register_target(ExportTarget("safetensors"))


def test_a_registered_target_writes_lohp_generates_output(cli, small_store_path, tmp_path, monkeypatch):
    from lohp import export

    code, _, err = cli("train", "--store", small_store_path, "--out", tmp_path / "p", "--method", "lo-di",
                       "--iterations", "2", "--channels", "8", "--depth", "1", "--eval-every", "100")
    assert code == 0, err
    kind = json.loads((tmp_path / "p" / "policy.json").read_text())["structure"]["kind"]
    seen = {}

    def write(out, overwrite, task, weights, info):
        np.save(out, weights.theta.numpy())
        seen.update(task=task.name, info=info)
        return out

    monkeypatch.setattr(export, "_TARGETS", dict(export._TARGETS))  # registration undone after the test
    register_target(ExportTarget("npy", kinds=(kind,), write=write, describe="a NumPy array"))
    assert "npy" in target_names() and target_for(kind).name == "npy"
    out = tmp_path / "w.npy"
    code, _, err = cli("generate", "--policy", tmp_path / "p", "--out", out, "--no-latency")
    assert code == 0, err
    theta = np.load(out)
    # without it, the default target writes the same weights as a safetensors file
    monkeypatch.setattr(export, "_TARGETS", {k: v for k, v in export._TARGETS.items() if k != "npy"})
    code, _, err = cli("generate", "--policy", tmp_path / "p", "--out", tmp_path / "w.safetensors", "--no-latency")
    assert code == 0, err
    code, _, err = cli("generate", "--policy", tmp_path / "p", "--out", tmp_path / "w.safetensors", "--no-latency")
    assert code == 2 and "already exists" in err  # the default target's check: nothing overwritten
    ref = GeneratedWeights.load(tmp_path / "w.safetensors")
    np.testing.assert_allclose(theta, ref.theta.numpy(), rtol=0, atol=0)
    assert seen["info"]["method"] == "lo-di" and seen["task"]
