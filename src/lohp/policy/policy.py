"""LohpPolicy: the U-Net backbone with forward and backward Gaussian heads and log Z.

    P_F(s_{j+1} | s_j, j, c)   = Normal(s_j + mu(s_j, j, c),           sigma_F[j]^2)
    P_B(s_j | s_{j+1}, j+1, c) = Normal(s_{j+1} + nu(s_{j+1}, j+1, c), sigma_B[j]^2)   (learned)
                               = Normal(s_{j+1}, sigma_B[j]^2)                          (fixed)
                               = Brownian bridge back to s_0                            (bridge)

Means and standard deviations are in units of ``step_scale[j]``, the RMS of the real
optimizer's stride-k step at online step j, measured on the training store. Inputs are
normalised by ``theta_scale`` (RMS weight value) and ``cond_scale`` (RMS condition value).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lohp.condition import DEFAULT_POINTS, check_points
from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.policy.flows import LogZ
from lohp.policy.heads import GaussianHead
from lohp.policy.structure import HEAD_FEATURES
from lohp.policy.unet import UNet1d, sinusoidal

BACKWARD_KINDS = ("fixed", "bridge", "learned")
LOG_2PI = math.log(2 * math.pi)


@dataclass
class PolicyConfig(Config):
    what = "policy"

    token_size: int = setting(8, "Weight values per token.")
    channels: int = setting(32, "U-Net width.")
    depth: int = setting(2, "U-Net levels (the token count is padded to a multiple of 2**depth).")
    emb_dim: int = setting(32, "Time-embedding size.")
    kernel: int = setting(3, "Convolution kernel over tokens.")
    sigma_f: float = setting(0.25, "Forward std, in units of the step scale.")
    sigma_b: float = setting(2.5, "Backward std, in units of the step scale.")
    learn_sigma_f: bool = setting(False, "Learn the forward std.")
    learn_sigma_b: bool = setting(False, "Learn the backward std.")
    # P_B's kind, read by the losses that score backward steps (lo-hp-v1, lo-hp-literal). Off the
    # generated options: lohp train offers it as --backward, defaulting to the method's preset.
    backward: str = setting("fixed", "Backward policy P_B: fixed, bridge or learned.", cli=False)
    # Forward mean += gain[j, position] * surrogate-gradient feature (channel 0 of the
    # structure's condition features, unit RMS): a learned, step- and position-wise
    # preconditioned step that the U-Net corrects. Started at skip_init (in units of the
    # real step size), so an untrained policy is already a descent method on the surrogate.
    condition_skip: bool = setting(True, "The learned per-step preconditioned step on the surrogate-gradient "
                                         "features.")
    skip_init: float = setting(1.0, "Initial gain of that step, in units of the real step size (0 = no step).")
    features: str = setting("gradient", "Head (class-rows) condition features: gradient (+ class means) or means.")
    condition_points: int | None = setting(
        None, "Condition points per class: 1 = the class means, m > 1 = a coreset of m k-means points per class "
              f"(refused if a class has fewer training rows); default: {DEFAULT_POINTS}, capped at the smallest "
              "class's training rows.")
    structure: str | None = setting(None, "Policy structure kind (class-rows, mlp-units, lora-dims or a registered "
                                          "one); default: the first registered one that fits the store's layout.")

    def __post_init__(self) -> None:
        if self.backward not in BACKWARD_KINDS:
            raise LohpError(f"unknown backward policy {self.backward!r}; choose one of {', '.join(BACKWARD_KINDS)}")
        for name in ("token_size", "channels", "emb_dim", "kernel"):
            if getattr(self, name) <= 0:
                raise LohpError(f"policy {name} must be > 0")
        if self.sigma_f <= 0 or self.sigma_b <= 0:
            raise LohpError("sigma_f and sigma_b must be > 0")

        if self.condition_points is not None:
            check_points(self.condition_points)
        if self.features not in HEAD_FEATURES:
            raise LohpError(f"unknown head features {self.features!r}; choose one of {', '.join(HEAD_FEATURES)}")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of log N(x; mean, std^2); ``std`` broadcasts as ``[B]`` or scalar."""
    if std.dim() == 1:
        std = std[:, None]
    d = x.shape[-1]
    z = (x - mean) / std
    return -0.5 * (z * z).sum(-1) - d * torch.log(std).squeeze(-1) - 0.5 * d * LOG_2PI


