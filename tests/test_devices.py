"""The one device resolver and DDP unwrap shared by training, evaluation and prediction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weakseg.devices import resolve_device, unwrap
from weakseg.errors import WeaksegError

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def test_explicit_devices_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("auto", local_rank=0).type == expected


def test_a_misspelled_device_names_the_setting():
    with pytest.raises(WeaksegError, match=r"recipe\.train\.device: 'gpu0' is not a device; use auto, cpu, cuda"):
        resolve_device("gpu0", 0, what="recipe.train.device")


@needs_no_cuda
def test_cuda_without_a_gpu_says_what_to_use():
    with pytest.raises(WeaksegError, match=r"--device: 'cuda:1' asked for, but torch sees no CUDA device; use auto"):
        resolve_device("cuda:1", what="--device")
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_bare_cuda_takes_the_local_rank():
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")


def test_unwrap_returns_the_wrapped_model():
    model = nn.Linear(2, 2)
    assert unwrap(model) is model
    assert unwrap(nn.DataParallel(model)) is model
