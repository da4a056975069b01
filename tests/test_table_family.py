"""The generic `table` family on CSV / TSV / npz files made here: conformance, bad input,
a moved or changed file, and prepare / train / generate from the command line."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lohp.errors import LohpError
from lohp.tasks import make_family
from lohp.testing import check_family


def _blobs(n_classes=10, per=12, f=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, f))
    x = np.concatenate([c + rng.normal(0, 1, (per, f)) for c in centres])
    y = np.repeat([f"class{c}" for c in range(n_classes)], per)
    return x, y


def _csv(path, x, y, label="label", delimiter=","):
    cols = [f"f{i}" for i in range(x.shape[1])]
    with open(path, "w") as fh:
        fh.write(delimiter.join(cols[:2] + [label] + cols[2:]) + "\n")
        for row, lab in zip(x, y):
            vals = [f"{v:.5f}" for v in row]
            fh.write(delimiter.join(vals[:2] + [lab] + vals[2:]) + "\n")
    return path


@pytest.fixture
def table(tmp_path):
    return _csv(tmp_path / "data.csv", *_blobs())


@pytest.mark.parametrize("options", [{}, {"hidden": 8}, {"per_class": 4, "standardize": False}])
def test_csv_table_passes_the_conformance_check(table, options):
    fam = make_family("table", path=str(table), n_way=3, **options)
    check_family(fam, name="table")
    assert len(fam.heldout_classes) == 3 and len(fam.source_classes) == 7
    held = {c for s in range(20) for c in fam.sample(s, "heldout").info["classes"]}
    src = {c for s in range(20) for c in fam.sample(s, "source").info["classes"]}
    assert held.isdisjoint(src)


def test_tsv_and_npz_tables_read_the_same_data(tmp_path):
    x, y = _blobs()
    a = make_family("table", path=str(_csv(tmp_path / "d.csv", x, y)), n_way=3)
    b = make_family("table", path=str(_csv(tmp_path / "d.tsv", x, y, delimiter="\t")), n_way=3)
    np.savez(tmp_path / "d.npz", X=x, y=y)
    c = make_family("table", path=str(tmp_path / "d.npz"), n_way=3)
    ta, tb, tc = (f.sample(3, "heldout") for f in (a, b, c))
    assert np.allclose(ta.x_train, tb.x_train, atol=1e-4) and np.allclose(ta.x_train, tc.x_train, atol=1e-4)
    assert (ta.y_eval == tc.y_eval).all()


def test_standardisation_uses_source_classes_only(table):
    fam = make_family("table", path=str(table), n_way=3)
    import torch

    src_rows = torch.cat([fam._x[np.concatenate([fam._train_idx[c], fam._eval_idx[c]])] for c in fam.source_classes])
    assert torch.allclose(src_rows.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(src_rows.std(0, unbiased=False), torch.ones(6), atol=1e-4)


@pytest.mark.parametrize("make,options,match", [
    (lambda p: _csv(p, *_blobs(), label="species"), {}, "no label column 'label'.*label=COLUMN"),
    (lambda p: _csv(p, *_blobs(n_classes=4)), {"n_way": 3}, "fewer than n_way"),
    (lambda p: _csv(p, *_blobs(per=1)), {"n_way": 3}, "at least 2"),
    (lambda p: p.write_text("a,label\nx,1\ny,2\n") and p, {}, "not a number"),
    (lambda p: p.write_text("a,label\nnan,1\n1,2\n") and p, {}, "NaN or inf"),
    (lambda p: p, {}, "not found.*path="),
])
def test_bad_tables_are_refused_in_one_line(tmp_path, make, options, match):
    path = tmp_path / "bad.csv"
    make(path)
    with pytest.raises(LohpError, match=match) as err:
        make_family("table", path=str(path), **options)
    assert "\n" not in str(err.value)


def test_prepare_train_generate_with_a_moved_and_a_changed_file(tmp_path, cli, table):
    store, pol = tmp_path / "store", tmp_path / "pol"
    code, _, err = cli("prepare", "--family", "table", "--family-option", f"path={table}", "--n-way", "3",
                       "--optimizers", "adam", "--tasks", "4", "--seeds", "1", "--steps", "4", "--out", store)
    assert code == 0, err
    moved = tmp_path / "elsewhere.csv"
    shutil.move(table, moved)
    code, _, err = cli("train", "--store", store, "--out", pol, "--iterations", "3", "--channels", "8",
                       "--token-size", "8", "--depth", "1")
    assert code == 2 and "path=" in err
    code, _, err = cli("train", "--store", store, "--out", pol, "--iterations", "3", "--channels", "8",
                       "--token-size", "8", "--depth", "1", "--family-option", f"path={moved}")
    assert code == 0, err
    code, _, err = cli("generate", "--policy", pol, "--task-seed", "2", "--out", tmp_path / "w.safetensors")
    assert code == 0 and (tmp_path / "w.safetensors").exists(), err
    lines = moved.read_text().splitlines(keepends=True)
    moved.write_text("".join(lines + lines[1:2]))  # one row more
    code, _, err = cli("generate", "--policy", pol, "--task-seed", "2", "--out", tmp_path / "w2.safetensors")
    assert code == 2 and "changed since the store was made" in err


def _image_folder(root, n_classes=8, per=6, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(n_classes):
        (root / f"kind{c}").mkdir(parents=True)
        colour = rng.integers(0, 255, 3)
        for i in range(per):
            px = np.clip(colour + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / f"kind{c}" / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folder_family_features_split_and_bad_images(tmp_path, monkeypatch):
    """Frozen features per image (a stand-in backbone: mean colour, so no weights load here),
    the table family's splits, the folder's content hash, and an image that does not decode."""
    import torch

    from lohp.data import features as feat

    seen = {}

    def fake_features(key, images, size=64, batch=64, progress=None):
        seen["n"], seen["key"] = len(images), key
        return torch.from_numpy(images.reshape(len(images), -1, 3).mean(1).astype(np.float32))

    monkeypatch.setattr(feat, "features", fake_features)
    root = _image_folder(tmp_path / "imgs")
    fam = make_family("image-folder", path=str(root), n_way=2, size=16)
    check_family(fam, name="image-folder")
    assert seen["n"] == 48 and len(fam.heldout_classes) == 2 and fam.n_features == 3
    assert fam.config()["size"] == 16 and "label" not in fam.config()
    (root / "kind0" / "0.jpg").write_bytes(b"not an image")
    with pytest.raises(LohpError, match="changed since"):
        make_family("image-folder", **fam.config())
    with pytest.raises(LohpError, match="kind0/0.jpg does not decode"):
        make_family("image-folder", path=str(root), n_way=2)
    with pytest.raises(LohpError, match="no class sub-folders"):
        make_family("image-folder", path=str(tmp_path))


def _word_csv(path, words):
    """A text table: one row "a word: W" labelled with its group, per word."""
    with open(path, "w") as fh:
        fh.write("label,text\n")
        for k, ws in words.items():
            for w in ws:
                fh.write(f"{k},a word: {w}\n")
    return path


def test_text_table_family_embeds_texts_and_refuses_empty_ones(tmp_path):
    """Frozen MiniLM embeddings of each text (real model, a few dozen short texts)."""
    import torch

    torch.set_num_threads(1)
    words = {"fruit": ["apple", "pear", "plum", "cherry", "mango", "grape"],
             "tool": ["hammer", "saw", "drill", "wrench", "chisel", "pliers"],
             "animal": ["horse", "tiger", "otter", "eagle", "whale", "fox"],
             "colour": ["red", "blue", "green", "yellow", "violet", "orange"],
             "city": ["paris", "tokyo", "lagos", "lima", "oslo", "cairo"],
             "sport": ["tennis", "rugby", "golf", "hockey", "boxing", "rowing"],
             "metal": ["iron", "copper", "zinc", "gold", "silver", "tin"]}
    path = _word_csv(tmp_path / "t.csv", words)
    fam = make_family("text-table", path=str(path), n_way=2)
    check_family(fam, name="text-table")
    assert fam.n_features == 384 and len(fam.heldout_classes) == 2
    path.write_text("label,text\nfruit,apple\nfruit,\n")
    with pytest.raises(LohpError, match="line 3: the text is empty"):
        make_family("text-table", path=str(path), n_way=2)
    with pytest.raises(LohpError, match="no column 'body'.*text=COLUMN"):
        make_family("text-table", path=str(tmp_path / "t.csv"), text="body")


def test_text_table_lora_generates_lora_and_head_on_token_ids(tmp_path):
    """``lora=true``: the target is MiniLM + LoRA on token ids, the condition the class means
    of the frozen embeddings of the training texts (checked against a direct embedding)."""
    import torch

    from lohp.data.text import frozen_embeddings, token_ids
    from lohp.lora import LORA_PATTERNS

    torch.set_num_threads(1)
    words = {"fruit": ["apple", "pear", "plum", "cherry"], "tool": ["hammer", "saw", "drill", "wrench"],
             "animal": ["horse", "tiger", "otter", "eagle"], "city": ["paris", "tokyo", "lagos", "lima"],
             "metal": ["iron", "copper", "zinc", "gold"]}
    path = _word_csv(tmp_path / "t.csv", words)
    fam = make_family("text-table", path=str(path), n_way=2, lora="true", rank=2, standardize=False)
    assert fam.config()["lora"] is True and fam.config()["rank"] == 2
    assert fam.patterns == LORA_PATTERNS and fam.optimizer_defaults["adam"]["lr"] == 5e-3
    check_family(fam, name="text-table")
    task = fam.sample(0, "source")
    texts = {f"a word: {w}": k for k, ws in words.items() for w in ws}
    ids = token_ids(list(texts), 32)
    # Each training row's token ids are some text's ids, and the condition is the mean embedding
    # of the training texts of each label.
    emb = frozen_embeddings(list(texts), 32)
    for label in range(2):
        rows = task.x_train[task.y_train == label]
        match = [int((ids == r).all(1).nonzero()[0]) for r in rows]
        assert len({list(texts.values())[i] for i in match}) == 1
        torch.testing.assert_close(task.condition()[label], emb[match].mean(0), atol=1e-5, rtol=1e-5)
    names = {n for n in task.layout.names}
    assert any("lora_A" in n for n in names) and any("head" in n or "classifier" in n for n in names)
    with pytest.raises(LohpError, match="does not match the policy"):
        fam.check_policy({**fam.config(), "rank": 4})
    with pytest.raises(LohpError, match="drop hidden"):
        make_family("text-table", path=str(path), n_way=2, lora=True, hidden=8)


def test_command_line_option_text_takes_the_options_types(tmp_path):
    """--family-option's generic parsing turns 2020 into a number and a,b into a list; a
    str option gets its text back, a number option refuses text in one line."""
    from lohp.cli.common import parse_family_options

    folder = tmp_path / "data"
    folder.mkdir()
    path = _csv(folder / "a,b.csv", *_blobs(), label="2020")
    opts = parse_family_options([f"path={path}", "label=2020", "n_way=3"])
    fam = make_family("table", **opts)
    assert fam.options.path == str(path) and fam.options.label == "2020"
    assert fam.sample(0).n_classes == 3
    with pytest.raises(LohpError, match="table: n_way must be an integer \\(got 'abc'\\)"):
        make_family("table", **parse_family_options([f"path={path}", "n_way=abc"]))


@pytest.mark.parametrize("kind, message", [
    ("gzip", "is not a UTF-8 text table (a compressed or binary file?)"),
    ("two labels", "has 2 columns named 'label'"),
    ("label only", "has only the label column 'label'"),
    ("huge", "1 row(s) hold features beyond float32's range"),
    ("folder", "is a folder; pass --family-option path= the table file"),
])
def test_bad_tables_are_one_line(tmp_path, kind, message):
    import gzip

    path = tmp_path / "t.csv"
    if kind == "gzip":
        path.write_bytes(gzip.compress(b"f0,label\\n1,a\\n2,b\\n" * 50))
    elif kind == "two labels":
        path.write_text("f0,label,label\n1,a,a\n2,b,b\n")
    elif kind == "label only":
        path.write_text("label\na\nb\n")
    elif kind == "huge":
        x, y = _blobs()
        x[3, 1] = 1e39
        _csv(path, x, y)
    else:
        path.mkdir()
    with pytest.raises(LohpError) as info:
        make_family("table", path=str(path), n_way=2).sample(0)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    x, y = _blobs()
    path = _csv(tmp_path / "t.csv", x, y, label="label")
    text = path.read_text()
    path.write_bytes("\ufeff".encode() + text.replace("f0,", "label2,", 1).encode())
    fam = make_family("table", path=str(path), n_way=3, label="label")
    assert fam.sample(0).n_classes == 3
    first = tmp_path / "first.csv"
    first.write_bytes("\ufefflabel,f0\n".encode() + b"".join(f"{lab},{v:.3f}\n".encode() for lab, v in zip(y, x[:, 0])))
    assert make_family("table", path=str(first), n_way=3).sample(0).n_classes == 3


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_an_unreadable_table_is_one_line_for_an_unprivileged_user(tmp_path):
    """The file exists but its reader may not open it (root reads everything, so the check
    runs in a forked child that has dropped to the user nobody)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        folder.chmod(0o755)
        table = folder / "t.csv"
        table.write_text("a,label\n1,0\n2,1\n3,0\n")
        table.chmod(0o000)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop to nobody, try, report the message
            os.close(read)
            try:
                os.setgid(65534)
                os.setuid(65534)
                make_family("table", path=str(table))
                msg = "opened"
            except LohpError as exc:
                msg = "LohpError: " + str(exc)
            except BaseException as exc:  # noqa: BLE001
                msg = f"{type(exc).__name__}: {exc}"
            os.write(write, msg.encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as fh:
            msg = fh.read()
        assert msg.startswith("LohpError: cannot read the table") and "Permission denied" in msg, msg
        assert "\n" not in msg
    finally:
        shutil.rmtree(folder, ignore_errors=True)
