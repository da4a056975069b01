"""A coordinate-wise LSTM optimizer (L2O-DM, Andrychowicz et al. 2016).

One small two-layer LSTM is shared by every coordinate of the optimizee: each coordinate
is an independent sequence, so the optimizer works for any number of parameters and any
batch of runs. Per coordinate and step:

- input: the gradient, preprocessed as in the paper's appendix A,
  ``(log|g| / p, sign g)`` if ``|g| >= exp(-p)`` else ``(-1, exp(p) g)`` (``p = 10``),
  so that gradients of very different magnitudes reach the LSTM on one scale;
- two LSTM layers (hidden size 20), then a linear read-out to one number;
- update ``= output_scale * read-out`` (``output_scale = 0.1``), added to the weights.

The optimizee's gradient is an *input* (treated as a constant when meta-training, the
paper's first-order simplification); the weights it produces carry the graph back to the
LSTM. :class:`LearnedOptimizer` gives the network the face of :class:`lohp.optim.Optimizer`
(``init``/``step``), so it can drive :func:`lohp.trajectories.collect.train_runs` and
produce Stage I trajectories like SGD or Adam.

Saved as two files in a folder: ``l2o.safetensors`` (the LSTM weights, no pickle) and
``l2o.json`` (architecture and meta-training record).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from lohp.config import Config
from lohp.errors import LohpError
from lohp.io import atomic_save_tensors, atomic_write_json, ensure_writable_dir, load_tensors, read_json
from lohp.optim.optimizer import LossAndGrad

WEIGHTS_FILE = "l2o.safetensors"
CONFIG_FILE = "l2o.json"
FORMAT = "lohp-l2o-v1"

State = dict[str, torch.Tensor]


@dataclass
class L2OConfig(Config):
    """Architecture of the coordinate-wise LSTM optimizer."""

    what = "L2O"

    hidden: int = 20
    layers: int = 2
    preprocess_p: float = 10.0
    output_scale: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden", "layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise LohpError(f"L2O {name} must be a positive whole number (got {v!r})")
        for name in ("preprocess_p", "output_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise LohpError(f"L2O {name} must be > 0 (got {v!r})")


def preprocess(grads: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al.'s gradient preprocessing: ``[...] -> [..., 2]``."""
    g = grads.detach()
    mag = g.abs()
    big = mag >= math.exp(-p)
    first = torch.where(big, torch.log(mag.clamp_min(math.exp(-p))) / p, torch.full_like(g, -1.0))
    second = torch.where(big, torch.sign(g), g * math.exp(p))
    return torch.stack([first, second], dim=-1)


