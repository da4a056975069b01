"""End to end on the command line: prepare a tiny wordnet store, train, generate a PEFT adapter,
load it with peft and compare with lohp's own predictions; the one-line errors of generate."""

from __future__ import annotations

import json

import pytest
import torch

FAMILY = ["--family-option", "shots=4", "--family-option", "eval_shots=4", "--family-option", "max_length=16",
          "--family-option", "pool=8"]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    from lohp.cli import main

    root = tmp_path_factory.mktemp("lora")
    for argv in (["prepare", "--family", "wordnet", "--optimizers", "adam", "--tasks", "2", "--steps", "2",
                  "--batch-size", "4", "--out", root / "store", *FAMILY],
                 ["train", "--store", root / "store", "--out", root / "policy", "--method", "lo-di", "--k", "1",
                  "--iterations", "2", "--batch-size", "2", "--channels", "8", "--token-size", "8", "--depth", "1"]):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            assert exc.code in (0, None), argv
    return root / "policy"


def test_generate_writes_a_peft_adapter_that_peft_loads_unchanged(policy_dir, tmp_path, cli):
    from lohp import lora
    from lohp.generation import Generator

    out = tmp_path / "adapter"
    code, stdout, err = cli("generate", "--policy", policy_dir, "--family", "wordnet", "--task-seed", "3",
                            "--out", out, "--no-latency")
    assert code == 0, err
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    gen = Generator.load(policy_dir)
    task = gen.family().sample(3, "heldout")
    theta = gen.generate(task).theta
    with torch.no_grad():
        ours = task.layout.functional(task.model())(theta, task.x_eval)
    model, head = lora.load_adapter(out)
    theirs = lora.adapter_logits(model, head, task.x_eval)
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))

    # the folder now holds an adapter: refused without --overwrite, replaced with it
    code, _, err = cli("generate", "--policy", policy_dir, "--task-seed", "4", "--out", out, "--no-latency")
    assert code == 2 and "already holds an adapter" in err and "--overwrite" in err and err.count("\n") <= 2
    code, _, err = cli("generate", "--policy", policy_dir, "--task-seed", "4", "--out", out, "--no-latency",
                       "--overwrite")
    assert code == 0, err


def test_generate_refuses_a_rank_the_policy_was_not_trained_for(policy_dir, tmp_path, cli):
    code, _, err = cli("generate", "--policy", policy_dir, "--rank", "4", "--out", tmp_path / "a", "--no-latency")
    assert code == 2 and "LoRA rank 4 does not match the policy" in err and not (tmp_path / "a").exists()
    code, _, err = cli("generate", "--policy", policy_dir, "--targets", "query", "--out", tmp_path / "a",
                       "--no-latency")
    assert code == 2 and "target modules" in err


def test_generate_refuses_an_unwritable_adapter_dir(policy_dir, tmp_path, cli):
    import os

    if os.geteuid() == 0:
        target = tmp_path / "file"
        target.write_text("x")  # root can write anywhere: use a path under a file instead
        code, _, err = cli("generate", "--policy", policy_dir, "--out", target / "sub", "--no-latency")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        code, _, err = cli("generate", "--policy", policy_dir, "--out", ro / "sub", "--no-latency")
    assert code == 2 and err.strip()
