"""Family options declared once (an ``Options`` dataclass): ``config()`` derived from it keeps
every key and value stores recorded before (the literal dicts below are the defaults the
hand-written ``config()`` methods gave), unknown or missing options are refused in one line
naming the known ones, and a family without ``Options`` still works."""

import dataclasses
import hashlib
import json
import pickle

import numpy as np
import pytest
import torch

from lohp.config import setting_help
from lohp.errors import LohpError
from lohp.tasks import FAMILIES, TaskFamily, make_family, register_family
from lohp.tasks import text_table as tttab
from lohp.tasks import images as timg
from lohp.tasks import text as ttext
from lohp.tasks.digits import DigitsFamily, DigitsOptions


# --------------------------------------------------------------------------- stand-in data
@pytest.fixture
def many_features(monkeypatch):
    """20 classes x 30 images of 8-d features (enough classes for the default n_way)."""
    y = np.repeat(np.arange(20), 30)
    x = torch.randn(len(y), 8, generator=torch.Generator().manual_seed(0)) + torch.from_numpy(y)[:, None].float()
    names = tuple(f"class{c}" for c in range(20))
    monkeypatch.setattr(timg, "feature_data", lambda dataset, size=64, per_class=60: (x, y, names))


@pytest.fixture
def fake_texts(monkeypatch):
    """26 categories x 40 texts; the frozen MiniLM embeddings and token ids made up."""
    texts = {f"cat{c:02d}": [f"text {c} {i}" for i in range(40)] for c in range(26)}
    monkeypatch.setattr(ttext, "wordnet_glosses", lambda: texts)
    monkeypatch.setattr(ttext, "fortune_topics", lambda: texts)

    def embed(items, max_length):
        return torch.stack([torch.full((384,), float(hash(t) % 97)) for t in items])

    monkeypatch.setattr(tttab, "frozen_embeddings", embed)
    monkeypatch.setattr(tttab, "token_ids", lambda items, max_length: torch.zeros(len(items), max_length,
                                                                                 dtype=torch.long))


def _table(path, n_classes=20, per=4):
    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        fh.write("f0,label,f1\n")
        for c in range(n_classes):
            for _ in range(per):
                a, b = rng.normal(c, 1, 2)
                fh.write(f"{a:.4f},k{c},{b:.4f}\n")
    return path


def _text_table(path, n_classes=20, per=3):
    with open(path, "w") as fh:
        fh.write("label,text\n")
        for c in range(n_classes):
            for i in range(per):
                fh.write(f"k{c},words {c} {i}\n")
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- config() unchanged
# Today's defaults, read off the hand-written config() methods (not computed by the new code).
DIGITS = {"n_way": 5, "head": "linear", "hidden": 32, "heldout_fraction": 0.3, "train_fraction": 0.6,
          "split_seed": 0, "patterns": ["*"]}
OPENCLIPART = {"n_way": 5, "shots": None, "queries": 15, "heldout_fraction": 0.35, "train_fraction": 0.6,
               "split_seed": 0, "size": 64, "per_class": 60, "patterns": ["*"]}
FASHION = {**OPENCLIPART, "heldout_fraction": 0.5, "per_class": 400}
ROTATED = {"heldout_domain": 0, "n_way": 5, "hidden": 32, "per_domain": 1600, "train_fraction": 0.6,
           "split_seed": 0, "patterns": ["*"]}
WORDNET = {"n_way": 5, "shots": 16, "eval_shots": 16, "heldout": 8, "max_length": 32, "rank": 8, "alpha": 16,
           "targets": ["query", "value"], "layers": None, "pool": 64, "split_seed": 0}
FORTUNES = {**WORDNET, "n_way": 4, "heldout": 6}
LORA = ["encoder.*lora_A*", "encoder.*lora_B*", "head.weight"]


def _table_config(path, sha256, patterns=("*",)):
    return {"path": str(path), "label": "label", "n_way": 5, "heldout": 0.3, "split_seed": 0, "per_class": None,
            "standardize": True, "hidden": 0, "train_fraction": 0.5, "sha256": sha256, "patterns": list(patterns)}


def _same(family, name, expected):
    """config() is ``expected`` (keys, values and their types) and rebuilds the family after a
    JSON round trip, as a store reopens it."""
    config = family.config()
    assert config == expected
    assert {k: type(v) for k, v in config.items()} == {k: type(v) for k, v in expected.items()}
    assert json.loads(json.dumps(config)) == config
    assert make_family(name, **json.loads(json.dumps(config))).config() == config


