"""tests/nn: tiny tensors run faster on one thread, and far faster when other jobs share the cores."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    yield
