"""The fast generation paths (TorchScript trace, torch.compile/inductor) against plain eager."""

import pytest
import torch

from lohp.errors import LohpError
from lohp.generation import Generator
from lohp.policy import LohpPolicy, PolicyConfig, make_structure
from lohp.tasks import make_family


def _generator_pair(task, backend: str, n_steps: int = 2):
    torch.manual_seed(0)
    policy = LohpPolicy(make_structure(task.layout), n_steps, PolicyConfig(channels=8, token_size=4, depth=1),
                        step_scale=torch.full((n_steps,), 0.05), theta_scale=0.1, cond_scale=0.3)
    with torch.no_grad():  # non-trivial heads (they start at zero)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    meta = {"layout": task.layout.to_dict()}
    return Generator(policy, meta, backend=backend), Generator(policy, meta, backend="eager")


def assert_backend_agrees(task, backend: str, capfd) -> None:
    fast, plain = _generator_pair(task, backend)
    s0 = 0.1 * torch.randn(1, task.layout.size, generator=torch.Generator().manual_seed(1))
    a = fast.generate_batch([task], s0=s0)
    b = plain.generate_batch([task], s0=s0)
    assert list(fast._traced.values())[0] is not None, "the fast path fell back to eager"
    assert "not usable" not in capfd.readouterr().err
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(a, s0)  # the policy moved the weights


@pytest.mark.parametrize("backend", ["trace", "inductor"])
@pytest.mark.parametrize("head", ["linear", "mlp"])  # class-rows and mlp-units structures
def test_fast_generation_agrees_with_eager(backend, head, capfd):
    task = make_family("digits", n_way=3, head=head, hidden=4).sample(0, "heldout")
    assert_backend_agrees(task, backend, capfd)


def test_a_failing_compile_falls_back_to_eager_with_one_line(monkeypatch, capfd):
    task = make_family("digits", n_way=3).sample(0, "heldout")
    fast, plain = _generator_pair(task, "inductor")

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line of a long trace")

    monkeypatch.setattr(torch, "compile", broken)
    s0 = 0.1 * torch.randn(1, task.layout.size)
    torch.testing.assert_close(fast.generate_batch([task], s0=s0), plain.generate_batch([task], s0=s0))
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["lohp: the inductor generation path is not usable here (no C++ compiler found); "
                   "generating with plain PyTorch"]


def test_an_unknown_backend_is_refused():
    task = make_family("digits", n_way=3).sample(0)
    with pytest.raises(LohpError, match="unknown generation backend 'jax'"):
        _generator_pair(task, "jax")


def test_more_compiled_policies_than_dynamos_default_limit_in_one_process(capfd):
    # the same loop code compiled for 9 policies: dynamo's default limit of 8 graphs per code
    # object would refuse the ninth
    task = make_family("digits", n_way=3).sample(0, "heldout")
    s0 = 0.1 * torch.randn(1, task.layout.size)
    for i in range(9):
        fast, plain = _generator_pair(task, "inductor", n_steps=1)
        with torch.no_grad():
            fast.policy.skip_gain.add_(0.01 * i)
        torch.testing.assert_close(fast.generate_batch([task], s0=s0), plain.generate_batch([task], s0=s0),
                                   rtol=1e-4, atol=1e-5)
        assert list(fast._traced.values())[0] is not None
    assert "not usable" not in capfd.readouterr().err
