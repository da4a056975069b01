"""Stage II: train a policy on a trajectory store with any method's loss.

The trainer (:mod:`.loop`) owns the loop: data comes from :class:`OfflineData`
(:mod:`.data`), the loss from :mod:`lohp.losses`, the network from :mod:`lohp.policy`.
It checkpoints the policy *and* its optimizer state to safetensors every
``checkpoint_every`` iterations (atomically, :mod:`.checkpoints`), so ``kill -9`` loses at
most one interval; re-running the same command resumes. Randomness of iteration i comes
from a generator seeded with (seed, i), so a resumed run draws the same batches as an
uninterrupted one. :mod:`.logs` writes log.csv (diagnostics, held-out accuracy) and the
curves, :mod:`.clock` keeps the training-time clock, :mod:`.distributed` the data-parallel
run under torchrun, :mod:`.config` the settings (:class:`TrainConfig`).
"""

from lohp.training.checkpoints import CHECKPOINT, CHECKPOINT_META
from lohp.training.config import TrainConfig
from lohp.training.data import OfflineData, resolve_condition
from lohp.training.distributed import Distributed
from lohp.training.logs import LOG, diagnostics, heldout_accuracy
from lohp.training.loop import Trainer, train

__all__ = ["CHECKPOINT", "CHECKPOINT_META", "LOG", "Distributed", "OfflineData", "TrainConfig", "Trainer",
           "diagnostics", "heldout_accuracy", "resolve_condition", "train"]
