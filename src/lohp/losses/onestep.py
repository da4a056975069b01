"""lo-hp (default): "on-policy states, off-policy targets", a hybrid of one-step sub-trajectories.

Each iteration rolls the current policy out from every trajectory's theta_0 (times a start
width drawn from ``start_widths``), without a graph:
``s_{j+1} = s_j + mu(s_j, j, c) + sigma_F eps``. The one-step segment j -> j+1 is then
scored from a visited state s_j (on-policy) or from the real state theta_{kj}
(off-policy), and in both cases toward the matched checkpoint theta_{k(j+1)}:

    L = (1 - beta) E_on ||(theta_{k(j+1)} - s_j - mu(sg(s_j), j, c)) / step_j||^2
      +      beta  E_off ||(theta_{k(j+1)} - theta_{kj} - mu(theta_{kj}, j, c)) / step_j||^2

Why this is sub-trajectory balance (docs/method.md, section 'Why it is a sub-trajectory balance'): for a one-step
segment with a reparameterised next state s' = s + mu + sigma_F eps, a fixed
P_B(s | s') = N(s', sigma_B^2) and log F(s_j) = log Z_j + log R_{kj}(s_j), the residual is

    Delta = log Z_j + log R_{kj}(s) - log Z_{j+1} - log R_{k(j+1)}(s') + log P_F(s'|s) - log P_B(s|s')

log P_F(s'|s) = -||eps||^2 / 2 + const does not depend on mu; everything in Delta that does
is ||s + mu + sigma_F eps - theta_{k(j+1)}||^2 / (2 w^2) + ||mu + sigma_F eps||^2 / (2 sigma_B^2).
Its expectation over eps is, up to constants that log Z absorbs, the squared error above
(w = the step scale) plus a step-length penalty of relative weight (w / sigma_B)^2, which
we drop. On real states log R = 0 at the matched checkpoints and the off-policy segment is
the maximum likelihood of the real step under P_F: the same squared error. The mix of the
two is drawn per (trajectory, step) slot: a slot uses its visited state with probability
1 - beta, so one iteration costs one regression pass plus N graph-free policy steps.

Unlike the SubTB form (lo-hp-v1), the on-policy term's gradient is a regression gradient,
not a difference of rollouts in d dimensions, so its signal does not fall as 1/sqrt(d).
It is DAgger for a learned optimizer: the policy learns to correct from the states its
own rollouts reach (drift, far-away starts), which is where pure regression fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lohp.config import setting
from lohp.errors import LohpError
from lohp.flatness import hutchinson_trace, local_entropy_loss
from lohp.losses.base import Batch, FlatnessOptions, check_beta, options_of
from lohp.policy import LohpPolicy

_ENTROPY_SCOPE = ("the flatness regularizers act on weights the policy generates, and the local-entropy one is "
                  "wired into the states formulation (lo-hp, lo-op); lo-hp-v1 / lo-hp-literal take flatness_weight "
                  "(Hessian trace)")


@dataclass
class OneStepOptions(FlatnessOptions):
    """The options of :class:`OnPolicyStates` (lo-hp, lo-op: the "states" formulation)."""

    formulation = "states"
    scope = {**FlatnessOptions.scope, **{name: _ENTROPY_SCOPE for name in (
        "entropy_weight", "entropy_gamma", "entropy_temperature", "entropy_steps", "entropy_lr")},
        "start_widths": "lo-hp, lo-op (the states formulation) take it",
        "rollout_noise": "lo-hp, lo-op (the states formulation) take it"}

    beta: float = setting(0.5, "Weight of the off-policy term.")
    # the rollouts' starts are theta_0 x a width drawn from these, so the policy also learns
    # to correct from far-away starts; rollout_noise adds sigma_F noise.
    start_widths: list[float] = setting(factory=lambda: [1.0], help="Rollouts start at theta_0 x one of these "
                                                                   "widths, e.g. 1,10 (states formulation).")
    rollout_noise: bool = setting(True, "Add sigma_F noise to the visiting rollouts (states formulation).")
    # L2O-Entropy local entropy, at the one-step predictions s_j + mu(sg(s_j)) on the surrogate
    # loss of the condition's weighted points (as the Hessian trace of FlatnessOptions).
    entropy_weight: float = setting(0.0, "Local-entropy regularizer weight (Entropy-SGD; states formulation: at the "
                                         "one-step predictions, on the condition's surrogate loss).")
    entropy_gamma: float = setting(100.0, "Local-entropy scope gamma (larger = a narrower neighbourhood).")
    entropy_temperature: float = setting(1e-4, "Local-entropy temperature.")
    entropy_steps: int = setting(10, "Langevin steps of the local-entropy estimate.")
    entropy_lr: float = setting(1e-3, "Langevin step size of the local-entropy estimate.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_beta(self.beta)
        check_entropy(self)
        check_start_widths(self)


def check_start_widths(o: Any) -> None:
    """Normalise ``o.start_widths`` to floats and refuse an empty or non-positive list."""
    o.start_widths = [float(w) for w in o.start_widths]
    if not o.start_widths or min(o.start_widths) <= 0:
        raise LohpError(f"start_widths must be positive numbers (got {list(o.start_widths)})")


def check_entropy(o: Any) -> None:
    if o.entropy_weight < 0 or min(o.entropy_gamma, o.entropy_temperature, o.entropy_lr) <= 0 or o.entropy_steps < 1:
        raise LohpError("entropy_weight must be >= 0, entropy_gamma / entropy_temperature / entropy_lr > 0 and "
                        "entropy_steps >= 1")


class OnPolicyStates:
    # the names beside the loss value (the training log's columns)
    diagnostics = ("loss_on", "loss_off", "hessian_trace", "entropy_loss")

    def __init__(self, config: Any):
        """``config``: the run's :class:`~lohp.losses.LossConfig`, or the options themselves."""
        self.config = config
        self.options = options_of(config, OneStepOptions, "OnPolicyStates")

    @torch.no_grad()
    def visit(self, policy: LohpPolicy, batch: Batch) -> torch.Tensor:
        """States ``[B, N, d]`` the current policy visits (s_0 .. s_{N-1}), no graph."""
        off, cfg = batch.offline, self.options
        b, n1, d = off.shape
        widths = torch.tensor(cfg.start_widths, device=off.device)
        pick = torch.randint(len(widths), (b,), generator=batch.generator, device=off.device)
        s = off[:, 0] * widths[pick][:, None]
        states = [s]
        for j in range(n1 - 2):
            jj = torch.full((b,), j, dtype=torch.long, device=off.device)
            s = s + policy.heads(s, jj, batch.cond)[0]
            if cfg.rollout_noise:
                s = s + policy.sigma_f(jj)[:, None] * torch.randn(s.shape, generator=batch.generator,
                                                                   device=s.device)
            states.append(s)
        return torch.stack(states, 1)

    def __call__(self, policy: LohpPolicy, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        off, beta = batch.offline, self.options.beta
        b, n1, d = off.shape
        n = n1 - 1
        real = off[:, :-1]
        if beta < 1:
            visited = self.visit(policy, batch)
            on = torch.rand((b, n), generator=batch.generator, device=off.device) >= beta
            states = torch.where(on[..., None], visited, real)
        else:
            on = torch.zeros((b, n), dtype=torch.bool, device=off.device)
            states = real
        jj = torch.arange(n, device=off.device).repeat(b)
        mu, _ = policy.heads(states.reshape(b * n, d), jj, batch.cond.repeat_interleave(n, 0))
        err = ((off[:, 1:].reshape(b * n, d) - states.reshape(b * n, d) - mu)
               / policy.step_scale[jj][:, None]).square().mean(-1)
        loss = err.mean()
        diag = {}
        cfg = self.options
        if cfg.flatness_weight > 0 or cfg.entropy_weight > 0:
            loss = loss + self.flatness(policy, batch, states.reshape(b * n, d) + mu, n, diag)
        on = on.reshape(-1)
        with torch.no_grad():
            if on.any():
                diag["loss_on"] = err[on].mean().item()
            if (~on).any():
                diag["loss_off"] = err[~on].mean().item()
        return loss, diag

    def flatness(self, policy: LohpPolicy, batch: Batch, pred: torch.Tensor, n: int, diag: dict[str, float]
                 ) -> torch.Tensor:
        """The L2O-Entropy regularizers at the one-step predictions ``pred [B*N, d]`` (whose
        gradient reaches the policy through mu): the Hutchinson Hessian trace and the local
        entropy of the surrogate loss on each task's condition points."""
        cfg = self.options
        surrogate = getattr(policy.structure, "surrogate_loss", None)
        if surrogate is None:
            raise LohpError(f"the {policy.structure.kind} structure has no surrogate_loss, which the flatness "
                            "regularizers need; train without them or add it to the structure")
        cond = batch.cond.repeat_interleave(n, 0)

        def loss_fn(theta: torch.Tensor) -> torch.Tensor:
            return surrogate(cond, theta)

        total = pred.new_zeros(())
        if cfg.flatness_weight > 0:
            trace = hutchinson_trace(loss_fn, pred, cfg.flatness_probes, batch.generator).mean()
            diag["hessian_trace"] = trace.item()
            total = total + cfg.flatness_weight * trace
        if cfg.entropy_weight > 0:
            ent = local_entropy_loss(loss_fn, pred, cfg.entropy_gamma, cfg.entropy_temperature, cfg.entropy_steps,
                                     cfg.entropy_lr, batch.generator).mean()
            diag["entropy_loss"] = ent.item()
            total = total + cfg.entropy_weight * ent
        return total
