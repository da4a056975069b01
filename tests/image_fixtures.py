"""Made-up features and rotated domains standing in for the packaged image data."""

import numpy as np
import pytest
import torch

from lohp.tasks import images as timg


@pytest.fixture
def fake_features(monkeypatch):
    """12 classes x 25 images of 16-d features, class c centred at c."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(12), 25)
    x = torch.from_numpy(rng.normal(size=(len(y), 16)).astype(np.float32)) + torch.from_numpy(y)[:, None].float()
    names = tuple(f"class{c}" for c in range(12))
    monkeypatch.setattr(timg, "feature_data", lambda dataset, size=64, per_class=60: (x, y, names))
    return x, y


@pytest.fixture
def fake_domains(monkeypatch):
    rng = np.random.default_rng(0)
    n = 6 * 10 * 6  # 6 domains x 10 classes x 6 images
    x = torch.from_numpy(rng.random((n, 784)).astype(np.float32))
    dom = torch.arange(6).repeat_interleave(60)
    y = torch.arange(10).repeat_interleave(6).repeat(6)
    x[:, 0] = dom.float()  # pixel 0 tells the domain, so the test can check where images come from
    monkeypatch.setattr(timg, "rotated_domains", lambda dataset, per_domain, seed=0: (x, y, dom))
