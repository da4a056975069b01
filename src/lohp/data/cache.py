"""The on-disk cache of rendered images and backbone features (``$LOHP_HOME``, default
``~/.cache/lohp``). Entries are safetensors files written atomically and keyed by a hash
of everything that produced them, so a changed input never reads a stale entry and a
crash never leaves a half-written one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from lohp.io import atomic_save_tensors, ensure_writable_dir, load_tensors


def home() -> Path:
    return Path(os.environ.get("LOHP_HOME", Path.home() / ".cache" / "lohp")).expanduser()


def key_of(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cached_tensors(kind: str, spec: dict[str, Any], build: Callable[[], dict[str, torch.Tensor]]
                   ) -> dict[str, torch.Tensor]:
    """Load ``home()/kind/<key>.safetensors`` or build, save (atomically) and return it."""

    path = home() / kind / f"{kind}-{key_of(spec)}.safetensors"
    if path.exists():
        return load_tensors(path, "cache file", "delete it and run again to rebuild it")
    tensors = build()
    ensure_writable_dir(path.parent)
    atomic_save_tensors(path, {k: v.contiguous() for k, v in tensors.items()},
                        metadata={"spec": json.dumps(spec, sort_keys=True)})
    return tensors