def test_default_configs_are_unchanged(many_features, fake_domains, fake_texts, tmp_path):
    _same(make_family("digits"), "digits", DIGITS)
    _same(make_family("openclipart"), "openclipart", OPENCLIPART)
    _same(make_family("fashion"), "fashion", FASHION)
    _same(make_family("rotated-mnist"), "rotated-mnist", ROTATED)
    _same(make_family("rotated-fashion"), "rotated-fashion", ROTATED)
    _same(make_family("wordnet"), "wordnet", WORDNET)
    _same(make_family("fortunes"), "fortunes", FORTUNES)
    table = _table(tmp_path / "t.csv")
    _same(make_family("table", path=str(table)), "table", _table_config(table, _sha(table)))
    texts = _text_table(tmp_path / "x.csv")
    _same(make_family("text-table", path=str(texts)), "text-table",
          {**_table_config(texts, _sha(texts)), "text": "text", "max_length": 32, "lora": False})
    _same(make_family("text-table", path=str(texts), lora=True), "text-table",
          {**_table_config(texts, _sha(texts), LORA), "text": "text", "max_length": 32, "lora": True, "rank": 8,
           "alpha": 16})


def test_given_options_are_recorded_as_before(many_features, fake_domains, fake_texts, tmp_path):
    """Coercions the constructors made (int, float, bool, tuple -> list, a lone target or layer,
    n_way=None meaning the family's own default) give the same config as before."""
    _same(make_family("digits", n_way=3, head="mlp", hidden=8, patterns=("2.*",)), "digits",
          {**DIGITS, "n_way": 3, "head": "mlp", "hidden": 8, "patterns": ["2.*"]})
    _same(make_family("openclipart", n_way=3, shots=2, queries=3), "openclipart",
          {**OPENCLIPART, "n_way": 3, "shots": 2, "queries": 3})
    _same(make_family("rotated-mnist", heldout_domain=45.0, n_way=3, hidden=4), "rotated-mnist",
          {**ROTATED, "heldout_domain": 45, "n_way": 3, "hidden": 4})
    _same(make_family("wordnet", n_way=None, heldout=None, targets="query", layers=2, rank="4"), "wordnet",
          {**WORDNET, "targets": ["query"], "layers": [2], "rank": 4})
    _same(make_family("fortunes", n_way=None, layers=[0, 5]), "fortunes", {**FORTUNES, "layers": [0, 5]})
    table = _table(tmp_path / "t.csv")
    _same(make_family("table", path=table, n_way=3.0, heldout=0.5, split_seed=2, standardize=0, hidden=4,
                      per_class=2, sha256=_sha(table)), "table",
          {**_table_config(table, _sha(table)), "n_way": 3, "heldout": 0.5, "split_seed": 2, "standardize": False,
           "hidden": 4, "per_class": 2})
    texts = _text_table(tmp_path / "x.csv")
    _same(make_family("text-table", path=str(texts), lora="false", rank=4), "text-table",  # rank unused: unrecorded
          {**_table_config(texts, _sha(texts)), "text": "text", "max_length": 32, "lora": False})
    _same(make_family("text-table", path=str(texts), lora="true", rank="2", patterns=["head.weight"]), "text-table",
          {**_table_config(texts, _sha(texts), ["head.weight"]), "text": "text", "max_length": 32, "lora": True,
           "rank": 2, "alpha": 16})


