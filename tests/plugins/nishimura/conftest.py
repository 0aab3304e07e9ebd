"""One torch thread for these tests: their tensors are small, and on a shared CI box a second
OpenMP thread only adds spin-waiting (measured: 10-30x slower steps under load)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
