"""The hybrid-policy sub-trajectory balance loss (lo-hp-v1, lo-hp-literal; formulation "subtb").

    L = (1 - beta) * E_on[ sum_{m<n} w(n-m) Delta^2 ] + beta * E_off[ ... ]

On-policy part: K rollouts of P_F per task from the trajectory's own theta_0. With
``rollout="reparam"`` the states stay differentiable (s_{j+1} = s_j + mu + sigma * eps), so
the reward's gradient reaches the policy through the states; with ``"detached"`` only the
log-probabilities carry gradient (the literal reading, which does not learn well).
Flows: log F(s_j) = log Z_j + log R_{kj}(s_j), log R = -||s - theta_{kj}||^2 / (2 width^2)
with a per-coordinate width (default sigma_F[j], that is rho = sigma_F / sqrt(d):
docs/method.md, section 'Flows and reward').
``log_z="mean-residual"`` replaces log Z by its least-squares optimum for each task and
segment (the mean residual over the task's K rollouts: the log-variance form);
``"learned"`` uses the policy's per-step log Z.

Off-policy part: the real trajectory strided by k. ``off_policy="ml"`` scores real steps
by maximum likelihood under P_F; ``"subtb"`` computes SubTB residuals on them (log R = 0
at matched points, learned log Z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lohp.config import setting
from lohp.errors import LohpError
from lohp.flatness import hutchinson_trace
from lohp.losses.base import _FLATNESS_SCOPE, Batch, FlatnessOptions, check_beta, check_choice, options_of
from lohp.losses.subtb import subtb_loss, subtb_residuals, subtb_weights
from lohp.policy import LohpPolicy

ROLLOUTS = ("reparam", "detached")
LOG_Z = ("mean-residual", "learned")
OFF_POLICY = ("ml", "subtb")
_TAKE = "lo-hp-v1, lo-hp-literal (the SubTB formulation) take it"


@dataclass
class SubTBOptions(FlatnessOptions):
    """The options of :class:`HybridSubTB` (lo-hp-v1, lo-hp-literal: the "subtb" formulation)."""

    formulation = "subtb"
    scope = {**FlatnessOptions.scope, **{name: _TAKE for name in (
        "lam", "rollouts", "on_policy_tasks", "rollout", "log_z", "off_policy", "normalize", "reward_width")}}

    beta: float = setting(0.5, "Weight of the off-policy term.")
    lam: float = setting(0.9, "SubTB(lambda) segment weight.")
    rollouts: int = setting(4, "On-policy rollouts per task (K).")
    on_policy_tasks: int | None = setting(8, "Roll out only the first n tasks of a batch (cost); none = all.")
    rollout: str = setting("reparam", "On-policy rollouts: reparam or detached.")
    log_z: str = setting("mean-residual", "log Z: mean-residual or learned.")
    off_policy: str = setting("ml", "Off-policy term: ml (maximum likelihood) or subtb.")
    normalize: bool = setting(True, "Divide each loss term by its detached value before mixing.")
    reward_width: float | None = setting(None, "Per-coordinate reward width, in units of the step scale "
                                               "(default: sigma_f).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_beta(self.beta)
        check_subtb(self)
        check_subtb_mix(self)


def check_subtb(o: Any) -> None:
    """The SubTB options' own rules (also those of a flat option set in the subtb formulation)."""
    if not 0 < o.lam:
        raise LohpError(f"lambda must be > 0 (got {o.lam})")
    if o.rollouts < 1:
        raise LohpError("rollouts must be >= 1")
    for name, value, allowed in (("rollout", o.rollout, ROLLOUTS), ("log_z", o.log_z, LOG_Z),
                                 ("off_policy", o.off_policy, OFF_POLICY)):
        check_choice(name, value, allowed)


def check_subtb_mix(o: Any) -> None:
    """Rules across the SubTB options: the regularizer needs rollouts (beta < 1), the
    mean-residual log Z needs two rollouts a task."""
    if o.flatness_weight > 0 and o.beta >= 1:
        raise LohpError(_FLATNESS_SCOPE)
    if o.log_z == "mean-residual" and o.rollouts < 2 and o.beta < 1:
        raise LohpError("log_z=mean-residual needs rollouts >= 2 (the mean is over a task's rollouts)")


