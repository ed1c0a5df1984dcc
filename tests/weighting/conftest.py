"""Shared fixtures of the weighting tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matmuls: on a loaded 2-core machine a second thread only adds contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
