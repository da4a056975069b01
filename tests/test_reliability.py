"""Reliability probes: bad data, concurrent writers, damaged files. Each refusal is one
line, exit status 2, no traceback and no file left behind."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lohp.errors import LohpError
from lohp.tasks import register_family
from lohp.tasks.digits import DigitsFamily


class NanFamily(DigitsFamily):
    """Digits whose task 1 has NaN pixels in its training split."""

    name = "test-nan"

    def sample(self, seed, split="source"):
        task = super().sample(seed, split)
        if seed == 1:
            x = task.x_train.clone()
            x[0, :3] = float("nan")
            task = replace(task, x_train=x)
        return task


class OneClassFamily(DigitsFamily):
    name = "test-one-class"

    def sample(self, seed, split="source"):
        return replace(super().sample(seed, split), n_classes=1)


register_family("test-nan", NanFamily, overwrite=True)
register_family("test-one-class", OneClassFamily, overwrite=True)


def _one_line(code, err):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("family, message", [
    ("test-nan", "task test-nan/source/1's training split holds 3 NaN or inf value(s)"),
    ("test-one-class", "has 1 class; a task needs at least 2"),
])
def test_bad_task_data_is_refused_before_a_folder_exists(tmp_path, cli, family, message):
    code, out, err = cli("prepare", "--family", family, "--out", tmp_path / "s", "--tasks", "3", "--steps", "2",
                         "--optimizers", "adam", "--n-way", "3")
    _one_line(code, err)
    assert message in err and "learning rate" not in err
    assert not (tmp_path / "s").exists()


def test_generate_refuses_a_non_finite_condition(small_store_path, tmp_path):
    from lohp import api

    api.train(small_store_path, tmp_path / "p", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 2, "batch_size": 2, "eval_tasks": 1})
    gen = api.load_policy(tmp_path / "p")
    task = gen.family().sample(0, "heldout")
    bad = replace(task, x_train=torch.full_like(task.x_train, float("nan")))
    with pytest.raises(LohpError, match="condition \\(from its training split\\) holds .* NaN or inf"):
        api.generate(gen, bad)


def test_a_second_writer_on_the_same_folder_is_refused(small_store_path, tmp_path, cli):
    from lohp.io import OutputLock

    (tmp_path / "s").mkdir()
    with OutputLock(tmp_path / "s", "lohp prepare"):
        code, out, err = cli("prepare", "--out", tmp_path / "s", "--tasks", "2", "--steps", "2", "--optimizers", "adam")
        _one_line(code, err)
        assert "is in use by another lohp prepare (pid" in err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".lohp.lock"]
    (tmp_path / "p").mkdir()
    with OutputLock(tmp_path / "p", "lohp train"):
        code, out, err = cli("train", "--store", small_store_path, "--out", tmp_path / "p", "--iterations", "2")
        _one_line(code, err)
        assert "in use by another lohp train" in err
    # released: the same commands now run
    code, out, err = cli("prepare", "--out", tmp_path / "s", "--tasks", "2", "--steps", "2", "--optimizers", "adam",
                         "--n-way", "3")
    assert code == 0, err


def test_a_flipped_byte_in_a_checkpoint_or_a_cache_is_refused(small_store_path, tmp_path, cli):
    from lohp import api
    from lohp.io import atomic_save_tensors, load_tensors

    api.train(small_store_path, tmp_path / "p", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 4, "batch_size": 2, "eval_tasks": 1, "checkpoint_every": 2})
    ckpt = tmp_path / "p" / "checkpoint.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-3] ^= 0x55
    ckpt.write_bytes(bytes(data))
    code, out, err = cli("train", "--store", small_store_path, "--out", tmp_path / "p", "--method", "lo-di",
                         "--iterations", "6", "--channels", "8", "--token-size", "8", "--depth", "1",
                         "--batch-size", "2", "--lr", "0.001")
    _one_line(code, err)
    assert "training checkpoint" in err and "delete" in err and "checkpoint.json" in err
    f = tmp_path / "c.safetensors"
    atomic_save_tensors(f, {"x": torch.arange(6.0)})
    assert torch.equal(load_tensors(f, "cache file", "rebuild")["x"], torch.arange(6.0))
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(LohpError, match="cache file .* is corrupt \\(its data do not match the sha256"):
        load_tensors(f, "cache file", "rebuild")


def _block(monkeypatch, *modules):
    import builtins
    import sys

    real = builtins.__import__

    def blocked(name, *a, **k):
        if name.split(".")[0] in modules:
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    for m in list(sys.modules):
        if m.split(".")[0] in modules:
            monkeypatch.delitem(sys.modules, m)
    monkeypatch.setattr(builtins, "__import__", blocked)


def test_every_optional_module_is_in_data_status_with_its_extra():
    from lohp.data.packages import PACKAGES
    from lohp.extras import EXTRAS

    checked = {p.packages[0].split("=")[0] for p in PACKAGES.values() if p.kind == "pip"} | {"transformers"}
    assert {package for _, package, _ in EXTRAS.values()} <= checked


@pytest.mark.parametrize("module, extra", [("PIL", "images"), ("transformers", "lora"), ("ray", "ray")])
def test_a_missing_extra_names_its_install_command(tmp_path, cli, monkeypatch, module, extra):
    import numpy as np

    if module == "PIL":
        from PIL import Image

        for c in ("a", "b", "c"):
            (tmp_path / "imgs" / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
        args = ["prepare", "--family", "image-folder", "--family-option", f"path={tmp_path / 'imgs'}",
                "--family-option", "n_way=2", "--family-option", "size=16"]
    elif module == "transformers":
        from lohp import lora

        monkeypatch.setenv("LOHP_HOME", str(tmp_path / "empty-cache"))  # no cached token ids to hide the need
        for cached in (lora.tokenizer, lora.base_model, lora._template):  # nor a model loaded by an earlier test
            cached.cache_clear()
        args = ["prepare", "--family", "fortunes", "--tasks", "1", "--steps", "1"]
    else:
        args = ["prepare", "--ray"]
    _block(monkeypatch, module)
    code, out, err = cli(*args, "--out", tmp_path / "s")
    _one_line(code, err)
    assert f"pip install -e '.[{extra}]'" in err, err


def test_generated_weights_reopen_checked(small_store_path, tmp_path):
    from lohp import api
    from lohp.generation import GeneratedWeights

    api.train(small_store_path, tmp_path / "p", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 2, "batch_size": 2, "eval_tasks": 1})
    gen = api.load_policy(tmp_path / "p")
    w = api.generate(gen, gen.family().sample(0, "heldout"))
    w.save(tmp_path / "w.safetensors")
    back = GeneratedWeights.load(tmp_path / "w.safetensors")
    assert torch.equal(back.theta, w.theta) and back.layout == w.layout
    data = bytearray((tmp_path / "w.safetensors").read_bytes())
    data[-2] ^= 0x10
    (tmp_path / "w.safetensors").write_bytes(bytes(data))
    with pytest.raises(LohpError, match="generated weights .* is corrupt"):
        GeneratedWeights.load(tmp_path / "w.safetensors")


@pytest.fixture
def special_outputs(tmp_path):
    """A FIFO, a folder and a dangling link, each where a file output might go."""
    import os

    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    link = tmp_path / "dangling.safetensors"
    link.symlink_to(tmp_path / "nowhere")
    return {"fifo": fifo, "folder": folder, "dangling link": link}


@pytest.mark.parametrize("overwrite", [False, True])
def test_generate_never_replaces_a_device_fifo_or_folder(small_store_path, tmp_path, cli, special_outputs, overwrite):
    import os
    import stat

    from lohp import api

    api.train(small_store_path, tmp_path / "p", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 2, "batch_size": 2, "eval_tasks": 1})
    for kind, out in special_outputs.items():
        code, _, err = cli("generate", "--policy", tmp_path / "p", "--out", out, "--no-latency",
                           *(["--overwrite"] if overwrite else []))
        _one_line(code, err)
        assert "never replaces anything else" in err, (kind, err)
    assert stat.S_ISFIFO(os.lstat(special_outputs["fifo"]).st_mode)
    assert special_outputs["folder"].is_dir() and special_outputs["dangling link"].is_symlink()


def test_a_device_is_refused_as_an_output_before_any_write():
    # checked on the path alone: a regression must not get to replace the machine's /dev/null
    import os

    from lohp.io import check_output_file

    with pytest.raises(LohpError, match="not a regular file \\(a device, FIFO or socket\\)"):
        check_output_file(os.devnull)


def test_every_atomic_write_and_figure_refuses_special_files(special_outputs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lohp.io import atomic_write_json
    from lohp.plotting import save_figure

    for out in special_outputs.values():
        with pytest.raises(LohpError, match="never replaces anything else"):
            atomic_write_json(out, {"a": 1})
        with pytest.raises(LohpError, match="never replaces anything else"):
            save_figure(plt.figure(), out.with_suffix(".png") if out.suffix == ".png" else out)
    assert not list(special_outputs["fifo"].parent.glob(".*.tmp"))


def test_a_link_to_a_regular_file_is_an_allowed_output(tmp_path):
    from lohp.io import atomic_write_json

    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    atomic_write_json(tmp_path / "link.json", {"a": 1})
    assert (tmp_path / "link.json").read_text().strip().startswith("{")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA (a CUDA device would be usable)")
def test_a_cuda_device_on_a_cpu_only_torch_is_one_line(small_store_path, tmp_path, cli):
    code, _, err = cli("train", "--store", small_store_path, "--out", tmp_path / "p", "--device", "cuda",
                       "--iterations", "1")
    _one_line(code, err)
    assert "device 'cuda' is not usable here" in err and not (tmp_path / "p").exists()


@pytest.mark.parametrize("args, flag", [
    (("prepare", "--tasks", "2", "--steps", "2", "--task-start", "-5"), "--task-start"),
    (("prepare", "--tasks", "2", "--steps", "2", "--seed", "-1"), "--seed"),
    (("train", "--iterations", "1", "--seed", "-1"), "--seed"),
])
def test_a_negative_seed_is_one_line(small_store_path, tmp_path, cli, args, flag):
    extra = ("--store", small_store_path) if args[0] == "train" else ()
    code, _, err = cli(*args, *extra, "--out", tmp_path / "o")
    _one_line(code, err)
    assert f"{flag} takes a whole number >= 0 (got -1" in err or f"{flag} takes a whole number >= 0 (got -5" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("setting, message", [
    ("emb_dim=abc", "--set emb_dim takes a whole number (got 'abc')"),
    ("lr=1e-3x", "--set lr takes a number (got '1e-3x')"),
    ("learn_sigma_f=maybe", "--set learn_sigma_f takes true or false (got 'maybe')"),
])
def test_set_values_take_the_fields_type(small_store_path, tmp_path, cli, setting, message):
    code, _, err = cli("train", "--store", small_store_path, "--out", tmp_path / "p", "--iterations", "1",
                       "--set", setting)
    _one_line(code, err)
    assert message in err


def test_parse_setting_keeps_a_str_field_as_typed():
    from dataclasses import dataclass

    from lohp.config import Config, parse_setting, setting

    @dataclass
    class Opts(Config):
        path: str = setting("a")
        n: int | None = setting(None)
        names: tuple[str, ...] = setting(())

    assert parse_setting(Opts, "path", "data/a,b.csv") == "data/a,b.csv"
    assert parse_setting(Opts, "path", "1e3") == "1e3"
    assert parse_setting(Opts, "n", "none") is None and parse_setting(Opts, "n", "7") == 7
    assert parse_setting(Opts, "names", "query,value") == ("query", "value")


def test_an_unknown_optimizer_in_train_optimizers_is_one_line(small_store_path, tmp_path, cli):
    code, _, err = cli("train", "--store", small_store_path, "--out", tmp_path / "p", "--iterations", "1",
                       "--optimizers", "sgd,nosuch")
    _one_line(code, err)
    assert "no trajectory of optimizer(s) nosuch; it has" in err and not (tmp_path / "p").exists()


def test_a_negative_temperature_is_one_line(small_store_path, tmp_path, cli):
    from lohp import api

    api.train(small_store_path, tmp_path / "p", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 2, "batch_size": 2, "eval_tasks": 1})
    code, _, err = cli("generate", "--policy", tmp_path / "p", "--out", tmp_path / "w.safetensors", "--no-latency",
                       "--temperature", "-1")
    _one_line(code, err)
    assert "temperature must be >= 0" in err and not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize("command", [("bench", "digits", "--quick"), ("evaluate", "--policy", "nowhere")])
def test_an_existing_result_file_is_replaced_only_with_overwrite(tmp_path, cli, command):
    out = tmp_path / "result.json"
    out.write_text('{"mine": 1}')
    code, _, err = cli(*command, "--json", out)
    _one_line(code, err)
    assert "already exists; pass --overwrite" in err and out.read_text() == '{"mine": 1}'
    # with --overwrite the check passes: the command goes on to its next refusal
    code, _, err = cli(*command, "--json", out, "--overwrite",
                       *(["--store-tasks", "0"] if command[0] == "bench" else []))
    _one_line(code, err)
    assert "already exists" not in err and out.read_text() == '{"mine": 1}'


def test_a_refused_train_or_prepare_leaves_no_folder_behind(tmp_path, cli):
    code, _, err = cli("train", "--store", tmp_path / "nowhere", "--out", tmp_path / "p", "--iterations", "1")
    _one_line(code, err)
    code, _, err = cli("prepare", "--family", "table", "--family-option", f"path={tmp_path / 'none.csv'}",
                       "--tasks", "1", "--steps", "2", "--out", tmp_path / "s")
    _one_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (("prepare", "--tasks", "abc", "--out", "o"), "Invalid value for '--tasks'"),
    (("bench", "digits", "--threads", "x"), "Invalid value for '--threads'"),
    (("prepare", "--nosuch"), "No such option: --nosuch"),
    (("prepare",), "Missing option '--out'"),
    (("nosuch",), "No such command 'nosuch'"),
])
def test_a_usage_error_is_one_line_not_a_box(tmp_path, cli, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*args)
    _one_line(code, err)
    assert message in err and "╭" not in err and "--help" in err
    assert list(tmp_path.iterdir()) == []


def test_a_store_being_read_is_not_replaced_under_its_reader(store_copy, cli, small_args):
    """prepare --overwrite while a reader (a streaming train) holds the store: refused in one
    line, the store intact; once the reader is done, the overwrite goes ahead."""
    from lohp.trajectories import TrajectoryStore

    store = TrajectoryStore.open(store_copy)
    before = sorted(p.name for p in (store_copy / "shards").iterdir())
    args = ("prepare", "--out", store_copy, "--n-way", "3", "--tasks", "2", "--steps", "2", "--optimizers", "sgd",
            "--overwrite")
    code, _, err = cli(*args)
    _one_line(code, err)
    assert "is being read by another lohp command" in err
    assert sorted(p.name for p in (store_copy / "shards").iterdir()) == before
    assert torch.isfinite(store.theta(0)).all()  # the reader still reads
    store.close()
    code, _, err = cli(*args)
    assert code == 0, err
    assert len(TrajectoryStore.open(store_copy)) == 2


def test_a_signal_inside_an_uninterrupted_block_is_delivered_after_it():
    """Ctrl-C / SIGTERM while a checkpoint's files are replaced waits for the group to be whole
    (then reaches the handler that was installed), instead of splitting the group."""
    import os
    import signal

    from lohp.io import uninterrupted

    seen: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes: give it every chance
                pass
            assert seen == []
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is not None and seen == [signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGTERM)  # the caller's handler is back
        for _ in range(100):
            pass
        assert seen == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)
