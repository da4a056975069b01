"""One strict config base: unknown keys refused in one line, round trip, validated replace."""

import pytest

from lohp.errors import LohpError


@pytest.mark.parametrize("cls_path", ["lohp.policy.PolicyConfig", "lohp.training.TrainConfig",
                                      "lohp.losses.LossConfig"])
def test_every_config_is_strict_and_round_trips(cls_path):
    import importlib

    mod, name = cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(mod), name)
    default = cls()
    assert cls.from_dict(default.to_dict()) == default
    with pytest.raises(LohpError, match="unknown .* setting\\(s\\) no_such_key; known: "):
        cls.from_dict({**default.to_dict(), "no_such_key": 1})
    with pytest.raises(LohpError, match="unknown"):
        default.replace(no_such_key=1)


def test_replace_validates_again():
    from lohp.policy import PolicyConfig
    from lohp.training import TrainConfig

    assert PolicyConfig().replace(channels=8).channels == 8
    with pytest.raises(LohpError, match="channels must be > 0"):
        PolicyConfig().replace(channels=0)
    with pytest.raises(LohpError, match="batch_size must be > 0"):
        TrainConfig().replace(batch_size=0)


def test_the_api_refuses_a_misspelt_option_in_one_line(small_store_path, tmp_path):
    from lohp import api

    with pytest.raises(LohpError, match="unknown policy setting\\(s\\) chanels"):
        api.train(small_store_path, tmp_path / "p", "lo-hp", policy_options={"chanels": 8})


def test_train_set_reaches_any_setting_and_refuses_unknown_ones(small_store_path, tmp_path, cli):
    import json

    code, out, err = cli("train", "--store", small_store_path, "--out", tmp_path / "p", "--iterations", "2",
                         "--batch-size", "2", "--channels", "8", "--token-size", "8", "--depth", "1",
                         # lam is an option of the SubTB methods (lo-hp refuses it: it never read it)
                         "--method", "lo-hp-v1",
                         "--set", "emb_dim=16", "--set", "clip=0.5", "--set", "lam=0.7")
    assert code == 0, err
    meta = json.loads((tmp_path / "p" / "policy.json").read_text())
    assert meta["policy_config"]["emb_dim"] == 16 and meta["train_config"]["clip"] == 0.5
    assert meta["loss_config"]["lam"] == 0.7
    code, out, err = cli("train", "--store", small_store_path, "--out", tmp_path / "q", "--set", "embdim=16")
    assert code == 2 and "--set embdim: no such setting; settings: " in err and "emb_dim" in err
    code, out, err = cli("train", "--store", small_store_path, "--out", tmp_path / "q", "--set", "emb_dim")
    assert code == 2 and "--set takes KEY=VALUE" in err


def test_replace_works_with_a_required_field_and_revalidates():
    """replace() on a config with a required field (no default) keeps it and re-runs
    __post_init__; an unknown key is one LohpError line."""
    from dataclasses import dataclass

    import pytest

    from lohp.config import Config, setting
    from lohp.errors import LohpError

    @dataclass
    class Needs(Config):
        what = "needs"
        path: str = setting(help="Required.")
        n: int = setting(2, "Positive.")

        def __post_init__(self):
            if self.n <= 0:
                raise LohpError("n must be > 0")

    c = Needs(path="x").replace(n=5)
    assert (c.path, c.n) == ("x", 5)
    with pytest.raises(LohpError, match="n must be > 0"):
        c.replace(n=0)
    with pytest.raises(LohpError, match="unknown needs setting"):
        c.replace(m=1)
