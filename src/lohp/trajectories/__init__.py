"""Stage I: collecting optimizer trajectories and storing them."""

from lohp.trajectories.collect import RunResult, collect, evaluate_checkpoints, recorded_steps, train_runs
from lohp.trajectories.prepare import StageOneConfig, make_config, plan_shards, prepare
from lohp.trajectories.store import TrajectoryStore, summarize

__all__ = ["RunResult", "StageOneConfig", "TrajectoryStore", "collect", "evaluate_checkpoints", "make_config", "plan_shards",
           "prepare", "recorded_steps", "summarize", "train_runs"]
