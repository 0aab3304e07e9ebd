"""What the training engine adds to a step: bare torch loop vs ``Trainer.fit`` vs ``Trainer`` + MLflow.

The same small strategy, the same pre-made batches (no data loading) and the same optimizer run
three ways; the difference in milliseconds per step is the engine's own cost (loss bookkeeping,
non-finite checks, gradient norm, schedule, progress, phase lookup) and, with ``--mlflow``,
SQLite metric logging every ``log_every`` steps. Example::

    python benchmarks/engine_overhead.py --steps 300 --size 64 --width 16 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import attrs
import torch

from weakseg.hookspecs import hookimpl


@attrs.frozen(kw_only=True)
class BenchStrategyConfig:
    """A 3-layer CNN regressing a foreground map (engine overhead benchmark)."""

    width: int = 16

    def build(self, recipe, data):
        from torch import nn

        from weakseg.strategy import StrategyModule

        width = self.width

        class Bench(StrategyModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Sequential(
                    nn.Conv2d(data.in_channels, width, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(width, width, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(width, 1, 3, padding=1),
                )

            def forward(self, batch, step):
                out = self.net(batch.image)
                return {"mse": ((out - batch.image[:, :1]) ** 2).mean(), "l1": 1e-3 * out.abs().mean()}

        return Bench()


class BenchPlugin:
    @hookimpl
    def weakseg_register_strategies(self, registry):
        registry.add("engine_bench", BenchStrategyConfig)


def make_batches(n: int, batch_size: int, size: int):
    from weakseg.components import Batch

    g = torch.Generator().manual_seed(0)
    return [
        Batch(
            image=torch.randn(batch_size, 1, size, size, generator=g),
            points=[torch.zeros(0, 2)] * batch_size,
            masks=[None] * batch_size,
            group=torch.zeros(batch_size, dtype=torch.long),
            image_ids=[str(i)] * batch_size,
        )
        for i in range(n)
    ]


def recipe_for(args, out: Path):
    from weakseg.recipe import Recipe, structure

    return structure(
        {
            "name": "engine_bench",
            "data": {"store": str(out / "unused.zarr"), "num_workers": 0},
            "strategy": {"type": "engine_bench", "width": args.width},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch_size,
                "precision": args.precision,
                "device": "cpu",
                "log_every": args.log_every,
                "eval_every": 0,
                "checkpoint_every": 0,
                "grad_clip": 1.0,
            },
        },
        Recipe,
    )


def bare_loop(strategy, batches, args) -> None:
    opt = torch.optim.AdamW(strategy.parameters(), lr=1e-3)
    amp = args.precision == "bf16"
    for step, batch in enumerate(batches):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            losses = strategy(batch, step)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from weakseg import plugins
    from weakseg.build import build_strategy
    from weakseg.checkpoint import seed_everything
    from weakseg.components import DataSummary
    from weakseg.engine.tracking import MlflowTracker
    from weakseg.engine.trainer import Trainer

    plugins.register_plugin(BenchPlugin())
    summary = DataSummary(in_channels=1)
    batches = make_batches(args.steps, args.batch_size, args.size)

    def stream(start: int):
        return iter(batches[start:])

    names = ("bare torch loop", "Trainer.fit", "Trainer.fit + MLflow")
    wall: dict[str, float] = dict.fromkeys(names, float("inf"))
    cpu: dict[str, float] = dict.fromkeys(names, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        recipe = recipe_for(args, out)
        for _ in range(args.repeats):  # interleaved, best of N: the machine may be shared
            for name in names:
                seed_everything(0)
                strategy = build_strategy(recipe, summary)
                tracker = MlflowTracker.open(recipe, out) if "MLflow" in name else None
                t0, c0 = time.perf_counter(), time.process_time()
                if name == "bare torch loop":
                    bare_loop(strategy, batches, args)
                else:
                    Trainer(strategy, recipe, summary, batches=stream, tracker=tracker, progress=False).fit()
                    if tracker is not None:
                        tracker.finish()
                wall[name] = min(wall[name], (time.perf_counter() - t0) / args.steps * 1e3)
                cpu[name] = min(cpu[name], (time.process_time() - c0) / args.steps * 1e3)
    print(
        f"{args.steps} steps, batch {args.batch_size}x1x{args.size}x{args.size}, width {args.width}, "
        f"{args.precision}, {args.threads} thread(s), log_every {args.log_every}; best of {args.repeats}"
    )
    for name in names:
        print(
            f"  {name:<22} wall {wall[name]:8.3f} ms/step ({wall[name] - wall[names[0]]:+7.3f})   "
            f"cpu {cpu[name]:8.3f} ms/step ({cpu[name] - cpu[names[0]]:+7.3f})"
        )


if __name__ == "__main__":
    main()
