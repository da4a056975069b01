"""ParamLayout: the generated subset of a model as one flat vector.

Lo-Hp generates a vector theta in R^d; the layout maps it to named tensors of a
``torch.nn.Module`` and back, and evaluates the module under one vector or a batch of
vectors with ``torch.func.functional_call`` (+ ``vmap``). Everything that is not in the
generated subset stays as the module holds it (frozen).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from lohp.errors import LohpError

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LayoutEntry:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class ParamLayout:
    """Names, shapes, offsets and dtype of a module's generated subset."""

    def __init__(self, entries: Sequence[LayoutEntry], dtype: torch.dtype = torch.float32):
        self.entries = tuple(entries)
        self.dtype = dtype
        self.size = sum(e.numel for e in self.entries)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_module(cls, module: nn.Module, patterns: Iterable[str] = ("*",)) -> "ParamLayout":
        """Select parameters whose names match any fnmatch pattern, in module order."""
        patterns = tuple(patterns)
        entries, offset, dtypes = [], 0, set()
        for name, p in module.named_parameters():
            if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
                entries.append(LayoutEntry(name, tuple(p.shape), offset))
                offset += p.numel()
                dtypes.add(p.dtype)
        if not entries:
            names = ", ".join(n for n, _ in module.named_parameters()) or "(none)"
            raise LohpError(
                f"no parameter matches the patterns {list(patterns)}; the module has: {names}")
        if len(dtypes) > 1:
            raise LohpError(f"the generated subset mixes dtypes {sorted(map(str, dtypes))}; "
                            "cast the module to one dtype first")
        return cls(entries, dtypes.pop())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    # ----------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return {"dtype": str(self.dtype).removeprefix("torch."), "size": self.size,
                "entries": [{"name": e.name, "shape": list(e.shape), "offset": e.offset}
                            for e in self.entries]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParamLayout":
        try:
            entries = [LayoutEntry(e["name"], tuple(e["shape"]), int(e["offset"]))
                       for e in d["entries"]]
            dtype = _DTYPES[d["dtype"]]
        except (KeyError, TypeError) as exc:
            raise LohpError(f"malformed parameter layout ({exc!r}); the file was not written "
                            "by lohp or is damaged") from None
        layout = cls(entries, dtype)
        if "size" in d and int(d["size"]) != layout.size:
            raise LohpError(f"malformed parameter layout: size {d['size']} != {layout.size}")
        return layout

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ParamLayout) and self.entries == other.entries
                and self.dtype == other.dtype)

    def __hash__(self) -> int:
        return hash((self.entries, self.dtype))

    def __repr__(self) -> str:
        parts = ", ".join(f"{e.name}{list(e.shape)}" for e in self.entries)
        return f"ParamLayout(d={self.size}, {parts})"

    def check_matches(self, other: "ParamLayout", what: str = "the model") -> None:
        """Raise a clear error when two layouts differ (e.g. a store vs a model)."""
        if self == other:
            return
        mine = {e.name: e.shape for e in self.entries}
        theirs = {e.name: e.shape for e in other.entries}
        diffs = [f"{n}: {list(mine.get(n, ()))} vs {list(theirs.get(n, ()))}"
                 for n in sorted(set(mine) | set(theirs)) if mine.get(n) != theirs.get(n)]
        detail = "; ".join(diffs[:3]) or f"dtype {self.dtype} vs {other.dtype}"
        raise LohpError(f"parameter layout does not match {what} ({detail}); use the same "
                        "model and generated-parameter patterns that produced it")

    # ----------------------------------------------------------------- flat <-> named
    def flatten(self, source: nn.Module | dict[str, torch.Tensor]) -> torch.Tensor:
        """The generated subset of a module (or a name->tensor dict) as one vector."""
        params = dict(source.named_parameters()) if isinstance(source, nn.Module) else source
        try:
            return torch.cat([params[e.name].detach().reshape(-1) for e in self.entries]).to(self.dtype)
        except KeyError as exc:
            raise LohpError(f"parameter {exc.args[0]!r} of the layout is missing from the model; "
                            "the model does not match this layout") from None

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of ``theta[..., d]``; leading (batch) dimensions are kept."""
        if theta.shape[-1] != self.size:
            raise LohpError(f"weight vector has {theta.shape[-1]} values but the layout needs "
                            f"{self.size}")
        lead = theta.shape[:-1]
        return {e.name: theta[..., e.offset:e.offset + e.numel].reshape(*lead, *e.shape)
                for e in self.entries}

    def load_into(self, module: nn.Module, theta: torch.Tensor) -> nn.Module:
        """Copy a single vector into the module's generated parameters (in place)."""
        self.check_matches(ParamLayout.from_module(module, self.names), "the module")
        named = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in self.unflatten(theta.detach()).items():
                named[name].copy_(value)
        return module

    # ----------------------------------------------------------------- evaluation
    def functional(self, module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``f(theta, x)``: the module's output with its generated subset set to ``theta``.

        The frozen rest of the module is captured detached; ``theta`` may require grad.
        """
        frozen = {n: p.detach() for n, p in module.named_parameters() if n not in self.names}
        frozen.update(dict(module.named_buffers()))

        def f(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return functional_call(module, {**frozen, **self.unflatten(theta)}, (x,))

        return f

    def batched(self, module: nn.Module, shared_input: bool = False
                ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``f(thetas[R, d], xs)`` vmapped over R vectors.

        ``xs`` is ``[R, n, ...]`` (one input batch per vector) or, with
        ``shared_input=True``, ``[n, ...]`` shared by every vector.
        """
        return vmap(self.functional(module), in_dims=(0, None if shared_input else 0))
