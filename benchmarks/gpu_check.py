"""One short check of weakseg on a GPU: training speed, batched inference speed and a DDP run, one table.

Cases, each in its own process (``--case``) so that one failure does not hide the others:

- ``train``: bf16 CKS training steps (principal + collaborator, all losses, backward, fused AdamW) on a
  544 x 544 crop with 200 points; steps/s after two warm-up steps.
- ``infer``: the principal model on 520 x 704 images in batches of 8, 16 and 32 (300 crops each, bf16,
  through :class:`weakseg.inference.predictor.Predictor`); images/s end to end and for the model alone.
- ``ddp``: ``torchrun --standalone --nproc_per_node=1`` of three training steps of the strategy in
  DistributedDataParallel (NCCL on a GPU, gloo on a CPU) and a gradient all-reduce; checks that the
  process group came up on the expected backend and that the loss stayed finite.

On a GPU the model is the paper's (ConvNeXt-S + FPN 384, LACSS head with its reference defaults); without
one (``--tiny``, the default on a CPU) everything shrinks (ConvNeXt-atto + FPN 32, 128 px crops, batches of
2) so that the script runs in about a minute and stays tested. Weights are random: speed does not depend
on them once the number of crops is fixed.

Usage (from the repository root; ``benchmarks/gpu_check.sh`` installs weakseg first)::

    python benchmarks/gpu_check.py            # every case, the paper size on a GPU
    python benchmarks/gpu_check.py --tiny     # tiny sizes (CPU)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = ("train", "infer", "ddp")


def sizes(tiny: bool) -> dict[str, Any]:
    """The configuration of each case at paper size or tiny."""
    if tiny:
        return {
            "backbone": "convnext_atto",
            "fpn": 32,
            "crop": 128,
            "points": 20,
            "steps": 3,
            "image": (128, 176),
            "batches": (2,),
            "detections": 20,
        }
    return {
        "backbone": "convnext_small",
        "fpn": 384,
        "crop": 544,
        "points": 200,
        "steps": 10,
        "image": (520, 704),
        "batches": (8, 16, 32),
        "detections": 300,
    }


def device_name(torch: Any) -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def build_strategy(cfg: dict[str, Any], steps: int = 90_000) -> Any:
    """The CKS strategy (principal + collaborator) of the case's size, past its warm-up."""
    from weakseg.build import build_strategy as build
    from weakseg.components import DataSummary
    from weakseg.recipe import Recipe, structure

    recipe = structure(
        {
            "name": "gpu-check",
            "data": {"store": "unused.zarr"},
            "model": {"backbone": {"type": cfg["backbone"], "fpn_channels": cfg["fpn"]}, "head": {"type": "lacss"}},
            "collaborator": {"type": "cks"},
            "strategy": {"type": "cks", "warmup_steps": 0},
            "train": {"steps": steps},
        },
        Recipe,
    )
    return build(recipe, DataSummary(in_channels=1, n_groups=1, group_names=("g0",)))


def one_step(strategy: Any, optimizer: Any, batch: Any, step: int, device: Any) -> float:
    import torch

    with torch.autocast(device.type, dtype=torch.bfloat16):
        losses = strategy(batch, step)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return float(total.detach())


