"""One loss interface, selected by method name.

Every loss is called as ``loss(policy, batch) -> (scalar, diagnostics)`` on a batch of
offline trajectories already strided by k (online time). Method presets:

| method          | what it is                                                                 |
|-----------------|----------------------------------------------------------------------------|
| lo-hp           | hybrid, "on-policy states, off-policy targets": one-step sub-trajectories  |
|                 | from states the current policy visits (detached rollouts) and from real    |
|                 | states, each trained toward the matched checkpoint, mixed by beta          |
| lo-op           | lo-hp with beta = 0 (on-policy segments only)                               |
| lo-hp-v1        | the earlier hybrid: reparameterised on-policy SubTB (log-variance log Z,   |
|                 | fixed P_B) + off-policy maximum likelihood, each normalised, mixed by beta  |
| lo-hp-literal   | docs/method.md, section 'Sub-trajectory balance', read literally:           |
|                 | learned P_B, detached rollouts, learned log Z, off-policy SubTB, raw        |
|                 | (unnormalised) mix                                                          |
| lo-di           | regression of real stride-k steps (no flow terms)                           |
| lo-di-noise     | lo-di on noise-perturbed inputs (denoising target)                          |
| hypernetwork    | lo-di with k = T: one step from theta_0 to theta_T                          |
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

from lohp.config import Config, setting
from lohp.errors import LohpError

FORMULATIONS = ("states", "subtb")
ROLLOUTS = ("reparam", "detached")
LOG_Z = ("mean-residual", "learned")
OFF_POLICY = ("ml", "subtb")


@dataclass
class Batch:
    offline: torch.Tensor          # [B, N+1, d] real trajectory at online times (stride k)
    cond: torch.Tensor             # [B, C, F] task conditions
    generator: torch.Generator     # randomness of this iteration (rollout noise, input noise)
    # Training-split loss of the batch's tasks: ``task_loss(rows)(theta [len(rows), d]) -> [len(rows)]``
    # (rows index this batch). Only the flatness regularizer needs it.
    task_loss: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None


@dataclass
class LossConfig(Config):
    what = "loss"

    method: str = setting("lo-hp", "Stage II method (lohp.losses.method_names(): lo-hp, lo-op, lo-hp-v1, "
                                   "lo-hp-literal, lo-di, lo-di-noise, hypernetwork, and registered ones).")
    k: int = setting(2, "Compression factor: online step j <-> offline step k*j, N = T/k policy steps.")
    # states: on-policy states, off-policy targets (one-step segments, losses/onestep.py);
    # subtb: SubTB residuals over whole on-policy rollouts (losses/hybrid.py: lo-hp-v1, literal)
    formulation: str = setting("states", "states (one-step segments from visited states) or subtb (SubTB "
                                         "residuals over whole on-policy rollouts).")
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
    input_noise: float = setting(0.0, "lo-di-noise: input noise std, in units of the theta_0 RMS.")
    backward: str = setting("fixed", "Backward policy P_B: fixed, bridge or learned.")
    # L2O-Entropy regularizer: weight * Hutchinson Hessian trace of the task's training loss
    # at the generated s_N (on-policy).
    flatness_weight: float = setting(0.0, "Flatness regularizer weight (Hessian trace at the generated weights).")
    flatness_probes: int = setting(1, "Hutchinson probes of the flatness regularizer.")
    # lo-hp / lo-op (formulation "states"): both regularizers act at the one-step predictions
    # s_j + mu(sg(s_j)) on the surrogate loss of the condition's weighted points.
    entropy_weight: float = setting(0.0, "Local-entropy regularizer weight (Entropy-SGD; states formulation: at the "
                                         "one-step predictions, on the condition's surrogate loss).")
    entropy_gamma: float = setting(100.0, "Local-entropy scope gamma (larger = a narrower neighbourhood).")
    entropy_temperature: float = setting(1e-4, "Local-entropy temperature.")
    entropy_steps: int = setting(10, "Langevin steps of the local-entropy estimate.")
    entropy_lr: float = setting(1e-3, "Langevin step size of the local-entropy estimate.")
    # formulation "states": the rollouts' starts are theta_0 x a width drawn from these, so the
    # policy also learns to correct from far-away starts; rollout_noise adds sigma_F noise.
    start_widths: list[float] = setting(factory=lambda: [1.0], help="Rollouts start at theta_0 x one of these "
                                                                   "widths, e.g. 1,10 (states formulation).")
    rollout_noise: bool = setting(True, "Add sigma_F noise to the visiting rollouts (states formulation).")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise LohpError(f"k must be >= 1 (got {self.k})")
        if not 0 <= self.beta <= 1:
            raise LohpError(f"beta must lie in [0, 1] (got {self.beta})")
        if not 0 < self.lam:
            raise LohpError(f"lambda must be > 0 (got {self.lam})")
        if self.rollouts < 1:
            raise LohpError("rollouts must be >= 1")
        for name, value, allowed in (("formulation", self.formulation, FORMULATIONS), ("rollout", self.rollout, ROLLOUTS),
                                     ("log_z", self.log_z, LOG_Z), ("off_policy", self.off_policy, OFF_POLICY)):
            if value not in allowed:
                raise LohpError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.flatness_weight < 0 or self.flatness_probes < 1:
            raise LohpError("flatness_weight must be >= 0 and flatness_probes >= 1")
        self.start_widths = [float(w) for w in self.start_widths]
        if not self.start_widths or min(self.start_widths) <= 0:
            raise LohpError(f"start_widths must be positive numbers (got {list(self.start_widths)})")
        regression = self.method in _METHODS and _METHODS[self.method].regression
        subtb = self.formulation == "subtb" and not regression
        if self.entropy_weight < 0 or min(self.entropy_gamma, self.entropy_temperature, self.entropy_lr) <= 0 \
                or self.entropy_steps < 1:
            raise LohpError("entropy_weight must be >= 0, entropy_gamma / entropy_temperature / entropy_lr > 0 and "
                            "entropy_steps >= 1")
        if (self.flatness_weight > 0 or self.entropy_weight > 0) and (regression or (subtb and self.beta >= 1)):
            raise LohpError("the flatness regularizers act on weights the policy generates; use them with lo-hp, lo-op "
                            "(one-step predictions) or lo-hp-v1 / lo-hp-literal (rollouts, beta < 1)")
        if self.entropy_weight > 0 and subtb:
            raise LohpError("the local-entropy regularizer is wired into the states formulation (lo-hp, lo-op); "
                            "lo-hp-v1 / lo-hp-literal take flatness_weight (Hessian trace)")
        if subtb and self.log_z == "mean-residual" and self.rollouts < 2 and self.beta < 1:
            raise LohpError("log_z=mean-residual needs rollouts >= 2 (the mean is over a task's rollouts)")



@dataclass(frozen=True)
class Method:
    """A Stage II method: its name, the loss it trains with (``loss(config) -> callable``
    returning ``(loss, diagnostics)``), its preset over :class:`LossConfig`, and whether it
    learns one step over the whole trajectory (the hypernetwork: k = T)."""

    name: str
    loss: Callable[["LossConfig"], Any]
    preset: dict[str, Any] = field(default_factory=dict)
    whole_trajectory: bool = False
    regression: bool = False        # off-policy regression only (no on-policy rollouts)


_METHODS: dict[str, Method] = {}


def register_method(method: Method, overwrite: bool = False) -> None:
    """Make ``method.name`` usable everywhere (``lohp train --method``, presets, saved
    policies record it by name)."""
    if method.name in _METHODS and _METHODS[method.name] is not method and not overwrite:
        raise LohpError(f"a method named {method.name!r} is already registered; pick another name")
    _METHODS[method.name] = method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise LohpError(f"unknown method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


PRESETS: dict[str, dict[str, Any]] = {
    # beta 0.8: at 0.5 the on-policy slots (far from the trajectory early in training) slowed
    # whole-network policies down; 0.8 kept the robustness and learned as fast as lo-di.
    "lo-hp": {"beta": 0.8},
    "lo-op": {"beta": 0.0},
    "lo-hp-v1": {"formulation": "subtb"},
    "lo-hp-literal": {"formulation": "subtb", "backward": "learned", "rollout": "detached", "log_z": "learned",
                      "off_policy": "subtb", "normalize": False},
    "lo-di": {},
    "lo-di-noise": {"input_noise": 5.0},
    "hypernetwork": {},
}
METHODS = tuple(PRESETS)  # the built-in methods (registered in lohp.losses); method_names() is the live list


def loss_config(method: str, **overrides: Any) -> LossConfig:
    m = get_method(method)
    known = {f.name for f in fields(LossConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise LohpError(f"unknown loss option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return LossConfig(method=method, **{**m.preset, **{k: v for k, v in overrides.items() if v is not None}})
