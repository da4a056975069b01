"""The ``image-folder`` family: one sub-folder per class of PNG / JPEG files, seen through
the frozen EfficientNet-Lite0 backbone (1,280-d pooled features, cached by the folder's
content hash). Classes, rows and tasks are split exactly as in the ``table`` family::

    lohp prepare --family image-folder --family-option path=my_images/ --family-option n_way=3 ...

Needs the ``images`` extra (``pip install -e '.[images]'``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lohp.config import setting
from lohp.data import features as feature_cache  # (module attribute: tests patch features)
from lohp.errors import LohpError
from lohp.extras import require_module
from lohp.tasks.registry import register_family
from lohp.tasks.table import FileOptions, TableFamily

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
    require_module("PIL", "the image-folder family")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
            return np.asarray(canvas, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise LohpError(f"image {path} does not decode ({exc}); remove or replace it") from None


@dataclass
class ImageFolderOptions(FileOptions):
    what = "image-folder family"

    size: int = setting(64, "Image side (px) each image is fitted into (>= 16).")

    def __post_init__(self) -> None:
        if self.size < 16:
            raise LohpError(f"size must be >= 16 px (got {self.size})")
        self.size = int(self.size)
        super().__post_init__()


class ImageFolderFamily(TableFamily):
    name = "image-folder"
    what = "image folder"
    is_folder = True
    Options = ImageFolderOptions
    options: ImageFolderOptions

    input_description = ("the frozen EfficientNet-Lite0 features (1,280-d) of each image, as "
                         "lohp.data.features computes them")

    def _digest(self, folder: Path) -> str:
        h = hashlib.sha256()
        for cls, files in _files(folder).items():
            for f in files:
                h.update(f"{cls}/{f.name}\0".encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()

    def _load(self, folder: Path, digest: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        classes = _files(folder)
        names = list(classes)
        files = [(i, f) for i, c in enumerate(names) for f in classes[c]]
        images = np.stack([_decode(f, self.size) for _, f in files])
        feats = feature_cache.features({"image-folder": digest, "decode": f"rgb-fit-white-{self.size}"}, images,
                                       size=self.size)
        return feats.numpy().astype(np.float32), np.asarray([i for i, _ in files], dtype=np.int64), names


register_family(ImageFolderFamily.name, ImageFolderFamily)
