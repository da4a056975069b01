"""A user's own nn.Module and a glob of the parameters to generate: which structure serves
which subset, and the one-line refusal listing the structures when none does."""

import pytest
import torch
from torch import nn

from lohp.errors import LohpError
from lohp.layout import ParamLayout
from lohp.policy import make_structure


class MyNet(nn.Module):
    """A frozen feature extractor, a hidden layer and a head: the user's own module."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv1d(1, 4, 3)
        self.hidden = nn.Linear(24, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = self.features(x[:, None]).flatten(1)
        return self.head(torch.relu(self.hidden(h)))


@pytest.mark.parametrize("patterns, kind", [(("head.*",), "class-rows"), (("hidden.*", "head.*"), "mlp-units")])
def test_a_glob_of_the_users_module_picks_the_structure(patterns, kind):
    layout = ParamLayout.from_module(MyNet(), patterns)
    st = make_structure(layout)
    assert st.kind == kind
    theta = torch.randn(2, layout.size)
    torch.testing.assert_close(st.flat(st.rows(theta)), theta)  # every generated value has its place


def test_a_subset_no_structure_fits_is_refused_listing_them():
    layout = ParamLayout.from_module(MyNet(), ("features.*", "head.*"))
    with pytest.raises(LohpError) as exc:
        make_structure(layout)
    msg = str(exc.value)
    assert "\n" not in msg and "features.weight[4, 1, 3]" in msg
    for kind in ("class-rows", "mlp-units", "lora-dims"):
        assert kind in msg
    with pytest.raises(LohpError, match="no parameter matches the patterns"):
        ParamLayout.from_module(MyNet(), ("decoder.*",))
