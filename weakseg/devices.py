"""Where a model runs: one device resolver and one DDP unwrap for training, evaluation and prediction.

Kept apart from :mod:`weakseg.engine` so that a predictor-only user (``weakseg.load``, ``weakseg
predict``) needs nothing of the training machinery.
"""

from __future__ import annotations

from typing import Any

import torch

from weakseg.errors import WeaksegError


def resolve_device(
    device: str | torch.device = "auto", local_rank: int | None = None, *, what: str = "device"
) -> torch.device:
    """``auto`` = a CUDA device when torch sees one, else the CPU; ``cpu``, ``cuda``, ``cuda:1`` as given.

    ``local_rank`` (a torchrun process's GPU) is the index given to ``auto`` and a bare ``cuda``;
    without it those mean torch's current CUDA device. ``what`` names the setting in error messages
    (``recipe.train.device``, ``--device``), so a user knows what to change.
    """
    text = str(device)
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise WeaksegError(f"{what}: {text!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise WeaksegError(f"{what}: {text!r} asked for, but torch sees no CUDA device; use auto or cpu")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
    return dev


def unwrap(module: Any) -> Any:
    """The model inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper, or ``module`` itself."""
    from torch import nn

    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return module.module
    return module


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds ``device`` up: CUDA, or a CPU with AVX512-BF16 or AMX.

    On other CPUs torch emulates bfloat16 and autocast is slower than float32.
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(
        getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )
