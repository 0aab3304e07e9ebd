"""Sharded evaluation over 2 real gloo processes equals one process (torchmetrics-style check)."""

from __future__ import annotations

import json
import socket

import pytest

from weakseg.eval.evaluate import evaluate_strategy
from weakseg.recipe import DataConfig

from .test_evaluate import ThresholdStrategy, make_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seen: list[str] = []
        result = evaluate_strategy(
            ThresholdStrategy(), DataConfig(store=store), split="test", distributed=True,
            progress=lambda n, image_id: seen.append(image_id),
        )
        with open(f"{out}.{rank}", "w") as fh:
            json.dump({"result": json.loads(result.to_json()), "seen": seen}, fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    store = tmp_path / "store.zarr"
    make_store(store, n_images=7)
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(2, _free_port(), str(store), out), nprocs=2, join=True)
    single = json.loads(evaluate_strategy(ThresholdStrategy(), DataConfig(store=str(store)), split="test").to_json())
    docs = [json.loads((tmp_path / f"result.{rank}").read_text()) for rank in (0, 1)]
    # Each rank predicted its own shard only, and every rank holds the full, identical result.
    seen = [set(d["seen"]) for d in docs]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == {"img0", "img1", "img2", "img3"}
    for doc in docs:
        assert doc["result"] == single
    assert single["overall"]["n_images"] == 4
