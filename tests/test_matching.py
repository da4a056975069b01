"""Adaptive trajectory matching (lohp.trajectories.matching): a hand-computed toy trajectory,
uniform matching as the special case that reproduces the stride-k pairs, the rounding rule,
bad input, and a policy that records its matching and reloads with it."""

from __future__ import annotations

import json

import pytest
import torch

from lohp.errors import LohpError
from lohp.trajectories.matching import adaptive_indices, loss_progress, path_progress, uniform_indices


def _line_with_one_fast_segment():
    """Records 0..8 on a line: unit steps except 4 -> 5, which moves 8 units (total 15)."""
    pos = [0, 1, 2, 3, 4, 12, 13, 14, 15]
    return torch.tensor(pos, dtype=torch.float64)[:, None] * torch.tensor([[0.6, 0.8]], dtype=torch.float64)


def test_path_progress_is_the_distance_travelled():
    assert path_progress(_line_with_one_fast_segment()).tolist() == pytest.approx([0, 1, 2, 3, 4, 12, 13, 14, 15])


def test_adaptive_matching_on_a_toy_line_spends_a_step_on_the_fast_segment():
    prog = path_progress(_line_with_one_fast_segment())
    # N = 3: targets 5 and 10 -> the first records reaching them are 5 (12 >= 5) and 5 (12 >= 10);
    # the second moves one later to stay strictly increasing: [0, 5, 6, 8]
    assert adaptive_indices(prog, 3) == [0, 5, 6, 8]
    # N = 2: target 7.5 -> record 5
    assert adaptive_indices(prog, 2) == [0, 5, 8]
    # N = 8 (every record): the identity
    assert adaptive_indices(prog, 8) == list(range(9))


def test_uniform_matching_reproduces_the_stride_k_pairs():
    recorded = list(range(0, 33, 2))          # record_every 2, T = 32
    assert uniform_indices(recorded, 32, 4) == list(range(0, 17, 2))
    # adaptive on evenly spaced progress gives the uniform records
    assert adaptive_indices(torch.arange(17, dtype=torch.float64), 4) == [0, 4, 8, 12, 16]


def test_loss_progress_is_monotone_even_when_the_loss_rises():
    prog = loss_progress([2.0, 1.5, 1.7, 1.0, 1.2, 0.5])
    assert prog.tolist() == pytest.approx([0, 0.5, 0.5, 1.0, 1.0, 1.5])
    assert adaptive_indices(prog, 3) == [0, 1, 3, 5]


def test_no_progress_falls_back_to_uniform_and_too_few_records_are_refused():
    assert adaptive_indices(torch.zeros(9, dtype=torch.float64), 4) == [0, 2, 4, 6, 8]
    with pytest.raises(LohpError, match="needs at least 9 recorded checkpoints.*this store records 5") as err:
        adaptive_indices(torch.arange(5, dtype=torch.float64), 8)
    assert "\n" not in str(err.value)


def test_a_policy_trained_with_adaptive_matching_records_it_and_reloads(tmp_path, small_store_path):
    from lohp.generation import Generator
    from lohp.training import OfflineData, train
    from lohp.trajectories import TrajectoryStore

    store = TrajectoryStore.open(small_store_path)           # T = 6, every step recorded
    data = OfflineData(store, 2, matching="adaptive", online_steps=2)
    assert data.n_steps == 2 and data.thetas.shape[1] == 3
    for row, i in zip(data.thetas, range(len(store))):
        prog = path_progress(store.theta(i))
        assert torch.equal(row, store.theta(i)[adaptive_indices(prog, 2)])
    out = tmp_path / "p"
    train(store, out, "lo-hp", k=2, policy_options={"token_size": 8, "channels": 8, "depth": 1},
          train_options={"iterations": 2, "batch_size": 4, "matching": "adaptive", "online_steps": 2})
    meta = json.loads((out / "policy.json").read_text())
    assert meta["matching"]["kind"] == "adaptive" and meta["matching"]["steps"] == 2
    assert all(len(v) == 3 and v[0] == 0 and v[-1] == 6 for v in meta["matching"]["offline_steps"].values())
    gen = Generator.load(out)
    assert gen.n_steps == 2
    task = gen.family().heldout_tasks(1)[0]
    assert torch.isfinite(gen.generate(task).theta).all()
    with pytest.raises(LohpError, match="--online-steps"):
        OfflineData(store, 2, matching="adaptive", online_steps=7)
    with pytest.raises(LohpError, match="needs --matching adaptive"):
        OfflineData(store, 2, online_steps=2)
