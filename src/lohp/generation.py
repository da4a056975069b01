"""Inference: generate weights for a new task with a trained policy, no task gradient.

    gen = Generator.load("runs/policy")
    task = gen.family().sample(3, "heldout")
    w = gen.generate(task)            # GeneratedWeights: .theta (flat) and .named (tensors)
    model = gen.adapt(task.model(), task)
    gen.latency(task)                 # median ms, with and without computing the condition
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from lohp.errors import LohpError
from lohp.io import WEIGHTS_FORMAT, atomic_save_tensors, check_finite, ensure_writable_dir, load_tensors
from lohp.layout import ParamLayout
from lohp.optim import DEFAULTS, make_optimizer, optimizer_names
from lohp.optim.runs import train_runs
from lohp.policy import LohpPolicy
from lohp.policy_folder import load_policy
from lohp.policy.structure import retarget
from lohp.tasks import Task, TaskFamily, make_family


@dataclass
class GeneratedWeights:
    theta: torch.Tensor                 # [d]
    named: dict[str, torch.Tensor]      # layout names -> tensors
    layout: ParamLayout

    @classmethod
    def of(cls, theta: torch.Tensor, layout: ParamLayout) -> "GeneratedWeights":
        """Flat weights ``[d]`` with their named tensors (copies) under ``layout``."""
        return cls(theta, {k: v.clone() for k, v in layout.unflatten(theta).items()}, layout)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        path = Path(path)
        ensure_writable_dir(path.parent)
        meta = {"format": WEIGHTS_FORMAT, "layout": json.dumps(self.layout.to_dict()), **(metadata or {})}
        atomic_save_tensors(path, {k: v.contiguous() for k, v in self.named.items()}, metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "GeneratedWeights":
        """A file written by :meth:`save` (``lohp generate --out``), checked against its sha256."""

        named = load_tensors(path, "generated weights", "generate them again (lohp generate ... --overwrite)")
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "layout" not in meta:
            raise LohpError(f"{path} was not written by lohp generate (no layout in its metadata)")
        layout = ParamLayout.from_dict(json.loads(meta["layout"]))
        return cls(layout.flatten(named), named, layout)


class _MeanRollout(nn.Module):
    """The N mean steps as one module, so TorchScript can trace the whole loop."""

    def __init__(self, policy: LohpPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for j in range(self.policy.n_steps):
            s = s + self.policy(s, torch.full((s.shape[0],), j, dtype=torch.long, device=s.device), cond)
        return s


class Generator:
    """Loads a trained policy and generates weights for tasks.

    Single-task mean generation runs the whole N-step loop through one of the ``BACKENDS``:

    - ``"trace"`` (default): a TorchScript trace (built once, about 1 s); on a CPU this
      policy's cost is mostly per-operator overhead, which the trace cuts about 2.5x.
    - ``"inductor"``: ``torch.compile`` (default mode, one fixed-shape graph of the loop):
      fused C++ kernels, faster again, but the first compile of a policy takes minutes on a
      small CPU; inductor caches it on disk (``TORCHINDUCTOR_CACHE_DIR``), so a later process
      compiles in seconds. Worth it for a policy that serves many tasks.
    - ``"eager"``: plain PyTorch, the reference the others are checked against.

    A trace or compile that fails, or disagrees with the eager path on a probe input (rtol
    1e-4, atol 1e-5), falls back to eager with one warning line. ``compiled=False`` is the
    older spelling of ``backend="eager"``.
    """

    BACKENDS = ("trace", "inductor", "eager")

    def __init__(self, policy: LohpPolicy, meta: dict[str, Any], device: str = "cpu", compiled: bool = True,
                 backend: str | None = None):
        self.policy = policy.to(device).eval()
        self.meta = meta
        self.device = device
        backend = backend or ("trace" if compiled else "eager")
        if backend not in self.BACKENDS:
            raise LohpError(f"unknown generation backend {backend!r}; choose one of {', '.join(self.BACKENDS)}")
        self.backend = backend
        self.compiled = backend != "eager"
        self.layout = ParamLayout.from_dict(meta["layout"])
        self._traced: dict[tuple[int, int], Any] = {}
        self._retargeted: dict[str, LohpPolicy] = {}

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", compiled: bool = True,
             backend: str | None = None) -> "Generator":
        policy, meta = load_policy(directory, device)
        return cls(policy, meta, device, compiled, backend)

    def _mean_rollout(self, s0: torch.Tensor, cond: torch.Tensor, policy: LohpPolicy | None = None) -> torch.Tensor:
        policy = policy or self.policy
        b = s0.shape[0]
        if not self.compiled or b > 1:  # batches amortise the per-operator overhead anyway
            return policy.rollout(s0, cond)
        key = (id(policy), b)  # self.policy or one of the (kept) retargeted policies
        if key not in self._traced:
            self._traced[key] = self._trace(s0, cond, policy)
        traced = self._traced[key]
        if traced is None:
            return policy.rollout(s0, cond)
        # The plain interpreter: no profiling runs or re-specialisation (which make some
        # calls slow at unpredictable times); the saving is the Python overhead alone.
        try:
            with torch.jit.optimized_execution(False):
                return traced(s0, cond)
        except Exception as exc:  # noqa: BLE001 - e.g. a recompile the compiler refuses: eager from now on
            _warn_fallback(self.backend, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160])
            self._traced[key] = None
            return policy.rollout(s0, cond)

    def _trace(self, s0: torch.Tensor, cond: torch.Tensor, policy: LohpPolicy) -> Any:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                loop = _MeanRollout(policy).eval()
                policy._film_table()  # fill the eval-mode cache first: the graph sees one state of it
                if self.backend == "inductor":
                    # one graph per policy of the same loop code: lift dynamo's per-code limit
                    # (8) so a process serving several policies does not hit it
                    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
                    fast = torch.compile(loop, fullgraph=True, dynamic=False)
                else:
                    fast = torch.jit.freeze(torch.jit.trace(loop, (s0, cond), check_trace=False))
                probe = s0 + 0.01 * torch.randn_like(s0)
                with torch.jit.optimized_execution(False):
                    out = fast(probe, cond)
                if not torch.allclose(out, policy.rollout(probe, cond), atol=1e-5, rtol=1e-4):
                    _warn_fallback(self.backend, "it disagreed with the plain path on a probe input")
                    return None
            return fast
        except Exception as exc:  # noqa: BLE001 - any tracing or compile failure falls back to eager
            _warn_fallback(self.backend, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160])
            return None

    @property
    def n_steps(self) -> int:
        return self.policy.n_steps

    def family(self, **overrides: Any) -> TaskFamily:
        return make_family(self.meta["family"], **{**self.meta["family_config"], **overrides})

    def check_task(self, task: Task) -> None:
        """Refuse (one line) a task whose target the policy cannot serve."""
        self.policy_for(task)

    def policy_for(self, task: Task) -> LohpPolicy:
        """The policy for this task's target: itself for the architecture it was trained on,
        else the same parameters on the structure of the task's layout when the structure
        can serve it (another hidden width of an MLP, another class count of a head:
        cross-architecture generation); otherwise a one-line LohpError."""
        layout = task.layout
        if layout == self.layout:
            return self.policy
        key = json.dumps(layout.to_dict(), sort_keys=True)
        if key not in self._retargeted:
            names_a, names_b = [e.name for e in self.layout.entries], [e.name for e in layout.entries]
            if names_a != names_b:
                self.layout.check_matches(layout, f"the policy's target model (task {task.name})")
            try:
                structure = retarget(self.policy.structure, layout)
            except LohpError as exc:
                raise LohpError(f"task {task.name}: {exc}") from None
            self._retargeted[key] = self.policy.retargeted(structure)
        return self._retargeted[key]

    def initial_state(self, task: Task, seed: int = 0, init_scale: float = 1.0) -> torch.Tensor:
        """s_0 from the same distribution as the training trajectories' theta_0 (x init_scale)."""
        return task.init_theta(seed, self.meta["init"], self.meta["init_sigma"]) * init_scale

    @torch.inference_mode()
    def generate_batch(self, tasks: list[Task], seeds: list[int] | None = None, temperature: float = 0.0,
                       init_scale: float = 1.0, sample_seed: int = 0,
                       s0: torch.Tensor | None = None) -> torch.Tensor:
        """Flat weights ``[len(tasks), d]`` for several tasks in one batched rollout."""
        if not temperature >= 0:  # a negative one would silently be the mean path
            raise LohpError(f"the sampling temperature must be >= 0 (0: the mean path); got {temperature}")
        policies = [self.policy_for(t) for t in tasks]
        if any(p is not policies[0] for p in policies):
            raise LohpError("generate_batch needs tasks of one architecture; generate the others separately")
        policy = policies[0]
        seeds = seeds if seeds is not None else [0] * len(tasks)
        if s0 is None:
            s0 = torch.stack([self.initial_state(t, s, init_scale) for t, s in zip(tasks, seeds)])

        conds = [t.condition(policy.condition_points) for t in tasks]
        for t, c in zip(tasks, conds):
            check_finite(c, f"task {t.name}'s condition (from its training split)",
                         "its features hold NaN or inf: clean the data")
        cond = torch.stack(conds).to(self.device)
        s0 = s0.to(self.device)
        if temperature <= 0:
            out = self._mean_rollout(s0, cond, policy).cpu()
        else:
            gen = torch.Generator(device=self.device).manual_seed(sample_seed)
            out = policy.rollout(s0, cond, temperature, gen).cpu()
        bad = [t.name for t, th in zip(tasks, out) if not torch.isfinite(th).all()]
        if bad:
            raise LohpError(f"the policy generated non-finite weights for {len(bad)} task(s), e.g. {bad[0]}; "
                            "the task is outside what the policy was trained on (check its features' scale)")
        return out

    def generate(self, task: Task, seed: int = 0, temperature: float = 0.0, init_scale: float = 1.0,
                 sample_seed: int = 0) -> GeneratedWeights:
        """Mean mode (``temperature=0``): the same seed gives the same weights. Sampling mode:
        ``temperature > 0`` adds ``temperature * sigma_F`` noise per step (``sample_seed``)."""
        return GeneratedWeights.of(self.generate_batch([task], [seed], temperature, init_scale, sample_seed)[0],
                                   task.layout)

    def refine_hparams(self, optimizer: str = "adam", lr: float | None = None) -> dict[str, Any]:
        """The refine optimizer's settings: those Stage I used for it on this policy's store
        (recorded in the policy), else the family's defaults, else lohp's; ``lr`` wins."""

        if optimizer not in optimizer_names():
            raise LohpError(f"unknown refine optimizer {optimizer!r}; choose from {', '.join(optimizer_names())}")
        hp = dict(DEFAULTS[optimizer])
        recorded = self.meta.get("store_hparams") or {}
        if optimizer in recorded:
            hp.update(recorded[optimizer])
        else:
            try:
                hp.update(type(self.family()).optimizer_defaults.get(optimizer, {}))
            except LohpError:  # the family cannot be rebuilt here (data moved): lohp's defaults
                pass
        if lr is not None:
            if not lr > 0:
                raise LohpError(f"the refine learning rate must be > 0 (got {lr})")
            hp["lr"] = float(lr)
        return hp

    def refine(self, task: Task, theta: torch.Tensor, steps: int, optimizer: str = "adam", lr: float | None = None,
               batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
        """``steps`` gradient steps of ``optimizer`` on the task's training split from ``theta``
        (the Stage I protocol: minibatches of ``batch_size`` drawn with replacement)."""

        steps = _refine_steps(steps)
        if steps == 0:
            return theta.clone()
        opt = make_optimizer(optimizer, **self.refine_hparams(optimizer, lr))
        bs = int(batch_size or self.meta.get("store_batch_size") or 32)
        thetas, _, _ = train_runs([task], opt, theta[None], steps, bs, record_every=steps, seed=seed,
                                  device=self.device)
        out = thetas[0, -1].cpu()
        if not torch.isfinite(out).all():
            raise LohpError(f"refining {task.name} with {optimizer} diverged (non-finite weights); lower --refine-lr")
        return out

    def adapt(self, model: nn.Module, task: Task, refine_steps: int = 0, optimizer: str = "adam",
              lr: float | None = None, batch_size: int | None = None, **kwargs: Any) -> nn.Module:
        """Load generated weights into the model's generated subset (in place) and return it;
        with ``refine_steps > 0``, ``refine_steps`` steps of ``optimizer`` on the task's
        training split follow (generate-then-refine). ``kwargs`` go to :meth:`generate`."""
        refine_steps = _refine_steps(refine_steps)
        theta = self.generate(task, **kwargs).theta
        if refine_steps:
            theta = self.refine(task, theta, refine_steps, optimizer, lr, batch_size, kwargs.get("seed", 0))
        task.layout.load_into(model, theta)
        return model

    @torch.inference_mode()
    def latency(self, task: Task, repeats: int = 30, warmup: int = 5) -> dict[str, float]:
        """Median ms to produce the weights: policy steps only, and including the condition."""
        policy = self.policy_for(task)
        s0 = self.initial_state(task)[None].to(self.device)

        def steps_only(cond: torch.Tensor) -> torch.Tensor:
            return self._mean_rollout(s0, cond, policy)

        def with_condition() -> torch.Tensor:
            return self._mean_rollout(s0, task.condition(policy.condition_points)[None].to(self.device), policy)

        cond = task.condition(policy.condition_points)[None].to(self.device)
        for _ in range(warmup):
            steps_only(cond)
            with_condition()
        a, b = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            steps_only(cond)
            t1 = time.perf_counter()
            with_condition()
            t2 = time.perf_counter()
            a.append(t1 - t0)
            b.append(t2 - t1)
        return {"latency_ms": 1e3 * statistics.median(a), "latency_with_condition_ms": 1e3 * statistics.median(b),
                "steps": self.n_steps, "repeats": repeats}


def _warn_fallback(backend: str, why: str) -> None:
    print(f"lohp: the {backend} generation path is not usable here ({why}); generating with plain PyTorch",
          file=sys.stderr)


def _refine_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise LohpError(f"refine steps must be a whole number >= 0 (got {steps!r})")
    return steps
