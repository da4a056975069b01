"""Small objects shared by the core-method tests (made here, no downloads)."""

import torch

from lohp.policy import LohpPolicy, PolicyConfig, make_structure
from lohp.tasks import make_family


def tiny_policy(n_steps: int = 4, n_way: int = 3, batch: int = 2, **config):
    """A small policy over a digits head and a fake strided trajectory batch."""
    fam = make_family("digits", n_way=n_way)
    tasks = [fam.sample(i) for i in range(batch)]
    layout = tasks[0].layout
    torch.manual_seed(0)
    policy = LohpPolicy(make_structure(layout), n_steps, PolicyConfig(channels=8, token_size=4, depth=1, **config),
                        step_scale=torch.full((n_steps,), 0.05), theta_scale=0.1, cond_scale=0.3, init_scale=0.07)
    # Make the heads non-trivial (they start at zero).
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(3)
    thetas = torch.cumsum(0.05 * torch.randn(batch, n_steps + 1, layout.size, generator=g), dim=1)
    cond = torch.stack([t.condition() for t in tasks])
    return policy, thetas, cond