class HybridSubTB:
    diagnostics = ("loss_on", "loss_off", "hessian_trace")  # the names beside the loss value (the training log's columns)

    def __init__(self, config: Any):
        """``config``: the run's :class:`~lohp.losses.LossConfig`, or the options themselves."""
        self.config = config
        self.options = options_of(config, SubTBOptions, "HybridSubTB")

    def __call__(self, policy: LohpPolicy, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.options
        diag: dict[str, float] = {}
        terms = []
        final = None
        if cfg.beta < 1:
            on, final = self.on_policy(policy, batch)
            diag["loss_on"] = on.item()
            terms.append((1 - cfg.beta, on, on))
        if cfg.beta > 0:
            off, off_scale = self.off_policy(policy, batch)
            diag["loss_off"] = off.item()
            terms.append((cfg.beta, off, off_scale))
        if cfg.normalize:
            total = sum(w * t / (s.detach().abs() + 1e-8) for w, t, s in terms)
        else:
            total = sum(w * t for w, t, _ in terms)
        if cfg.flatness_weight > 0 and final is not None:
            trace = self.flatness(batch, *final)
            diag["hessian_trace"] = trace.item()
            total = total + cfg.flatness_weight * trace
        return total, diag

    def flatness(self, batch: Batch, s_final: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mean Hutchinson Hessian trace of each task's training loss at the generated s_N;
        differentiable, so the policy learns to generate flatter weights (L2O-Entropy)."""

        if batch.task_loss is None:
            raise ValueError("the flatness regularizer needs Batch.task_loss")
        return hutchinson_trace(batch.task_loss(rows), s_final, self.options.flatness_probes,
                                batch.generator).mean()

    # ------------------------------------------------------------------ pieces
    def log_reward(self, policy: LohpPolicy, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``states/targets [B, N+1, d]`` -> log R ``[B, N+1]``."""
        n = states.shape[1] - 1
        width_rel = self.options.reward_width if self.options.reward_width is not None else policy.configured_sigma_f
        j = torch.arange(n + 1, device=states.device).clamp(max=n - 1)
        width = width_rel * policy.step_scale[j]
        return -(states - targets).square().sum(-1) / (2 * width.square())

    def on_policy(self, policy: LohpPolicy, batch: Batch) -> torch.Tensor:
        cfg = self.options
        off, n_roll, cond = batch.offline, cfg.rollouts, batch.cond  # rollouts per task (not the compression k)
        if cfg.on_policy_tasks is not None:  # rollouts cost N sequential passes: cap the tasks
            off, cond = off[:cfg.on_policy_tasks], cond[:cfg.on_policy_tasks]
        b, n1, d = off.shape
        n = n1 - 1
        learned_b = policy.learned_backward
        detach = cfg.rollout == "detached"
        cond = cond.repeat_interleave(n_roll, 0)
        s0 = off[:, 0].repeat_interleave(n_roll, 0)
        states, log_pf, nus = [s0], [], []
        s = s0
        for j in range(n):
            jj = torch.full((b * n_roll,), j, dtype=torch.long, device=off.device)
            mu, nu = policy.heads(s, jj, cond, backward=learned_b)
            nus.append(nu)
            eps = torch.randn(s.shape, generator=batch.generator, device=s.device)
            s_next = s + mu + policy.sigma_f(jj)[:, None] * eps
            if detach:
                s_next = s_next.detach()
            log_pf.append(policy.log_pf(s, s_next, jj, mu))
            states.append(s_next)
            s = s_next
        if learned_b:
            nus.append(policy.heads(s, torch.full((b * n_roll,), n, device=off.device), cond, backward=True)[1])
        log_pb = []
        for j in range(n):
            jj = torch.full((b * n_roll,), j, dtype=torch.long, device=off.device)
            log_pb.append(policy.log_pb(states[j], states[j + 1], jj, nus[j + 1] if learned_b else None, s0))
        traj = torch.stack(states, 1)
        log_f = self.log_reward(policy, traj, off.repeat_interleave(n_roll, 0))
        if cfg.log_z == "learned":
            log_f = log_f + policy.log_z()
        delta = subtb_residuals(log_f, torch.stack(log_pf, 1), torch.stack(log_pb, 1))
        if cfg.log_z == "mean-residual":
            delta = delta.reshape(b, n_roll, n1, n1)
            delta = delta - delta.mean(1, keepdim=True)
        w = subtb_weights(n1, cfg.lam, off.device)
        rows = torch.arange(b, device=off.device).repeat_interleave(n_roll)
        return subtb_loss(delta, w).mean(), (states[-1], rows)

    def off_policy(self, policy: LohpPolicy, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(term, its normaliser): the normaliser of ML is its non-negative quadratic part."""
        off = batch.offline
        b, n1, d = off.shape
        n = n1 - 1
        learned_b = policy.learned_backward
        if self.options.off_policy == "ml":
            states = off[:, :-1].reshape(b * n, d)
            nxt = off[:, 1:].reshape(b * n, d)
            jj = torch.arange(n, device=off.device).repeat(b)
            mu, _ = policy.heads(states, jj, batch.cond.repeat_interleave(n, 0))
            sig = policy.sigma_f(jj)
            z = (nxt - states - mu) / sig[:, None]
            quad = 0.5 * z.square().sum(-1)
            nll = quad + d * policy.relative_sigma_f(jj).log()  # constants dropped
            return nll.reshape(b, n).sum(1).mean(), quad.reshape(b, n).sum(1).mean()
        # SubTB on the real trajectory: every state through the backbone once.
        states = off.reshape(b * n1, d)
        jj = torch.arange(n1, device=off.device).repeat(b)
        mu, nu = policy.heads(states, jj, batch.cond.repeat_interleave(n1, 0), backward=learned_b)
        mu = mu.reshape(b, n1, d)
        t = torch.arange(n, device=off.device).repeat(b)
        log_pf = policy.log_pf(off[:, :-1].reshape(-1, d), off[:, 1:].reshape(-1, d), t,
                               mu[:, :-1].reshape(-1, d)).reshape(b, n)
        nu_next = nu.reshape(b, n1, d)[:, 1:].reshape(-1, d) if learned_b else None
        log_pb = policy.log_pb(off[:, :-1].reshape(-1, d), off[:, 1:].reshape(-1, d), t, nu_next,
                               off[:, :1].expand(b, n, d).reshape(-1, d)).reshape(b, n)
        log_f = policy.log_z().expand(b, n1)  # log R = 0 at the matched checkpoints
        delta = subtb_residuals(log_f, log_pf, log_pb)
        term = subtb_loss(delta, subtb_weights(n1, self.options.lam, off.device)).mean()
        return term, term
