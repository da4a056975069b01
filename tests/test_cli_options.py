"""Options derived from settings dataclasses (lohp/cli/options.py): a default lives only in
its dataclass, and the command receives exactly what the user gave."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from lohp.bench.evaluate import EvaluateConfig
from lohp.cli import app
from lohp.cli.options import Group, with_options
from lohp.config import Config, setting
from lohp.losses import LossConfig
from lohp.policy import PolicyConfig
from lohp.training import TrainConfig
from lohp.trajectories import StageOneConfig


@dataclass
class Toy(Config):
    what = "toy"
    steps: int = setting(4, "Steps.")
    rate: float = setting(0.5, "Rate.")
    name: str = setting("a", "Name.")
    flag: bool = setting(True, "Flag.")
    widths: list[float] = setting(factory=lambda: [1.0, 2.0], help="Widths.")
    limit: Optional[float] = setting(None, "Limit.")
    counts: tuple[int, ...] = setting((1, 2), "Counts.")
    hidden: int = setting(7, "Not on the command line.", cli=False)
    extra: dict = setting(factory=dict, help="Not an option type.")


def _toy_app(unset):
    seen = {}
    toy_app = typer.Typer()

    @toy_app.command()
    @with_options(Group("toy", Toy, unset=unset))
    def run(out: str = typer.Option("o", help="Own option."), toy: dict = None) -> None:
        seen.update(out=out, toy=toy)

    @toy_app.command()
    def other() -> None:  # (two commands, so typer keeps the command name)
        pass

    return toy_app, seen


def test_defaults_come_from_the_dataclass_and_values_reach_the_command():
    toy_app, seen = _toy_app(False)
    r = CliRunner().invoke(toy_app, ["run"])
    assert r.exit_code == 0, r.output
    assert seen["toy"] == {"steps": 4, "rate": 0.5, "name": "a", "flag": True, "widths": [1.0, 2.0], "limit": None,
                           "counts": (1, 2)}
    r = CliRunner().invoke(toy_app, ["run", "--steps", "9", "--no-flag", "--widths", "3,4.5", "--limit", "2",
                                     "--out", "z", "--counts", "5,6,7"])
    assert r.exit_code == 0, r.output
    assert seen["out"] == "z"
    assert seen["toy"] == {"steps": 9, "rate": 0.5, "name": "a", "flag": False, "widths": [3.0, 4.5], "limit": 2.0,
                           "counts": (5, 6, 7)}
    assert Toy(**seen["toy"]).steps == 9  # the dict builds the config


def test_unset_options_pass_only_what_was_given():
    toy_app, seen = _toy_app(True)
    assert CliRunner().invoke(toy_app, ["run"]).exit_code == 0
    assert seen["toy"] == {}
    assert CliRunner().invoke(toy_app, ["run", "--rate", "0.25", "--flag"]).exit_code == 0
    assert seen["toy"] == {"rate": 0.25, "flag": True}


def test_fields_off_the_command_line_have_no_option():
    toy_app, _ = _toy_app(False)
    names = {p.name for p in get_command(toy_app).commands["run"].params}
    assert {"steps", "rate", "flag", "widths", "limit", "out"} <= names
    assert not {"hidden", "extra"} & names


def test_a_bad_list_is_one_line():
    toy_app, _ = _toy_app(False)
    r = CliRunner().invoke(toy_app, ["run", "--widths", "1,x"])
    assert r.exit_code != 0 and "comma-separated list of float" in str(r.exception)


def test_two_groups_claiming_one_option_is_refused():
    @dataclass
    class Other(Config):
        steps: int = 1

    with pytest.raises(TypeError, match="--steps"):
        with_options(Group("a", Toy), Group("b", Other))(lambda a=None, b=None: None)


@pytest.mark.parametrize("command, classes", [
    ("train", (TrainConfig, PolicyConfig)), ("prepare", (StageOneConfig,)), ("evaluate", (EvaluateConfig,))])
def test_lohp_commands_show_the_dataclass_defaults(command, classes):
    """Every option that names a field shows that field's default: no second copy in the CLI."""
    params = {p.name: p for p in get_command(app).commands[command].params}
    checked = 0
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name not in params or not f.metadata.get("cli", True):
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            shown = params[f.name].default
            if isinstance(default, (list, tuple)):
                default = ",".join(str(x) for x in default)
            assert shown == default, (command, f.name, shown, default)
            checked += 1
    assert checked >= 8


def test_lohp_train_loss_options_wait_for_the_method_preset():
    """Loss options other than --method/--k default to unset, so the method's preset applies."""
    params = {p.name: p for p in get_command(app).commands["train"].params}
    assert params["method"].default == LossConfig().method and params["k"].default == LossConfig().k
    assert params["beta"].default is None and params["rollouts"].default is None


def test_the_documented_defaults_of_lohp_prepare_and_train():
    """Literal values (the README's and the earlier CLI's), not read back from the dataclasses."""
    prepare = {p.name: p.default for p in get_command(app).commands["prepare"].params}
    assert (prepare["tasks"], prepare["steps"], prepare["seeds"], prepare["batch_size"], prepare["family"],
            prepare["optimizers"], prepare["init"]) == (16, 32, 1, 32, "digits", "sgd,adam,sam", "standard")
    train = {p.name: p.default for p in get_command(app).commands["train"].params}
    assert (train["iterations"], train["batch_size"], train["lr"], train["k"], train["method"], train["sigma_f"],
            train["channels"], train["checkpoint_every"]) == (1500, 16, 1e-3, 2, "lo-hp", 0.25, 32, 100)


def test_lohp_train_applies_the_method_preset(cli, small_store_path, tmp_path):
    """An option left unset takes the method's preset (lo-hp: beta 0.8), a given one wins,
    and --set backward reaches the loss (the policy's copy follows it)."""
    import json

    base = ["train", "--store", small_store_path, "--iterations", "1", "--channels", "8", "--depth", "1",
            "--eval-every", "100"]
    code, _, err = cli(*base, "--out", tmp_path / "a")
    assert code == 0, err
    meta = json.loads((tmp_path / "a" / "policy.json").read_text())
    assert meta["loss_config"]["beta"] == 0.8
    code, _, err = cli(*base, "--out", tmp_path / "b", "--beta", "0.3", "--method", "lo-hp-v1",
                       "--set", "backward=bridge")
    assert code == 0, err
    meta = json.loads((tmp_path / "b" / "policy.json").read_text())
    assert meta["loss_config"]["beta"] == 0.3 and meta["loss_config"]["backward"] == "bridge"
    assert meta["policy_config"]["backward"] == "bridge"
