"""Policy and training presets the benchmarks share (one place, so a scenario and the
studies that reuse it, ``refine`` and ``cross``, never import one another)."""

from __future__ import annotations

from lohp.errors import LohpError
from lohp.l2o import make_regularizer

# Heads on 1,280 features (transfer, few-shot): rows of 1,281 values, cut into tokens of 64
# (20 tokens a class); the policy steps on the surrogate gradient of the condition.
HEAD_POLICY = {"token_size": 64}

# Whole-network settings (docs/method.md, section 'Whole-network generation'): the policy
# adds a learned gain on the structure's surrogate-gradient features, and learns faster
# than on heads.
MLP_POLICY = {"condition_skip": True, "token_size": 32}
MLP_TRAIN = {"lr": 3e-3, "eval_tasks": 8, "diagnostic_trajectories": 8}  # whole-MLP rollouts are costly

# LoRA on MiniLM-L6: a smaller U-Net so that N = 16 steps fit the latency target.
LORA_POLICY = {"channels": 16, "token_size": 16, "depth": 1}

# The L2O rows (bench l2o, and digits' L2O-Entropy rows): which regularizer each learned row uses.
LEARNED = {"l2o": None, "l2o-hessian": "hessian", "l2o-entropy": "entropy"}
TARGETS = ("optimizee", "meta", "both")
# Default regularizer settings (digits linear head, mean cross entropy, d = 325), picked
# from a small sweep (one meta-training seed each, 400 meta-updates): optimizee-level
# Hessian weights 0.01 / 0.05 and local entropy (gamma, T) = (1, 1e-3) / (10, 0.05) all
# lowered the final weights' Hessian trace; none raised held-out accuracy (docs/benchmarks.md).
HESSIAN = {"optimizee": "hessian:weight=0.01,probes=1", "meta": "hessian:weight=0.01,probes=1"}
ENTROPY = {"optimizee": "entropy:weight=1,gamma=1,temperature=0.001,steps=10,lr=0.05,every=2",
           "meta": "entropy:weight=1,gamma=100,temperature=1e-5,steps=3,lr=0.001"}


def regularizers_for(method: str, target: str, hessian: str | None = None,
                     entropy: str | None = None) -> tuple[str | None, str | None]:
    """(optimizee regularizer, meta regularizer) specs of a learned row.

    ``hessian`` / ``entropy``: extra settings ``"KEY=VALUE,..."`` applied over the
    defaults (:data:`HESSIAN`, :data:`ENTROPY`) at every active target.
    """

    if target not in TARGETS:
        raise LohpError(f"unknown regularizer target {target!r}; choose one of {', '.join(TARGETS)}")
    kind = LEARNED[method]
    if kind is None:
        return None, None
    defaults, extra = (HESSIAN, hessian) if kind == "hessian" else (ENTROPY, entropy)
    specs = {}
    for where in ("optimizee", "meta"):
        spec = defaults[where] + (f",{extra}" if extra else "")
        make_regularizer(spec)  # validate names and settings now
        specs[where] = spec
    return (specs["optimizee"] if target in ("optimizee", "both") else None,
            specs["meta"] if target in ("meta", "both") else None)
