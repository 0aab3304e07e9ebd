"""One process or many: torchrun detection, process groups, DDP wrapping, rank-0 duties.

weakseg trains with plain ``torch.distributed`` + :class:`~torch.nn.parallel.DistributedDataParallel`
(no Fabric/accelerate layer between a strategy and torch). :func:`setup` reads the variables that
``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without
them the run is a single process and every collective below is a no-op, so the trainer has one code
path. NCCL is used on CUDA, gloo on CPU.

Only rank 0 logs, writes checkpoints and runs evaluation; the other ranks wait at a barrier.
Per-step losses are averaged over ranks before they are checked and logged, so every rank takes
the same decisions (stop on a NaN, stop on a signal) at the same step and no rank hangs.

Launching
---------
One machine, N GPUs (or N CPU processes on gloo)::

    torchrun --standalone --nproc_per_node=N -m weakseg run recipes/cks_livecell.yaml

Several machines (M nodes with N GPUs each): run the same command on every node, naming one
rendezvous endpoint reachable from all of them (any free port on the first node)::

    torchrun --nnodes=M --nproc_per_node=N --rdzv_backend=c10d \\
        --rdzv_endpoint=node0.example.org:29500 --rdzv_id=cks-livecell-1 \\
        -m weakseg run recipes/cks_livecell.yaml

The output folder (``output.dir``) must be on a file system the rank-0 node can write; the other
nodes never write there. ``train.batch_size`` is per process: the effective batch is
``batch_size * world_size``. Resuming a distributed run (``--resume``) restores each rank's random
state when the world size is unchanged; with another world size the data shards differ, so the
run continues correctly but not bit-identically (a warning says so).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import nn

from weakseg.devices import resolve_device
from weakseg.errors import WeaksegError

#: Collectives wait this long (minutes) for a rank, e.g. while rank 0 evaluates (env WEAKSEG_DIST_TIMEOUT_MIN).
DEFAULT_TIMEOUT_MIN = 120


@attrs.frozen
class DistContext:
    """Where this process sits: rank, world size, its device, and whether a process group is up."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a single process) ------------------------------------------------

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of a float tensor over ranks (a NaN on any rank makes the mean NaN on all ranks)."""
        if not self.distributed:
            return values
        out = values.detach().to(self.device, torch.float32).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def reduce_dict(self, values: Mapping[str, float]) -> dict[str, float]:
        """Average a dict of floats over ranks (same keys on every rank)."""
        if not self.distributed or not values:
            return dict(values)
        keys = sorted(values)
        reduced = self.all_reduce_mean(torch.tensor([float(values[k]) for k in keys], dtype=torch.float32))
        return dict(zip(keys, reduced.cpu().tolist(), strict=True))

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Send a picklable object from ``src`` to every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        if not self.distributed:
            return flag
        return bool(self.all_reduce_mean(torch.tensor([1.0 if flag else 0.0])).item() > 0)


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) without it."""

    def read(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise WeaksegError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None

    return read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0)


def setup(device: str = "auto") -> DistContext:
    """Detect torchrun, pick this rank's device and start the process group (NCCL on CUDA, else gloo).

    Idempotent: when a process group is already up (a test, a notebook) it is reused.
    """
    rank, world_size, local_rank = env_world()
    dev = resolve_device(device, local_rank, what="recipe.train.device")
    if world_size <= 1:
        return DistContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise WeaksegError(
                    f"WORLD_SIZE={world_size} but {name} is not set: launch with "
                    "`torchrun --nproc_per_node=N -m weakseg run RECIPE`"
                )
        minutes = float(os.environ.get("WEAKSEG_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN))
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(minutes=minutes)}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    else:
        backend = dist.get_backend()
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def shutdown(ctx: DistContext) -> None:
    """Tear the process group down (after the last collective)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, ctx: DistContext, *, find_unused_parameters: bool = True) -> nn.Module:
    """Wrap a strategy in DDP when running distributed (gradients are averaged over ranks).

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts equal.
    A module without trainable parameters is returned as is.
    """
    if not ctx.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
