"""Policy and training presets the benchmarks share (one place, so a scenario and the
studies that reuse it, ``refine`` and ``cross``, never import one another)."""

from __future__ import annotations

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
