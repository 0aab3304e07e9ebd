"""``run_recipe``: a recipe in, a trained, evaluated and tracked run out.

The run folder
--------------
::

    <output.dir>/
      mlflow.db                      MLflow store shared by every recipe run in this folder
      mlartifacts/<experiment>/...   MLflow artifacts (recipe, metrics tables, panels, final checkpoint)
      <recipe.name>/
        recipe.yaml                  the resolved recipe (extends and --set applied)
        checkpoints/last.ckpt        the newest checkpoint (what --resume and `weakseg evaluate` read)
        checkpoints/step-NNNNNNNN.ckpt   the newest 3 step snapshots (hard links, no extra space)
        eval/metrics-step-NNNNNNNN.json|csv  overall and per-group metrics of each evaluation
        eval/panel-step-NNNNNNNN.png         image | principal instances | collaborator maps

``mlflow ui --backend-store-uri sqlite:///<output.dir>/mlflow.db`` shows all of them side by side.
A second ``weakseg run`` of the same recipe into the same folder refuses to overwrite it: pass
``--resume`` to continue it, or another ``--output`` / recipe name. ``--resume`` without a
checkpoint starts from step 0, so a job script can always pass it (pre-emptible clusters).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from weakseg.errors import RecipeError, WeaksegError

#: Step snapshots kept beside last.ckpt.
KEEP_STEP_CHECKPOINTS = 3

#: Recipe keys that may change between a run and its resumption (everything else must match).
RESUMABLE_CHANGES = (
    "description",
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.device",
    "data.num_workers",
    "eval.",
    "output.",
)


@attrs.frozen
class RunResult:
    """What a finished run reports (the same on every rank; tracking fields are rank 0's)."""

    run_dir: Path
    checkpoint: Path | None
    step: int
    steps_run: int
    seconds: float
    metrics: dict[str, float]
    run_id: str | None
    tracking_uri: str | None
    is_main: bool = True


def run_dir_for(recipe: Any, output: str | Path | None = None) -> Path:
    """``<output or recipe.output.dir>/<recipe.name>``."""
    return Path(output if output is not None else recipe.output.dir) / recipe.name


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_resumable(recipe: Any, stored_yaml: str, where: Path) -> None:
    """Refuse to resume with a recipe that trains something else than the checkpoint did."""
    from weakseg.recipe import flatten, recipe_from_yaml_text

    stored = flatten(recipe_from_yaml_text(stored_yaml, origin=str(where)).to_dict())
    current = flatten(recipe.to_dict())
    changed = []
    for key in sorted(set(stored) | set(current)):
        if any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE_CHANGES):
            continue
        if stored.get(key, "<absent>") != current.get(key, "<absent>"):
            changed.append(f"  recipe.{key}: {stored.get(key, '<absent>')!r} -> {current.get(key, '<absent>')!r}")
    if changed:
        raise RecipeError(
            f"{where}: cannot resume, the recipe differs from the one the checkpoint was trained with:\n"
            + "\n".join(changed)
            + "\nresume with the same recipe (only train.steps, intervals, eval.* and output.* may change), "
            "or start a new run with another --output or recipe name"
        )


# ------------------------------------------------------------------------------------------------
# Evaluation glue (weakseg.eval owns the metrics; this turns them into logged metrics and files)
# ------------------------------------------------------------------------------------------------