class CoordinateLSTM(nn.Module):
    """A stack of LSTM cells applied to every coordinate independently, plus a read-out."""

    def __init__(self, config: L2OConfig):
        super().__init__()
        self.config = config
        h = config.hidden
        self.cells = nn.ModuleList()
        for layer in range(config.layers):
            cell = nn.Module()
            cell.ih = nn.Linear(2 if layer == 0 else h, 4 * h)
            cell.hh = nn.Linear(h, 4 * h, bias=False)
            with torch.no_grad():  # forget-gate bias 1: remember by default
                cell.ih.bias[h:2 * h].fill_(1.0)
            self.cells.append(cell)
        self.out = nn.Linear(h, 1)
        with torch.no_grad():  # small initial steps
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def forward(self, inputs: torch.Tensor, hs: list[torch.Tensor], cs: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``inputs [N, 2]``, states ``[N, hidden]`` per layer -> (``[N]``, new states)."""
        x, new_h, new_c = inputs, [], []
        for cell, h, c in zip(self.cells, hs, cs):
            i, f, g, o = (cell.ih(x) + cell.hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            new_h.append(h)
            new_c.append(c)
            x = h
        return self.out(x).squeeze(-1), new_h, new_c


class LearnedOptimizer:
    """The LSTM optimizer with the ``init``/``step`` face of :class:`lohp.optim.Optimizer`."""

    grads_per_step = 1

    def __init__(self, config: L2OConfig | None = None, net: CoordinateLSTM | None = None,
                 name: str = "l2o", info: dict[str, Any] | None = None, seed: int | None = None):
        self.config = config or (net.config if net is not None else L2OConfig())
        if net is None:
            if seed is not None:
                state = torch.random.get_rng_state()
                torch.manual_seed(int(seed))
            try:
                net = CoordinateLSTM(self.config)
            finally:
                if seed is not None:
                    torch.random.set_rng_state(state)
        self.net = net
        self.name = name
        self.info: dict[str, Any] = dict(info or {})

    @property
    def hparams(self) -> dict[str, Any]:
        return asdict(self.config)

    def parameters(self):
        return self.net.parameters()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    # ----------------------------------------------------------------- the face
    def init(self, params: torch.Tensor) -> State:
        """Zero LSTM states, one per coordinate of ``params`` (``[d]`` or ``[R, d]``)."""
        p = next(self.net.parameters())
        shape = (*params.shape, self.config.hidden)
        state: State = {"step": torch.zeros((), dtype=torch.long)}
        for layer in range(self.config.layers):
            state[f"h{layer}"] = torch.zeros(shape, dtype=p.dtype, device=params.device)
            state[f"c{layer}"] = torch.zeros(shape, dtype=p.dtype, device=params.device)
        return state

    def update(self, grads: torch.Tensor, state: State, weights: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, State]:
        """Differentiable update for ``grads`` (any shape) -> (updates, new state).

        ``weights`` replaces the network's own parameters (``torch.func.functional_call``),
        e.g. perturbed copies during a meta-level Langevin chain.
        """
        shape = grads.shape
        n = grads.numel()
        layers = self.config.layers
        inp = preprocess(grads.reshape(n), self.config.preprocess_p).to(state["h0"].dtype)
        hs = [state[f"h{i}"].reshape(n, -1) for i in range(layers)]
        cs = [state[f"c{i}"].reshape(n, -1) for i in range(layers)]
        if weights is None:
            out, hs, cs = self.net(inp, hs, cs)
        else:
            out, hs, cs = functional_call(self.net, weights, (inp, hs, cs))
        new: State = {"step": state["step"] + 1}
        for i in range(layers):
            new[f"h{i}"] = hs[i].reshape(*shape, -1)
            new[f"c{i}"] = cs[i].reshape(*shape, -1)
        return (self.config.output_scale * out).reshape(shape).to(grads.dtype), new

    def step(self, params: torch.Tensor, state: State, loss_and_grad: LossAndGrad
             ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One step for every run; returns (new params, new state, loss before the step)."""
        loss, grads = loss_and_grad(params)
        with torch.no_grad():
            updates, state = self.update(grads, state)
        return params + updates, state, loss

    # ----------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``l2o.safetensors`` + ``l2o.json`` into ``folder`` (atomically)."""

        folder = ensure_writable_dir(Path(folder))
        tensors = {k: v.detach() for k, v in self.net.state_dict().items()}
        if not all(torch.isfinite(v).all() for v in tensors.values()):
            raise LohpError(f"refusing to save non-finite L2O weights to {folder}")
        atomic_save_tensors(folder / WEIGHTS_FILE, tensors, metadata={"format": FORMAT})
        atomic_write_json(folder / CONFIG_FILE, {"format": FORMAT, "name": self.name,
                                                 "config": asdict(self.config), "info": self.info}, sealed=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "LearnedOptimizer":
        """Read a folder written by :meth:`save`."""

        folder = Path(folder)
        if not folder.is_dir():
            raise LohpError(f"L2O checkpoint folder {folder} does not exist")
        meta = read_json(folder / CONFIG_FILE, "L2O config", sealed=True)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise LohpError(f"{folder / CONFIG_FILE} is not an lohp L2O config (format {FORMAT} expected)")
        config = L2OConfig.from_dict(dict(meta.get("config", {})))
        if not (folder / WEIGHTS_FILE).exists():
            raise LohpError(f"L2O weights {folder / WEIGHTS_FILE} are missing")

        tensors = load_tensors(folder / WEIGHTS_FILE, "L2O weights", "re-train or restore them")
        net = CoordinateLSTM(config)
        try:
            net.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise LohpError(f"L2O weights in {folder} do not match their config ({first})") from None
        return cls(config, net, name=str(meta.get("name", "l2o")), info=dict(meta.get("info", {})))

    def __repr__(self) -> str:
        return f"LearnedOptimizer({self.name!r}, {self.config}, {self.num_parameters()} weights)"


__all__ = ["CONFIG_FILE", "CoordinateLSTM", "L2OConfig", "LearnedOptimizer", "WEIGHTS_FILE", "preprocess"]
