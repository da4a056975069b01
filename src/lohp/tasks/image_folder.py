"""The ``image-folder`` family: one sub-folder per class of PNG / JPEG files, seen through
the frozen EfficientNet-Lite0 backbone (1,280-d pooled features, cached by the folder's
content hash). Classes, rows and tasks are split exactly as in the ``table`` family::

    lohp prepare --family image-folder --family-option path=my_images/ --family-option n_way=3 ...

Needs the ``images`` extra (``pip install -e '.[images]'``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from lohp.errors import LohpError
from lohp.tasks.table import TableFamily, class_index

SUFFIXES = (".png", ".jpg", ".jpeg")


def _files(folder: Path) -> dict[str, list[Path]]:
    classes = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in SUFFIXES)
               for d in sorted(folder.iterdir()) if d.is_dir()}
    classes = {k: v for k, v in classes.items() if v}
    if not classes:
        raise LohpError(f"{folder} holds no class sub-folders with .png / .jpg images; lay it out as "
                        f"{folder}/CLASS_NAME/IMAGE.png")
    return classes


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise LohpError("the image-folder family needs pillow: pip install -e '.[images]'") from None

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
            return np.asarray(canvas, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise LohpError(f"image {path} does not decode ({exc}); remove or replace it") from None


class ImageFolderFamily(TableFamily):
    name = "image-folder"
    what = "image folder"
    is_folder = True

    def __init__(self, path: str, n_way: int = 5, heldout: float = 0.3, split_seed: int = 0,
                 per_class: int | None = None, standardize: bool = True, hidden: int = 0,
                 train_fraction: float = 0.5, sha256: str | None = None, size: int = 64,
                 patterns: tuple[str, ...] | list[str] = ("*",)):
        if size < 16:
            raise LohpError(f"size must be >= 16 px (got {size})")
        self.size = int(size)
        super().__init__(path, "class folder", n_way, heldout, split_seed, per_class, standardize, hidden,
                         train_fraction, sha256, patterns)

    def _digest(self, folder: Path) -> str:
        h = hashlib.sha256()
        for cls, files in _files(folder).items():
            for f in files:
                h.update(f"{cls}/{f.name}\0".encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()

    def _load(self, folder: Path, digest: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        from lohp.data.features import features

        classes = _files(folder)
        names = list(classes)
        files = [(i, f) for i, c in enumerate(names) for f in classes[c]]
        images = np.stack([_decode(f, self.size) for _, f in files])
        feats = features({"image-folder": digest, "decode": f"rgb-fit-white-{self.size}"}, images, size=self.size)
        return feats.numpy().astype(np.float32), np.asarray([i for i, _ in files], dtype=np.int64), names

    def config(self) -> dict[str, Any]:
        out = super().config()
        out.pop("label")
        return {**out, "size": self.size}


class TextTableFamily(TableFamily):
    """``text-table``: a CSV / TSV with a text column and a label column; each text is the
    mean-pooled frozen MiniLM-L6 embedding (384-d, cached), and the generated target is a
    linear head (``hidden=0``) or an MLP on it. Needs the ``lora`` extra (MiniLM)."""

    name = "text-table"
    what = "text table"

    def __init__(self, path: str, text: str = "text", label: str = "label", n_way: int = 5, heldout: float = 0.3,
                 split_seed: int = 0, per_class: int | None = None, standardize: bool = True, hidden: int = 0,
                 train_fraction: float = 0.5, sha256: str | None = None, max_length: int = 32,
                 patterns: tuple[str, ...] | list[str] = ("*",)):
        self.text, self.max_length = text, int(max_length)
        super().__init__(path, label, n_way, heldout, split_seed, per_class, standardize, hidden, train_fraction,
                         sha256, patterns)

    def _load(self, file: Path, digest: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        import csv

        from lohp.data.text import frozen_embeddings

        with open(file, newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if file.suffix in (".tsv", ".tab") else ",")
            missing = [c for c in (self.text, self.label) if c not in (reader.fieldnames or [])]
            if missing:
                raise LohpError(f"{file} has no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])}); "
                                f"pass --family-option {'text' if missing[0] == self.text else 'label'}=COLUMN")
            texts, labels = [], []
            for n, row in enumerate(reader, start=2):
                body = (row[self.text] or "").strip()
                if not body:
                    raise LohpError(f"{file} line {n}: the text is empty; drop the row or fill it")
                texts.append(body)
                labels.append((row[self.label] or "").strip())
        if not texts:
            raise LohpError(f"{file} has no data rows")
        x = frozen_embeddings(texts, self.max_length).numpy().astype(np.float32)
        return (x, *class_index(labels))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "text": self.text, "max_length": self.max_length}
