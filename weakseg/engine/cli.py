"""``weakseg run RECIPE [--set KEY=VALUE ...] [--resume | --fresh] [--output DIR]``.

Also under torchrun: ``torchrun --nproc_per_node=N -m weakseg run RECIPE`` (see
:mod:`weakseg.engine.distributed` for multi-node launches). Exit codes: 0 when the run finished,
2 for a user error (bad recipe, missing data, NaN loss, ...), 130 after SIGINT and 143 after
SIGTERM (a checkpoint was written first; ``--resume`` continues). Cheap to import: torch and
MLflow load only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="train, evaluate and track a recipe (also under torchrun)",
        description=(
            "Train the recipe's strategy, evaluate it and log the run to MLflow. Checkpoints go to "
            "<output.dir>/<recipe name>/checkpoints/, the MLflow store to <output.dir>/mlflow.db. "
            "SIGINT/SIGTERM write a checkpoint and exit with 130/143; --resume continues."
        ),
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML file")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key, e.g. train.steps=100"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest snapshot in <run>/checkpoints/ that verifies (same MLflow run); "
        "starts at step 0 when there is none",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over in a run folder that holds an earlier run's checkpoints (they are moved to "
        "checkpoints.old-<time>/, not deleted)",
    )
    p.add_argument("--output", metavar="DIR", help="output folder (overrides recipe output.dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from weakseg.engine.run import run_recipe
    from weakseg.engine.trainer import TrainingInterrupted
    from weakseg.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    try:
        result = run_recipe(
            recipe, resume=args.resume, output=args.output, fresh=args.fresh, progress=not args.no_progress
        )
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    if result.is_main:
        print(f"run {recipe.name!r}: step {result.step} ({result.steps_run} this time, {result.seconds:.1f} s)")
        print(f"  run folder: {result.run_dir}")
        if result.checkpoint is not None:
            print(f"  checkpoint: {result.checkpoint}")
        if result.run_id:
            print(f"  MLflow run {result.run_id} in {result.tracking_uri}")
        keys = ("AP50", "AP75", "mAP", "coco_AP", "dice", "F1", "accuracy")
        shown = {k: v for k, v in result.metrics.items() if k.count("/") == 1 and k.split("/")[1] in keys}
        if shown:
            print("  " + "  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    return 0
