"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch thread (small tensors: a thread pool only adds noise on a shared 2-core machine),
    restoring the caller's setting afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
