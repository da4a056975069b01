"""Text data for the LoRA scenario: WordNet noun glosses and fortune-cookie topics.

Both come from Debian packages (``wordnet-base``; ``fortunes`` + ``fortunes-min``) and
are read as ``{category: [text, ...]}`` with texts in file order. Token ids of the
MiniLM tokenizer and frozen MiniLM embeddings are cached on disk (``$LOHP_HOME``, keyed
by a hash of the texts, the tokenizer files and the maximum length).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from lohp import lora
from lohp.data.cache import cached_tensors
from lohp.data.packages import require
from lohp.errors import LohpError

# Lexicographer files 03-28 of WordNet 3.0: the 26 noun categories.
WORDNET_CATEGORIES = {
    3: "Tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
    10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location", 16: "motive",
    17: "object", 18: "person", 19: "phenomenon", 20: "plant", 21: "possession", 22: "process", 23: "quantity",
    24: "relation", 25: "shape", 26: "state", 27: "substance", 28: "time"}

_SPACES = re.compile(r"\s+")
_OVERSTRIKE = re.compile(r".\x08")


@lru_cache(maxsize=2)
def wordnet_glosses(path: str | None = None) -> dict[str, list[str]]:
    """``{category: [definition, ...]}`` for the 26 noun categories (example sentences dropped)."""
    file = Path(path) if path else require("wordnet")
    out: dict[str, list[str]] = {name: [] for name in WORDNET_CATEGORIES.values()}
    with open(file, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  ") or " | " not in line:  # the licence header
                continue
            fields = line.split(" ", 3)
            try:
                cat = WORDNET_CATEGORIES[int(fields[1])]
            except (KeyError, ValueError, IndexError):
                continue
            gloss = line.split(" | ", 1)[1]
            definition = _SPACES.sub(" ", gloss.split('; "', 1)[0].split(' "', 1)[0]).strip(" ;")
            if definition:
                out[cat].append(definition)
    if not any(out.values()):
        raise LohpError(f"{file} holds no WordNet noun gloss; reinstall it with: apt-get install --reinstall wordnet-base")
    return out


@lru_cache(maxsize=2)
def fortune_topics(directory: str | None = None, min_texts: int = 400) -> dict[str, list[str]]:
    """``{topic: [fortune, ...]}`` for topics with at least ``min_texts`` fortunes (attributions dropped)."""
    folder = Path(directory) if directory else require("fortunes").parent
    out: dict[str, list[str]] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix in (".dat", ".u8") or file.is_symlink() or not file.is_file() or "." in file.name:
            continue
        raw = _OVERSTRIKE.sub("", file.read_text(encoding="utf-8", errors="replace"))
        texts = []
        for block in re.split(r"(?m)^%\s*$", raw):
            lines = [ln for ln in block.splitlines() if not re.match(r"^\s+--\s", ln)]
            text = _SPACES.sub(" ", " ".join(lines)).strip()
            if any(c.isalnum() for c in text):
                texts.append(text)
        if len(texts) >= min_texts:
            out[file.name] = texts
    if not out:
        raise LohpError(f"no fortune topic under {folder} has {min_texts} texts; install them with: "
                        "apt-get install fortunes fortunes-min")
    return out


def _tokenizer_key() -> str:
    vocab = lora.model_dir() / "tokenizer.json"
    return hashlib.sha256(vocab.read_bytes()).hexdigest()[:16] if vocab.exists() else "no-tokenizer-json"


def _texts_key(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def token_ids(texts: Sequence[str], max_length: int) -> torch.Tensor:
    """MiniLM token ids ``[n, max_length]`` (0 = padding), cached on disk."""

    spec = {"texts": _texts_key(texts), "n": len(texts), "max_length": int(max_length), "tokenizer": _tokenizer_key()}
    return cached_tensors("tokens", spec, lambda: {"ids": lora.tokenize(list(texts), max_length)})["ids"]


def frozen_embeddings(texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Mean-pooled frozen MiniLM embeddings ``[n, 384]`` of the texts, cached on disk."""

    spec = {"texts": _texts_key(texts), "n": len(texts), "max_length": int(max_length), "tokenizer": _tokenizer_key(),
            "model": "minilm-l6-meanpool"}

    def build() -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            return {"emb": lora.frozen_embeddings(token_ids(texts, max_length))}

    return cached_tensors("text-embeddings", spec, build)["emb"]
