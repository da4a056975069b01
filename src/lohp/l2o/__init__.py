"""Learned optimizers: a coordinate-wise LSTM (L2O-DM) with flatness regularizers (L2O-Entropy).

- :mod:`lohp.l2o.lstm`: the optimizer (``init``/``step`` face of ``lohp.optim.Optimizer``),
  safetensors + JSON persistence;
- :mod:`lohp.l2o.regularizers`: Hessian-trace and local-entropy regularizers, on the
  optimizee's loss during the unroll and/or on the meta-objective;
- :mod:`lohp.l2o.meta`: meta-training by truncated BPTT on source tasks, meta-testing on
  held-out tasks and longer horizons.
"""

from lohp.l2o.lstm import CoordinateLSTM, L2OConfig, LearnedOptimizer, preprocess
from lohp.l2o.meta import MetaConfig, MetaResult, MetaTrainer, check_unroll, meta_test, meta_train, run_optimizee
from lohp.l2o.regularizers import REGULARIZERS, Regularizer, make_regularizer

__all__ = ["REGULARIZERS", "CoordinateLSTM", "L2OConfig", "LearnedOptimizer", "MetaConfig", "MetaResult",
           "MetaTrainer", "Regularizer", "check_unroll", "make_regularizer", "meta_test", "meta_train",
           "preprocess", "run_optimizee"]
