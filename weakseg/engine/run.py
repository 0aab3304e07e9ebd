"""``run_recipe``: a recipe in, a trained, evaluated and tracked run out.

The run folder
--------------
::

    <output.dir>/
      mlflow.db                      MLflow store shared by every recipe run in this folder
      mlartifacts/<experiment>/...   MLflow artifacts (recipe, metrics tables, panels, final checkpoint)
      <recipe.name>/
        recipe.yaml                  the resolved recipe (extends and --set applied)
        checkpoints/step-NNNNNNNN.ckpt   the newest 3 step snapshots, each with a size + sha256 record
        checkpoints/last.ckpt        a small pointer to the newest snapshot (what `weakseg evaluate` and
                                     `weakseg predict` read; a run folder works as well)
        eval/metrics-step-NNNNNNNN.json|csv  overall and per-group metrics of each evaluation
        eval/panel-step-NNNNNNNN.png         image | principal instances | collaborator maps

``mlflow ui --backend-store-uri sqlite:///<output.dir>/mlflow.db`` shows all of them side by side.
A second ``weakseg run`` of the same recipe into the same folder refuses to overwrite it: pass
``--resume`` to continue it (from the newest snapshot that verifies), ``--fresh`` to start over
(the old checkpoints are moved aside), or another ``--output`` / recipe name. ``--resume`` without
a checkpoint starts from step 0, so a job script can always pass it (pre-emptible clusters). See
:mod:`weakseg.engine.resume`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from weakseg.checkpoint import CheckpointDir
from weakseg.checkpoint.files import write_text_atomic
from weakseg.engine.resume import RESUMABLE_CHANGES, StartPoint, check_resumable, choose_start
from weakseg.errors import WeaksegError

__all__ = ["KEEP_STEP_CHECKPOINTS", "RESUMABLE_CHANGES", "RunResult", "check_resumable", "run_dir_for", "run_recipe"]

#: Step snapshots kept beside last.ckpt.
KEEP_STEP_CHECKPOINTS = 3


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


def _say(ctx: Any, text: str) -> None:
    if ctx.is_main:
        print(text, file=sys.stderr, flush=True)


@attrs.define
class _Run:
    """What the steps of one run share."""

    recipe: Any
    ctx: Any
    out_root: Path
    run_dir: Path
    checkpoints: CheckpointDir
    tracker: Any = None
    summary: Any = None
    input_scale: Any = None  #: the run's one InputScale (weakseg.data.scales)


def run_recipe(
    recipe: Any,
    resume: bool = False,
    output: str | Path | None = None,
    *,
    fresh: bool = False,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
) -> RunResult:
    """Train (unless the strategy is training-free), evaluate and track ``recipe``.

    Works in one process and under ``torchrun`` (see :mod:`weakseg.engine.distributed`). ``resume``
    continues from the newest good snapshot, ``fresh`` starts over an earlier run's checkpoints
    (see :mod:`weakseg.engine.resume`). Raises :class:`~weakseg.engine.trainer.TrainingInterrupted`
    after SIGINT/SIGTERM (checkpoint written) and :class:`~weakseg.engine.trainer.NonFiniteLossError`
    on a NaN/inf loss.
    """
    from weakseg.engine import distributed
    from weakseg.engine.tracking import NullTracker
    from weakseg.engine.trainer import TrainingInterrupted, evaluate_on_main
    from weakseg.eval.during_training import make_evaluator

    ctx = distributed.setup(recipe.train.device)
    out_root = Path(output) if output is not None else Path(recipe.output.dir)
    run_dir = run_dir_for(recipe, out_root)
    run = _Run(recipe, ctx, out_root, run_dir, CheckpointDir(run_dir / "checkpoints", keep=KEEP_STEP_CHECKPOINTS))
    run.tracker = NullTracker()
    status = "FAILED"
    try:
        start, checkpoint = choose_start(recipe, run.checkpoints, ctx, resume=resume, fresh=fresh)
        run.summary = _prepare_data(run, checkpoint)
        run.input_scale = _input_scale(recipe)
        strategy = _build_strategy(run, warm=checkpoint is None)
        if ctx.is_main:
            run.tracker = _open_tracking(run, checkpoint, start)
        evaluate = make_evaluator(recipe, run_dir, run.tracker, ctx.device, run.input_scale) if ctx.is_main else None
        if strategy.trainable:
            step, steps_run, seconds = _train(run, strategy, checkpoint, evaluate, callbacks, progress)
        else:
            step, steps_run, seconds = _evaluate_only(run, strategy)
        if ctx.is_main and recipe.train.size_model:
            _add_size_model(run, strategy)
        metrics = evaluate_on_main(ctx, strategy, evaluate, run.tracker, step)
        result = _finish(run, step, steps_run, seconds, metrics)
        status = "FINISHED"
        return result
    except TrainingInterrupted:
        status = "KILLED"
        raise
    finally:
        run.tracker.finish(status)
        distributed.shutdown(ctx)


def _prepare_data(run: _Run, checkpoint: Any) -> Any:
    """Make sure the store exists (rank 0 prepares it), and that a resumed run sees the same data."""
    from weakseg.data.dataset import data_summary
    from weakseg.data.prepare import ensure_store

    if run.ctx.is_main:
        ensure_store(run.recipe.data)
    run.ctx.barrier()
    summary = data_summary(run.recipe.data)
    if checkpoint is not None and checkpoint.data_summary != summary:
        raise WeaksegError(
            f"{checkpoint.file or checkpoint.path}: the data changed since the checkpoint was written "
            f"({checkpoint.data_summary} -> {summary}); resume on the same store {run.recipe.data.store!r}"
        )
    return summary


def _input_scale(recipe: Any) -> Any:
    """How the training images are resized: measured once per run and used by the loader, the evaluation
    and every checkpoint (hence prediction), so that all of them resize alike."""
    from weakseg.data.dataset import compute_input_scale

    return compute_input_scale(recipe.data, seed=recipe.train.seed)


def _build_strategy(run: _Run, *, warm: bool) -> Any:
    """The strategy with the same initial weights on every rank (``model.init_from`` on a new run);
    afterwards each rank gets its own random stream."""
    from weakseg.build import build_strategy
    from weakseg.checkpoint import seed_everything

    recipe = run.recipe
    seed_everything(recipe.train.seed)
    strategy = build_strategy(recipe, run.summary)
    init_from = recipe.model.init_from if recipe.model is not None else None
    if init_from and warm:
        from weakseg.engine.warm_start import warm_start

        _say(run.ctx, warm_start(strategy, init_from, recipe.model.init_scope).summary())
    seed_everything(recipe.train.seed + run.ctx.rank)
    return strategy


def _open_tracking(run: _Run, checkpoint: Any, start: StartPoint) -> Any:
    """Rank 0: the MLflow run (the checkpoint's when resuming), with the resolved recipe as artifact."""
    from weakseg.engine.tracking import MlflowTracker

    tags = {"weakseg.world_size": str(run.ctx.world_size), **start.tracking_tags()}
    run_id = checkpoint.run_id if checkpoint is not None else None
    tracker = MlflowTracker.open(run.recipe, run.out_root, run_id=run_id, tags=tags)
    write_text_atomic(run.run_dir / "recipe.yaml", run.recipe.to_yaml())
    tracker.log_artifact(run.run_dir / "recipe.yaml")
    return tracker


def _train(
    run: _Run, strategy: Any, checkpoint: Any, evaluate: Any, callbacks: Sequence[Any], progress: bool
) -> tuple[int, int, float]:
    """Train to ``recipe.train.steps`` (from the checkpoint when resuming); (step, steps run, seconds)."""
    from weakseg.data.dataset import make_train_loader
    from weakseg.engine.trainer import Trainer

    recipe, ctx = run.recipe, run.ctx
    trainer = Trainer(
        strategy,
        recipe,
        run.summary,
        batches=lambda start: make_train_loader(
            recipe.data,
            batch_size=recipe.train.batch_size,
            seed=recipe.train.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            start_step=start,
            scale=run.input_scale,
            points_only=bool(getattr(recipe.strategy.config, "points_only", False)),
        ),
        ctx=ctx,
        checkpoints=run.checkpoints,
        tracker=run.tracker,
        evaluate=evaluate,
        callbacks=callbacks,
        progress=progress,
        input_scale=run.input_scale.to_dict(),
    )
    if checkpoint is not None:
        trainer.restore(checkpoint)
    result = trainer.fit()
    return result.step, result.steps_run, result.seconds


def _evaluate_only(run: _Run, strategy: Any) -> tuple[int, int, float]:
    """A training-free strategy: write its step-0 checkpoint (rank 0); evaluation follows."""
    from weakseg.checkpoint import make_payload

    _say(run.ctx, f"strategy {run.recipe.strategy.type!r} is training-free: evaluating only")
    strategy.to(run.ctx.device).eval()
    if run.ctx.is_main:
        payload = make_payload(
            recipe_yaml=run.recipe.to_yaml(),
            data_summary=run.summary,
            state_dict=strategy.state_dict(),
            step=0,
            phase=strategy.phase_at(0),
            tracking=run.tracker.info(),
            input_scale=run.input_scale.to_dict(),
        )
        run.checkpoints.save(payload, 0)
    run.ctx.barrier()
    return 0, 0, 0.0


def _add_size_model(run: _Run, strategy: Any) -> None:
    """Fit a size model on the training split into the final checkpoint (rank 0), when the principal
    offers backbone features (:mod:`weakseg.inference.size_fit`); a failure only warns."""
    import warnings

    from weakseg.devices import unwrap
    from weakseg.inference.size_fit import add_size_model, describe, fit_size_model

    last = run.checkpoints.last
    if not last.exists():
        return
    try:
        model = fit_size_model(
            unwrap(strategy).principal(),
            run.recipe.data,
            run.input_scale,
            in_channels=run.summary.in_channels,
            seed=run.recipe.train.seed,
            device=run.ctx.device,
        )
        if model is not None:
            add_size_model(last, model)
            _say(run.ctx, describe(model))
    except Exception as exc:  # noqa: BLE001 - the trained checkpoint stays usable without a size model
        warnings.warn(f"{last}: no size model was added ({type(exc).__name__}: {exc})", stacklevel=2)


def _finish(run: _Run, step: int, steps_run: int, seconds: float, metrics: dict[str, float]) -> RunResult:
    """Log the final snapshot (the file ``last.ckpt`` points to) and its record as MLflow artifacts
    (rank 0), and report the run."""
    from weakseg.checkpoint.files import read_pointer, record_path

    last = run.checkpoints.last
    final = last if last.exists() else None
    if run.ctx.is_main and final is not None:
        target = read_pointer(last) or last
        run.tracker.log_artifact(target, "checkpoints")
        if record_path(target).is_file():
            run.tracker.log_artifact(record_path(target), "checkpoints")
    return RunResult(
        run_dir=run.run_dir,
        checkpoint=final,
        step=step,
        steps_run=steps_run,
        seconds=seconds,
        metrics=metrics,
        run_id=run.tracker.run_id,
        tracking_uri=run.tracker.tracking_uri,
        is_main=run.ctx.is_main,
    )
