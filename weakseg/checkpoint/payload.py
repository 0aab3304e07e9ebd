"""What a checkpoint holds: the format tag, the entries every reader needs, random states.

A checkpoint is ``torch.save`` of a plain dict of tensors and primitives (see :mod:`weakseg.checkpoint`
for the entries), built by :func:`make_payload`. Random states are stored as primitives and tensors
only, so that ``torch.load(weights_only=True)`` accepts them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from weakseg.components import DataSummary

FORMAT = "weakseg-checkpoint/1"

#: Entries without which a checkpoint cannot rebuild its model, with the type each must have.
REQUIRED = {"recipe": str, "data_summary": Mapping, "state_dict": Mapping, "step": int}


def missing_entries(raw: Mapping[str, Any]) -> list[str]:
    """The required entries ``raw`` lacks or holds with the wrong type (empty when complete)."""
    problems = []
    for key, kind in REQUIRED.items():
        if key not in raw:
            problems.append(f"no {key!r}")
        elif not isinstance(raw[key], kind) or (kind is int and isinstance(raw[key], bool)):
            problems.append(f"{key!r} is {type(raw[key]).__name__}, not {kind.__name__}")
    summary = raw.get("data_summary")
    if isinstance(summary, Mapping) and "in_channels" not in summary:
        problems.append("no 'data_summary.in_channels'")
    return problems


def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) generator states."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states written by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def summary_to_dict(summary: DataSummary) -> dict[str, Any]:
    """The DataSummary fields as primitives (what a checkpoint stores)."""
    return {
        "in_channels": int(summary.in_channels),
        "n_groups": int(summary.n_groups),
        "group_names": list(summary.group_names),
        "has_masks": bool(summary.has_masks),
    }


def summary_from_dict(data: Mapping[str, Any]) -> DataSummary:
    """Inverse of :func:`summary_to_dict` (older checkpoints may lack the group fields)."""
    return DataSummary(
        in_channels=int(data["in_channels"]),
        n_groups=int(data.get("n_groups", 1)),
        group_names=tuple(data.get("group_names", ("all",))),
        has_masks=bool(data.get("has_masks", False)),
    )


def make_payload(
    *,
    recipe_yaml: str,
    data_summary: DataSummary,
    state_dict: Mapping[str, Any],
    step: int,
    phase: str = "main",
    optimizer: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
    rng: list[dict[str, Any]] | None = None,
    data: Mapping[str, Any] | None = None,
    tracking: Mapping[str, Any] | None = None,
    input_scale: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring); ``None`` entries are left out."""
    from weakseg import __version__

    payload: dict[str, Any] = {
        "format": FORMAT,
        "weakseg": __version__,
        "recipe": recipe_yaml,
        "data_summary": summary_to_dict(data_summary),
        "state_dict": dict(state_dict),
        "step": int(step),
        "phase": phase,
    }
    for key, value in (
        ("optimizer", optimizer),
        ("scheduler", scheduler),
        ("rng", rng),
        ("data", data),
        ("tracking", tracking),
        ("input_scale", input_scale),
    ):
        if value is not None:
            payload[key] = value
    return payload
