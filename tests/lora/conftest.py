"""The LoRA area: MiniLM forward passes run on one thread (they oversubscribe a busy 2-core machine)."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
