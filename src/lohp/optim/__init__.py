"""Functional, batched optimizers: SGD, Adam/AdamW and SAM over either."""

from lohp.optim.optimizer import (
    DEFAULTS,
    OPTIMIZERS,
    LossAndGrad,
    NamedOptimizer,
    Optimizer,
    make_optimizer,
    optimizer_names,
    register_optimizer,
    sam_gradient,
)
from lohp.optim.transforms import GradientTransformation, adam, chain, clip_by_global_norm, per_run, sgd

__all__ = ["DEFAULTS", "OPTIMIZERS", "GradientTransformation", "LossAndGrad", "NamedOptimizer", "Optimizer", "adam",
           "chain", "clip_by_global_norm", "make_optimizer", "optimizer_names", "per_run", "register_optimizer",
           "sam_gradient", "sgd"]