def make_evaluator(recipe: Any, run_dir: Path, tracker: Any, device: Any, input_scale: Any = None) -> Any:
    """``evaluate(strategy, step) -> {"val/AP50": ..., "val/<group>/AP50": ...}`` or ``None``.

    Returns ``None`` (no evaluation) when ``weakseg.eval.evaluate`` is not installed. Each
    evaluation writes ``eval/metrics-step-N.json|csv`` and a panel PNG and logs them to MLflow.
    """
    try:
        from weakseg.eval.evaluate import evaluate_strategy
    except ImportError as exc:
        warnings.warn(f"evaluation is unavailable ({exc}); training runs without it", stacklevel=2)
        return None
    problem = _eval_split_problem(recipe)
    if problem:
        # point-only data is a legitimate setting: train, but say clearly why nothing is scored
        warnings.warn(f"recipe.eval.split: {problem}; the run trains without evaluation", stacklevel=2)
        return None
    prefix = recipe.eval.split

    def evaluate(strategy: Any, step: int) -> dict[str, float]:
        result = evaluate_strategy(
            strategy,
            recipe.data,
            recipe.eval.split,
            recipe.eval.max_images,
            recipe.eval.score_threshold,
            device,
            mask_threshold=recipe.eval.mask_threshold,
            input_scale=input_scale,
        )
        eval_dir = run_dir / "eval"
        eval_dir.mkdir(parents=True, exist_ok=True)
        stem = f"step-{step:08d}"
        json_path = eval_dir / f"metrics-{stem}.json"
        json_path.write_text(result.to_json())
        csv_path = eval_dir / f"metrics-{stem}.csv"
        result.to_csv(csv_path)
        tracker.log_artifact(json_path, "eval")
        tracker.log_artifact(csv_path, "eval")
        if recipe.eval.panel:
            panel = _write_panel(result, strategy, recipe, eval_dir / f"panel-{stem}.png", device)
            if panel is not None:
                tracker.log_png(panel, f"panels/{panel.name}")
        return result.flat(prefix)

    return evaluate


def _eval_split_problem(recipe: Any) -> str | None:
    """Why ``recipe.eval.split`` cannot be scored (no images, no ground-truth masks), or None."""
    from weakseg.data.store import open_store

    store = open_store(recipe.data.store)
    infos = store.select(split=recipe.eval.split, groups=recipe.data.groups)
    splits = sorted({i.split for i in store.images})
    if not infos:
        return f"store {recipe.data.store} has no {recipe.eval.split!r} images (splits: {', '.join(splits)})"
    if not any(i.has_labels for i in infos):
        return f"the {recipe.eval.split!r} images of {recipe.data.store} have no instance masks to score against"
    return None


def _write_panel(result: Any, strategy: Any, recipe: Any, path: Path, device: Any) -> Path | None:
    """Ask the eval layer for the evaluation figure; a failing panel never fails the run."""
    from weakseg.eval.panel import write_panel

    try:
        return write_panel(
            strategy,
            recipe.data,
            recipe.eval.split,
            path,
            device=device,
            result=result,
            score_threshold=recipe.eval.score_threshold,
        )
    except Exception as exc:  # noqa: BLE001 - the figure is a nicety, never a reason to stop training
        warnings.warn(f"could not draw the evaluation panel {path}: {type(exc).__name__}: {exc}", stacklevel=2)
        return None


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def _say(ctx: Any, text: str) -> None:
    if ctx.is_main:
        print(text, file=sys.stderr, flush=True)