def synchronize(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def case_train(cfg: dict[str, Any]) -> dict[str, Any]:
    """bf16 CKS training steps per second."""
    import torch
    from train_step import make_batch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    strategy = build_strategy(cfg).to(device).train()
    optimizer = torch.optim.AdamW(strategy.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
    batch = make_batch(cfg["crop"], cfg["points"], 1, seed=0).to(device)
    losses = [one_step(strategy, optimizer, batch, 10_000 + k, device) for k in range(2)]
    synchronize(torch, device)
    t0 = time.perf_counter()
    for k in range(cfg["steps"]):
        losses.append(one_step(strategy, optimizer, batch, 10_002 + k, device))
    synchronize(torch, device)
    seconds = time.perf_counter() - t0
    out = {"steps_per_s": cfg["steps"] / seconds, "final_loss": losses[-1], "finite": all(map(math.isfinite, losses))}
    if device.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def case_infer(cfg: dict[str, Any]) -> dict[str, Any]:
    """Images/s of batched bf16 inference at the case's image size."""
    import torch
    from inference import build_principal, test_image

    from weakseg.data.normalize import standardize
    from weakseg.inference.predictor import Predictor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    head = {"max_detections": cfg["detections"], "min_score": 0.0}
    model = build_principal(cfg["backbone"], head).to(device)
    images = [test_image(cfg["image"], seed=k) for k in range(max(cfg["batches"]))]
    out: dict[str, Any] = {}
    repeats = 5 if device.type == "cuda" else 1
    for bs in cfg["batches"]:
        predictor = Predictor(model, precision="bf16", device=device, batch_size=bs)
        x = torch.stack([torch.from_numpy(standardize(im)) for im in images[:bs]]).to(device)

        def model_only(x: Any = x) -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                model.predict(x)

        def end_to_end(predictor: Any = predictor, batch: list[Any] = images[:bs]) -> None:
            predictor.predict_batch(batch)

        for fn, name in ((model_only, "model"), (end_to_end, "end_to_end")):
            fn()
            synchronize(torch, device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            synchronize(torch, device)
            out[f"images_per_s_{name}_batch{bs}"] = repeats * bs / (time.perf_counter() - t0)
    return out


def case_ddp(cfg: dict[str, Any], tiny: bool) -> dict[str, Any]:
    """Launch the DDP worker under torchrun (one process) and read its JSON line."""
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc_per_node=1", str(Path(__file__)), "--ddp-worker"]
    if tiny:
        cmd.append("--tiny")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"torchrun exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def ddp_worker(cfg: dict[str, Any]) -> None:
    """Three training steps of the strategy in DistributedDataParallel in this torchrun process.

    weakseg itself runs a single process without a process group, so the worker starts one (NCCL on
    CUDA, gloo on a CPU) to exercise the backend, the DDP wrapper and a gradient all-reduce. Prints one
    JSON line.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from train_step import make_batch

    from weakseg.engine.distributed import env_world, resolve_device

    rank, world_size, local_rank = env_world()
    device = resolve_device("auto", local_rank, what="device")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    torch.manual_seed(0)
    strategy = build_strategy(cfg).to(device).train()
    ids = [device.index] if device.type == "cuda" else None
    model = DistributedDataParallel(strategy, device_ids=ids, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = make_batch(cfg["crop"], cfg["points"], 1, seed=0).to(device)
    losses = [one_step(model, optimizer, batch, 10_000 + k, device) for k in range(3)]
    check = torch.ones(1, device=device)
    dist.all_reduce(check)
    result = {
        "backend": dist.get_backend(),
        "world_size": world_size,
        "all_reduce": float(check.item()),
        "finite": all(map(math.isfinite, losses)),
        "final_loss": losses[-1],
        "ok": dist.get_backend() == backend and float(check.item()) == world_size,
    }
    dist.destroy_process_group()
    print(json.dumps(result), flush=True)


def run_case(case: str, tiny: bool) -> dict[str, Any]:
    """One case in a fresh process: its JSON result, or the error it ended with."""
    cmd = [sys.executable, str(Path(__file__)), "--case", case] + (["--tiny"] if tiny else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"case": case, "ok": False, "error": (proc.stderr or proc.stdout)[-1500:]}
    result = json.loads(lines[-1])
    result.setdefault("ok", bool(result.get("finite", True)))
    return {"case": case, "seconds": time.perf_counter() - t0, **result}


def table(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    rows = [
        f"device: {header['device']}; torch {header['torch']}; sizes: {header['size']}",
        "",
        "| case | figure | value |",
        "|---|---|---|",
    ]
    for r in results:
        figures = {k: v for k, v in r.items() if k not in ("case", "ok", "error")}
        if not r["ok"]:
            last = (r.get("error") or "?").strip().splitlines() or ["?"]
            rows.append(f"| {r['case']} | FAILED | {last[-1]} |")
            continue
        for k, v in figures.items():
            rows.append(f"| {r['case']} | {k} | {v:.3g} |" if isinstance(v, float) else f"| {r['case']} | {k} | {v} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the default without CUDA)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import torch

    tiny = args.tiny or not torch.cuda.is_available()
    cfg = sizes(tiny)
    if args.ddp_worker:
        ddp_worker(cfg)
        return
    if args.case:
        if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(min(2, os.cpu_count() or 1))
        fn = {"train": lambda: case_train(cfg), "infer": lambda: case_infer(cfg), "ddp": lambda: case_ddp(cfg, tiny)}
        print(json.dumps(fn[args.case]()), flush=True)
        return
    header = {"device": device_name(torch), "torch": torch.__version__, "size": "tiny" if tiny else "paper"}
    results = []
    for case in args.cases.split(","):
        results.append(run_case(case.strip(), tiny))
        print(f"{case}: {'ok' if results[-1]['ok'] else 'FAILED'}", file=sys.stderr, flush=True)
    print(table(results, header))
    if args.out:
        Path(args.out).write_text(json.dumps({**header, "results": results}, indent=2) + "\n")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