def test_image_folder_config_is_unchanged(tmp_path, monkeypatch):
    from PIL import Image

    from lohp.data import features as feat

    monkeypatch.setattr(feat, "features", lambda key, images, size=64, batch=64, progress=None:
                        torch.from_numpy(images.reshape(len(images), -1, 3).mean(1).astype(np.float32)))
    root = tmp_path / "imgs"
    h = hashlib.sha256()
    for c in range(20):
        (root / f"k{c:02d}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (10 * c, 5 * i, 100)).save(root / f"k{c:02d}" / f"{i}.png")
    for c in range(20):  # the folder hash as the family always computed it
        for i in range(2):
            f = root / f"k{c:02d}" / f"{i}.png"
            h.update(f"k{c:02d}/{f.name}\0".encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    expected = {k: v for k, v in _table_config(root, h.hexdigest()).items() if k != "label"}
    _same(make_family("image-folder", path=str(root)), "image-folder", {**expected, "size": 64})
    with pytest.raises(LohpError, match="unknown image-folder family setting.*label; known: .*size"):
        make_family("image-folder", path=str(root), label="x")


# --------------------------------------------------------------------------- strict options
def test_unknown_missing_and_mistyped_options_are_refused_in_one_line(fake_texts, tmp_path):
    cases = [(lambda: make_family("digits", colour=True),
              "unknown digits family setting\\(s\\) colour; known: head, heldout_fraction, hidden, n_way, patterns, "
              "split_seed, train_fraction$"),
             (lambda: DigitsFamily(n_wya=3), "unknown digits family setting\\(s\\) n_wya; known: .*n_way"),
             (lambda: make_family("table"), "the table family needs the option\\(s\\) path .*known: .*label"),
             (lambda: make_family("wordnet", shots="many"), "wordnet: shots must be an integer \\(got 'many'\\)"),
             (lambda: make_family("digits", n_way=3.5), "bad configuration for family 'digits': .*; known options: "
                                                        "head, heldout_fraction"),
             (lambda: make_family("digits", n_way=10), "n_way must be between 2 and 9"),
             (lambda: make_family("rotated-mnist", heldout_domain=50), "unknown domain 50"),
             (lambda: make_family("text-table", path=str(tmp_path), lora=True, hidden=8), "drop hidden")]
    for make, match in cases:
        with pytest.raises(LohpError, match=match) as err:
            make()
        assert "\n" not in str(err.value)


def test_options_validate_again_on_replace_and_carry_help():
    assert DigitsOptions().replace(n_way=3).n_way == 3
    with pytest.raises(LohpError, match="n_way must be between 2 and 9"):
        DigitsOptions().replace(n_way=12)
    assert DigitsOptions.from_dict(DIGITS) == DigitsOptions()
    for name, factory in FAMILIES.items():
        options = getattr(factory, "Options", None)
        if options is None:
            continue
        assert all(setting_help(f) for f in dataclasses.fields(options)), name


def test_options_read_as_attributes_and_the_family_pickles():
    fam = DigitsFamily(n_way=3, head="mlp")
    assert fam.n_way == 3 and fam.head == "mlp" and fam.options.n_way == 3 and fam.patterns == ("*",)
    with pytest.raises(AttributeError, match="no attribute 'colour'"):
        getattr(fam, "colour")
    again = pickle.loads(pickle.dumps(fam))
    assert again.config() == fam.config() and torch.equal(again.sample(1).x_train, fam.sample(1).x_train)


# --------------------------------------------------------------------------- families without Options
class _Plain(TaskFamily):
    """A third-party family as written before Options: its own __init__ and config()."""

    name = "test-plain"

    def __init__(self, n_way: int = 3, offset: float = 0.0):
        self.inner = DigitsFamily(n_way=n_way)
        self.offset = offset

    def config(self):
        return {"n_way": self.inner.n_way, "offset": self.offset}

    def sample(self, seed, split="source"):
        task = self.inner.sample(seed, split)
        return dataclasses.replace(task, family=self.name, x_train=task.x_train + self.offset)


def test_a_family_without_options_keeps_working(monkeypatch):
    from lohp.testing import check_family

    monkeypatch.delitem(FAMILIES, "test-plain", raising=False)  # the registration is undone after the test
    register_family("test-plain", _Plain, overwrite=True)
    fam = make_family("test-plain", n_way=4, offset=0.5)
    assert fam.config() == {"n_way": 4, "offset": 0.5}
    check_family(fam, name="test-plain")
    with pytest.raises(LohpError, match="bad configuration for family 'test-plain': .*colour.*; known options: "
                                        "n_way, offset$"):
        make_family("test-plain", colour=1)

    class NoConfig(TaskFamily):
        def sample(self, seed, split="source"):
            raise NotImplementedError

    with pytest.raises(NotImplementedError, match="declares no Options dataclass"):
        NoConfig().config()


def test_an_option_hidden_by_a_class_attribute_is_refused_at_definition():
    with pytest.raises(TypeError, match="option\\(s\\) head of DigitsOptions share their name"):
        class Clash(DigitsFamily):
            head = "mlp"