def run_recipe(
    recipe: Any,
    resume: bool = False,
    output: str | Path | None = None,
    *,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
) -> RunResult:
    """Train (unless the strategy is training-free), evaluate and track ``recipe``.

    Works in one process and under ``torchrun`` (see :mod:`weakseg.engine.distributed`). Raises
    :class:`~weakseg.engine.trainer.TrainingInterrupted` after SIGINT/SIGTERM (checkpoint written)
    and :class:`~weakseg.engine.trainer.NonFiniteLossError` on a NaN/inf loss.
    """
    from weakseg.build import build_strategy
    from weakseg.data.dataset import compute_input_scale, data_summary, make_train_loader
    from weakseg.data.prepare import ensure_store
    from weakseg.engine import checkpoint as ckpt_io
    from weakseg.engine import distributed
    from weakseg.engine.tracking import MlflowTracker, NullTracker
    from weakseg.engine.trainer import Trainer, TrainingInterrupted, evaluate_on_main

    ctx = distributed.setup(recipe.train.device)
    tracker: Any = NullTracker()
    status = "FAILED"
    try:
        out_root = Path(output) if output is not None else Path(recipe.output.dir)
        run_dir = run_dir_for(recipe, out_root)
        ckdir = ckpt_io.CheckpointDir(run_dir / "checkpoints", keep=KEEP_STEP_CHECKPOINTS)
        checkpoint = None
        if ckdir.last.exists():
            if not resume:
                raise WeaksegError(
                    f"{run_dir}: already holds a run of recipe {recipe.name!r} ({ckdir.last}); pass --resume to "
                    "continue it, or --output DIR (or another recipe name) to start a new one"
                )
            checkpoint = ckpt_io.load_checkpoint(ckdir.last)
            check_resumable(recipe, checkpoint.recipe_yaml, ckdir.last)
            _say(ctx, f"resuming {recipe.name!r} from {ckdir.last} at step {checkpoint.step}/{recipe.train.steps}")
        elif resume:
            _say(ctx, f"no checkpoint in {ckdir.path}; starting {recipe.name!r} from step 0")

        if ctx.is_main:
            ensure_store(recipe.data)
        ctx.barrier()
        summary = data_summary(recipe.data)
        if checkpoint is not None and checkpoint.data_summary != summary:
            raise WeaksegError(
                f"{ckdir.last}: the data changed since the checkpoint was written "
                f"({checkpoint.data_summary} -> {summary}); resume on the same store {recipe.data.store!r}"
            )

        # measured once: training, evaluation and the checkpoints (hence prediction) use the same factors
        input_scale = compute_input_scale(recipe.data, seed=recipe.train.seed)
        ckpt_io.seed_everything(recipe.train.seed)  # the same initial weights on every rank
        strategy = build_strategy(recipe, summary)
        init_from = recipe.model.init_from if recipe.model is not None else None
        if init_from and checkpoint is None:
            from weakseg.engine.warm_start import warm_start

            _say(ctx, warm_start(strategy, init_from).summary())
        ckpt_io.seed_everything(recipe.train.seed + ctx.rank)

        if ctx.is_main:
            run_id = checkpoint.run_id if checkpoint is not None else None
            tracker = MlflowTracker.open(
                recipe, out_root, run_id=run_id, tags={"weakseg.world_size": str(ctx.world_size)}
            )
            _write_text_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
            tracker.log_artifact(run_dir / "recipe.yaml")
        evaluate = make_evaluator(recipe, run_dir, tracker, ctx.device, input_scale) if ctx.is_main else None

        if strategy.trainable:
            trainer = Trainer(
                strategy,
                recipe,
                summary,
                batches=lambda start: make_train_loader(
                    recipe.data,
                    batch_size=recipe.train.batch_size,
                    seed=recipe.train.seed,
                    rank=ctx.rank,
                    world_size=ctx.world_size,
                    start_step=start,
                    scale=input_scale,
                ),
                ctx=ctx,
                checkpoints=ckdir,
                tracker=tracker,
                evaluate=evaluate,
                callbacks=callbacks,
                progress=progress,
                input_scale=input_scale.to_dict(),
            )
            if checkpoint is not None:
                trainer.restore(checkpoint)
            result = trainer.fit()
            step, steps_run, seconds = result.step, result.steps_run, result.seconds
        else:
            _say(ctx, f"strategy {recipe.strategy.type!r} is training-free: evaluating only")
            strategy.to(ctx.device).eval()
            if ctx.is_main:
                payload = ckpt_io.make_payload(
                    recipe_yaml=recipe.to_yaml(),
                    data_summary=summary,
                    state_dict=strategy.state_dict(),
                    step=0,
                    phase=strategy.phase_at(0),
                    tracking=tracker.info(),
                    input_scale=input_scale.to_dict(),
                )
                ckdir.save(payload, 0)
            ctx.barrier()
            step, steps_run, seconds = 0, 0, 0.0
        metrics = evaluate_on_main(ctx, strategy, evaluate, tracker, step)
        if ctx.is_main and ckdir.last.exists():
            tracker.log_artifact(ckdir.last, "checkpoints")
        status = "FINISHED"
        return RunResult(
            run_dir=run_dir,
            checkpoint=ckdir.last if ckdir.last.exists() else None,
            step=step,
            steps_run=steps_run,
            seconds=seconds,
            metrics=metrics,
            run_id=tracker.run_id,
            tracking_uri=tracker.tracking_uri,
            is_main=ctx.is_main,
        )
    except TrainingInterrupted:
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)
        distributed.shutdown(ctx)
