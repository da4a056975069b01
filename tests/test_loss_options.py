"""Each loss owns its options: a config class per method, registered with it, checked alone;
``backward`` is the policy's; the flat form of before (callers, the CLI, and the
``loss_config`` of policy folders written before) still works."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from lohp.config import setting
from lohp.errors import LohpError
from lohp.losses import (
    LossConfig,
    LossOptions,
    Method,
    OneStepOptions,
    OnPolicyStates,
    RegressionOptions,
    SubTBOptions,
    get_method,
    loss_config,
    make_loss,
    register_method,
)

TINY_POLICY = {"channels": 8, "token_size": 8, "depth": 1}
TINY_TRAIN = {"batch_size": 2, "log_every": 2, "eval_every": 2, "eval_tasks": 1, "checkpoint_every": 2}

# The loss_config of a policy.json as lohp wrote it before options were per method: every
# option of every formulation, the formulation and the P_B kind (written out, not generated).
OLD_FLAT = {"method": "lo-hp", "k": 2, "formulation": "states", "beta": 0.8, "lam": 0.9, "rollouts": 4,
            "on_policy_tasks": 8, "rollout": "reparam", "log_z": "mean-residual", "off_policy": "ml",
            "normalize": True, "reward_width": None, "input_noise": 0.0, "backward": "fixed",
            "flatness_weight": 0.0, "flatness_probes": 1, "entropy_weight": 0.0, "entropy_gamma": 100.0,
            "entropy_temperature": 0.0001, "entropy_steps": 10, "entropy_lr": 0.001, "start_widths": [1.0],
            "rollout_noise": True}
OLD_LITERAL = {**OLD_FLAT, "method": "lo-hp-literal", "formulation": "subtb", "beta": 0.5, "rollout": "detached",
               "log_z": "learned", "off_policy": "subtb", "normalize": False, "backward": "learned"}


def test_each_method_has_its_options_class_and_preset():
    assert get_method("lo-hp").options is OneStepOptions and loss_config("lo-hp").options == OneStepOptions(beta=0.8)
    assert loss_config("lo-op").beta == 0.0
    assert get_method("lo-hp-v1").options is SubTBOptions and get_method("lo-di").options is RegressionOptions
    lit = loss_config("lo-hp-literal")
    assert (lit.rollout, lit.log_z, lit.off_policy, lit.normalize) == ("detached", "learned", "subtb", False)
    assert get_method("lo-hp-literal").policy_preset == {"backward": "learned"}
    assert loss_config("lo-di-noise").options == RegressionOptions(input_noise=5.0)
    assert loss_config("hypernetwork", k=4).to_dict() == {"method": "hypernetwork", "k": 4, "input_noise": 0.0}


def test_options_check_themselves_without_the_registry():
    with pytest.raises(LohpError, match="beta must lie in"):
        OneStepOptions(beta=2.0)
    with pytest.raises(LohpError, match="rollouts >= 2"):
        SubTBOptions(rollouts=1)
    with pytest.raises(LohpError, match="k must be >= 1"):
        LossConfig("any-name-at-all", 0, OneStepOptions())
    # the structured form needs no registered name; making its loss does
    cfg = LossConfig("not-registered", 2, OneStepOptions(beta=0.3))
    assert cfg.beta == 0.3 and isinstance(OnPolicyStates(cfg.options), OnPolicyStates)
    with pytest.raises(LohpError, match="unknown method 'not-registered'"):
        make_loss(cfg)
    with pytest.raises(LohpError, match="lo-di takes RegressionOptions"):
        make_loss(LossConfig("lo-di", 2, OneStepOptions()))


def test_the_flat_form_translates_in_one_place():
    flat = LossConfig(method="lo-hp-v1", formulation="subtb", k=4, beta=0.3, normalize=False)
    assert flat == LossConfig("lo-hp-v1", 4, SubTBOptions(beta=0.3, normalize=False))
    assert flat.to_dict()["beta"] == 0.3 and LossConfig.from_dict(flat.to_dict()) == flat
    assert flat.replace(k=2).k == 2 and flat.replace(lam=0.5).options.lam == 0.5
    assert flat.replace(method="lo-di").options == RegressionOptions()
    with pytest.raises(LohpError, match="lo-hp has no loss option lam: lo-hp-v1, lo-hp-literal"):
        loss_config("lo-hp", lam=0.5)
    with pytest.raises(LohpError, match="backward is a policy setting"):
        loss_config("lo-hp-v1", backward="learned")
    with pytest.raises(LohpError, match="formulation 'subtb' is not lo-hp's"):
        LossConfig(method="lo-hp", formulation="subtb")
    with pytest.raises(LohpError, match="either as options= or by name"):
        LossConfig("lo-hp", 2, OneStepOptions(), beta=0.5)


def test_a_record_of_before_reads_as_the_same_config():
    assert LossConfig.from_record(OLD_FLAT) == loss_config("lo-hp")
    assert LossConfig.from_record(OLD_LITERAL) == loss_config("lo-hp-literal")
    # an option the method never read (accepted before, e.g. --set lam=0.7 with lo-hp) is dropped
    assert LossConfig.from_record({**OLD_FLAT, "lam": 0.7}) == loss_config("lo-hp")
    assert LossConfig.from_record(loss_config("lo-hp-v1", beta=0.2).record("bridge")) == loss_config("lo-hp-v1",
                                                                                                     beta=0.2)
    with pytest.raises(LohpError, match="formulation"):
        LossConfig.from_record({**OLD_FLAT, "formulation": "subtb"})


@dataclass
class ScaledOptions(LossOptions):
    scale: float = setting(1.0, "Multiplies the step error.")

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise LohpError(f"scale must be > 0 (got {self.scale})")


class ScaledStep:
    diagnostics = ("scaled",)

    def __init__(self, config):
        self.options = config.options

    def __call__(self, policy, batch):
        loss, _ = make_loss(loss_config("lo-di"))(policy, batch)
        loss = loss * self.options.scale
        return loss, {"scaled": loss.item()}


def test_a_registered_method_brings_its_own_options(small_store_path, tmp_path, cli):
    from lohp import api

    register_method(Method("test-scaled", ScaledStep, {"scale": 2.0}, regression=True, options=ScaledOptions),
                    overwrite=True)
    assert loss_config("test-scaled").scale == 2.0 and loss_config("test-scaled", scale=3.0).scale == 3.0
    with pytest.raises(LohpError, match="test-scaled has no loss option beta: lo-hp, lo-op, lo-hp-v1, lo-hp-literal"):
        loss_config("test-scaled", beta=0.5)
    with pytest.raises(LohpError, match="unknown loss setting\\(s\\) colour; known: k, method, scale"):
        loss_config("test-scaled", colour="red")
    with pytest.raises(LohpError, match="scale must be > 0"):
        loss_config("test-scaled", scale=0.0)
    with pytest.raises(LohpError, match="unknown loss setting\\(s\\) scal"):  # a preset typo: at registration
        register_method(Method("test-typo", ScaledStep, {"scal": 2.0}, options=ScaledOptions))
    api.train(small_store_path, tmp_path / "p", "test-scaled", loss_options={"scale": 0.5},
              policy_options=TINY_POLICY, train_options={**TINY_TRAIN, "iterations": 2})
    meta = json.loads((tmp_path / "p" / "policy.json").read_text())
    assert meta["loss_config"] == {"method": "test-scaled", "k": 2, "scale": 0.5, "backward": "fixed"}
    code, _, err = cli("train", "--store", small_store_path, "--out", tmp_path / "q", "--method", "test-scaled",
                       "--set", "scale=0.25", "--iterations", "1", "--channels", "8", "--token-size", "8",
                       "--depth", "1", "--batch-size", "2", "--eval-tasks", "1")
    assert code == 0, err  # --set reaches a registered method's own option
    assert json.loads((tmp_path / "q" / "policy.json").read_text())["loss_config"]["scale"] == 0.25


def test_backward_is_the_policys_and_the_method_presets_it(small_store_path, tmp_path, cli):
    from lohp.training import Trainer

    base = ["train", "--store", small_store_path, "--iterations", "1", "--channels", "8", "--depth", "1",
            "--token-size", "8", "--batch-size", "2", "--eval-tasks", "1"]
    for name, extra, kind in (("a", ["--method", "lo-hp-literal"], "learned"),
                              ("b", ["--method", "lo-hp-literal", "--backward", "bridge"], "bridge"),
                              ("c", ["--backward", "bridge"], "bridge"), ("d", [], "fixed")):
        code, _, err = cli(*base, "--out", tmp_path / name, *extra)
        assert code == 0, err
        meta = json.loads((tmp_path / name / "policy.json").read_text())
        assert meta["policy_config"]["backward"] == kind and meta["loss_config"]["backward"] == kind
    # a caller's loss_options={"backward": ...} of before reaches the policy
    from lohp.training import train

    train(small_store_path, tmp_path / "e", "lo-hp-v1", loss_options={"backward": "bridge", "rollouts": 2},
          policy_options=TINY_POLICY, train_options={**TINY_TRAIN, "iterations": 1})
    assert json.loads((tmp_path / "e" / "policy.json").read_text())["policy_config"]["backward"] == "bridge"
    trainer = Trainer(small_store_path, tmp_path / "f", loss_config("lo-hp-literal"))
    assert trainer.policy.learned_backward  # no policy config given: the method's policy preset


def _old_folder(store: Path, out: Path, old_loss: dict, iterations: int = 2) -> dict:
    """A policy folder with its checkpoint whose policy.json holds ``old_loss``, the flat
    loss_config of before, sealed as lohp seals it."""
    from lohp.io import atomic_write_json
    from lohp.training import train

    train(store, out, old_loss["method"], policy_options={**TINY_POLICY, "backward": old_loss["backward"]},
          train_options={**TINY_TRAIN, "iterations": iterations})
    meta = json.loads((out / "policy.json").read_text())
    meta["loss_config"] = dict(old_loss)
    atomic_write_json(out / "policy.json", meta, sealed=True)
    return meta


@pytest.mark.parametrize("old", [OLD_FLAT, OLD_LITERAL], ids=["lo-hp", "lo-hp-literal"])
def test_a_policy_folder_of_before_loads_generates_and_resumes(small_store_path, tmp_path, old):
    from lohp import api
    from lohp.policy_folder import load_policy
    from lohp.training import train

    out = tmp_path / "p"
    _old_folder(small_store_path, out, old)
    policy, meta = load_policy(out)
    assert meta["loss_config"] == old and policy.learned_backward == (old["backward"] == "learned")
    gen = api.load_policy(out)
    task = gen.family().heldout_tasks(1)[0]
    assert gen.generate(task).theta.isfinite().all()
    res = train(small_store_path, out, old["method"], train_options={**TINY_TRAIN, "iterations": 4},
                policy_options=TINY_POLICY)  # the same command, more iterations: resumes at 2
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert res["iteration"] == 4 and len(rows) == 2  # iterations 2 (before) and 4 (resumed), not restarted
    with pytest.raises(LohpError, match="loss_config differ"):
        train(small_store_path, out, old["method"], loss_options={"beta": 0.3}, policy_options=TINY_POLICY,
              train_options={**TINY_TRAIN, "iterations": 6})


def test_the_policy_package_does_not_import_the_losses():
    import lohp.policy

    root = Path(lohp.policy.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("lohp.losses"), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("lohp.losses") for a in node.names), path.name