class LohpPolicy(nn.Module):
    def __init__(self, structure: Any, n_steps: int, config: PolicyConfig | None = None,
                 step_scale: torch.Tensor | None = None, theta_scale: float = 1.0, cond_scale: float = 1.0,
                 init_scale: float = 1.0, condition_points: int = 1):
        super().__init__()
        # m of the conditions the policy was trained on (1: class means); the resolved value
        # (the config's may be None = the default), recorded in policy.json's "condition"
        self.condition_points = check_points(int(condition_points))
        self.config = config = config or PolicyConfig()
        self.structure = structure
        self.n_steps = int(n_steps)
        p = config.token_size
        unit = p * (2 ** config.depth)
        self.row_len = -(-structure.row_size // unit) * unit  # padded row length
        self.n_tokens = self.row_len // p
        # Per position: own weight, own condition channels, and the group-mean of each (context).
        self.cond_channels = int(getattr(structure, "condition_channels", 1))
        self.backbone = UNet1d((2 + 2 * self.cond_channels) * p, config.channels, self.n_tokens, config.depth,
                               config.emb_dim, config.kernel)
        self.time = nn.Sequential(nn.Linear(config.emb_dim, config.emb_dim), nn.SiLU(),
                                  nn.Linear(config.emb_dim, config.emb_dim))
        self.forward_head = GaussianHead(config.channels, p, n_steps, config.sigma_f, config.learn_sigma_f)
        self.backward_head = GaussianHead(config.channels, p, n_steps, config.sigma_b, config.learn_sigma_b)
        self.log_z = LogZ(n_steps + 1)
        self.skip_gain = (nn.Parameter(torch.full((n_steps, structure.row_size), float(config.skip_init)))
                          if config.condition_skip else None)
        scale = torch.ones(n_steps) if step_scale is None else step_scale.detach().float().clone()
        if scale.shape != (n_steps,):
            raise ValueError("step_scale needs one value per online step")
        self.register_buffer("step_scale", scale)
        self.register_buffer("theta_scale", torch.tensor(float(theta_scale)))
        self.register_buffer("cond_scale", torch.tensor(float(cond_scale)))
        self.register_buffer("init_scale", torch.tensor(float(init_scale)))  # RMS of theta_0
        self._film_cache: torch.Tensor | None = None

    # ------------------------------------------------------------------ parameter groups
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Backbone+forward head, backward head, flow (log Z): each can get its own lr."""
        back = [p for n, p in self.named_parameters() if n.startswith("backward_head")]
        flow = list(self.log_z.parameters())
        ids = {id(p) for p in back + flow}
        return {"policy": [p for p in self.parameters() if id(p) not in ids], "backward": back, "flow": flow}

    # ------------------------------------------------------------------ network
    def _film_table(self) -> torch.Tensor:
        """FiLM parameters of every step index 0..N; cached while in eval mode (the
        time embedding does not depend on the input, so generation computes it once)."""
        if not self.training and self._film_cache is not None:
            return self._film_cache
        steps = torch.arange(self.n_steps + 1, device=self.step_scale.device).float() / self.n_steps
        table = self.backbone.film_params(self.time(sinusoidal(steps, self.config.emb_dim)))
        if not self.training:
            self._film_cache = table
        return table

    def train(self, mode: bool = True) -> "LohpPolicy":
        self._film_cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # device/dtype moves invalidate the cache
        self._film_cache = None
        return super()._apply(fn, *args, **kwargs)

    def _condition_rows(self, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # The features are an input, not a path for gradients (as in learned optimizers that
        # take gradients as inputs): no second-order terms through differentiable rollouts.
        have = 1 if cond.dim() == s.dim() + 1 else cond.shape[-2]   # [B, C, F] or [B, C, m, F + 1]
        if have != self.condition_points:
            def kind(m: int) -> str:
                return "class means" if m == 1 else f"a coreset of {m} points per class"
            raise LohpError(f"the policy was trained on task conditions of {kind(self.condition_points)}, but this "
                            f"condition is {kind(have)}; build it with task.condition({self.condition_points}) "
                            "(lohp's generate and evaluate do)")
        crow = self.structure.condition_rows(cond, s.detach())      # [B, G, R, K]
        if crow.dim() == s.dim() + 1:                                # a structure with one channel
            crow = crow[..., None]
        return crow / self.cond_scale if self.structure.scale_condition else crow

    def _tokens(self, s: torch.Tensor, crow: torch.Tensor) -> torch.Tensor:
        st = self.structure
        rows = (st.rows(s) / self.theta_scale)[..., None]           # [B, G, R, 1]
        feats = torch.cat([rows, crow, rows.mean(1, keepdim=True).expand_as(rows),
                           crow.mean(1, keepdim=True).expand_as(crow)], dim=-1)  # [B, G, R, 2 + 2K]
        pad = self.row_len - feats.shape[2]
        if pad:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, pad))
        b, c, _, ch = feats.shape
        p = self.config.token_size
        return feats.reshape(b * c, self.n_tokens, p * ch)  # [B*G, tokens, p*(2+2K)]

    def _untoken(self, out: torch.Tensor, batch: int) -> torch.Tensor:
        c, r = self.structure.n_groups, self.structure.row_size
        rows = out.reshape(batch, c, self.row_len)[..., :r]
        return self.structure.flat(rows)

    def heads(self, s: torch.Tensor, j: torch.Tensor, cond: torch.Tensor, backward: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward mean update mu [B, d] (absolute units) and, if asked, backward nu [B, d].

        ``j`` is the step index of state ``s`` (0..N). mu is the step j -> j+1, nu the step
        j -> j-1 (only meaningful for j >= 1).
        """
        b = s.shape[0]
        j = j.to(s.device).long().expand(b) if j.dim() == 0 else j.to(s.device).long()
        film = self._film_table()[j].repeat_interleave(self.structure.n_groups, 0)
        crow = self._condition_rows(s, cond)
        h = self.backbone(self._tokens(s, crow), film, self.structure.n_groups)
        jf = j.clamp(max=self.n_steps - 1)
        mu = self._untoken(self.forward_head(h), b)
        if self.skip_gain is not None:
            mu = mu + self.structure.flat(self.skip_gain[jf][:, None, :] * crow[..., 0])
        mu = mu * self.step_scale[jf][:, None]
        nu = None
        if backward:
            nu = self._untoken(self.backward_head(h), b) * self.step_scale[(j - 1).clamp(min=0)][:, None]
        return mu, nu

    def forward(self, s: torch.Tensor, j: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.heads(s, j, cond)[0]

    # ------------------------------------------------------------------ distributions
    # The face losses use (besides heads / log_pf / log_pb / rollout / log_z and the
    # step_scale, init_scale buffers): no loss reads the config or the heads directly.
    @property
    def learned_backward(self) -> bool:
        """P_B has its own learned head (else fixed or bridge)."""
        return self.config.backward == "learned"

    @property
    def configured_sigma_f(self) -> float:
        """The configured forward std, in units of the step scale (the default reward width)."""
        return float(self.config.sigma_f)

    def relative_sigma_f(self, j: torch.Tensor) -> torch.Tensor:
        """Forward std of transition j in units of the step scale, ``[B]`` (learned or fixed)."""
        return self.forward_head.sigma(j)

    def sigma_f(self, j: torch.Tensor) -> torch.Tensor:
        """Absolute forward std of the transition j -> j+1, ``[B]``."""
        return self.relative_sigma_f(j) * self.step_scale[j]

    def sigma_b(self, j: torch.Tensor) -> torch.Tensor:
        """Absolute backward std of the transition j+1 -> j, ``[B]``."""
        return self.backward_head.sigma(j) * self.step_scale[j]

    def log_pf(self, s: torch.Tensor, s_next: torch.Tensor, j: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(s_next, s + mu, self.sigma_f(j))

    def log_pb(self, s: torch.Tensor, s_next: torch.Tensor, j: torch.Tensor, nu: torch.Tensor | None,
               s0: torch.Tensor | None = None) -> torch.Tensor:
        """log P_B(s_j = s | s_{j+1} = s_next) for transition index ``j [B]``."""
        kind = self.config.backward
        sig = self.sigma_b(j)
        if kind == "fixed":
            return gaussian_log_prob(s, s_next, sig)
        if kind == "learned":
            return gaussian_log_prob(s, s_next + nu, sig)
        # Brownian bridge to s_0: s_j | s_{j+1} ~ N(s0 + j/(j+1) (s_{j+1} - s0), j/(j+1) sigma^2);
        # the step back to s_0 itself is deterministic and contributes 0.
        frac = (j.float() / (j.float() + 1))[:, None]
        std = (frac.squeeze(-1).clamp_min(1e-12)).sqrt() * sig
        lp = gaussian_log_prob(s, s0 + frac * (s_next - s0), std)
        return torch.where(j == 0, torch.zeros_like(lp), lp)

    # ------------------------------------------------------------------ generation
    def rollout(self, s0: torch.Tensor, cond: torch.Tensor, temperature: float = 0.0,
                generator: torch.Generator | None = None, return_states: bool = False) -> torch.Tensor:
        """N forward-policy steps from ``s0 [B, d]``: the mean path, or a sample with
        noise ``temperature * sigma_F``. Returns s_N ``[B, d]`` (or all states ``[B, N+1, d]``)."""
        s, states = s0, [s0]
        for j in range(self.n_steps):
            jj = torch.full((s.shape[0],), j, dtype=torch.long, device=s.device)
            s = s + self.heads(s, jj, cond)[0]
            if temperature > 0:
                eps = torch.randn(s.shape, generator=generator, device=s.device)
                s = s + temperature * self.sigma_f(jj)[:, None] * eps
            if return_states:
                states.append(s)
        return torch.stack(states, 1) if return_states else s

    def retargeted(self, structure: Any) -> "LohpPolicy":
        """This policy, same parameters (shared, not copied), on another structure of the same
        kind and row (from :func:`lohp.policy.structure.retarget`): another group count."""
        if structure.row_size != self.structure.row_size or structure.kind != self.structure.kind:
            raise LohpError(f"a {self.structure.kind} policy with rows of {self.structure.row_size} values cannot "
                            f"run on {structure.kind} rows of {structure.row_size}")
        other = copy.copy(self)  # the module dicts (parameters, buffers, submodules) are shared
        other.__dict__["structure"] = structure
        other._film_cache = None
        return other

    # ------------------------------------------------------------------ (de)serialise
    def describe(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "structure": self.structure.to_dict(), "n_steps": self.n_steps,
                "condition_points": self.condition_points,
                "parameters": sum(p.numel() for p in self.parameters())}
