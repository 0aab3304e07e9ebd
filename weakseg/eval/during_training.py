"""Evaluation during a training run: metrics of the evaluation split as logged metrics and files.

:mod:`weakseg.eval.evaluate` computes the metrics; this module turns them into what a run keeps:
``val/...`` metrics for the tracker, ``eval/metrics-step-N.json|csv`` and the panel PNG in the run
folder, the same files as MLflow artifacts. The training engine calls :func:`make_evaluator` once
and the returned function at every evaluation step; it knows nothing about metrics.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


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
    from weakseg.inference.mask_threshold import resolve_mask_threshold

    cell_diameter = getattr(input_scale, "cell_diameter", None) if input_scale is not None else None

    def evaluate(strategy: Any, step: int) -> dict[str, float]:
        result = evaluate_strategy(
            strategy,
            recipe.data,
            recipe.eval.split,
            recipe.eval.max_images,
            recipe.eval.score_threshold,
            device,
            mask_threshold=resolve_mask_threshold(recipe.eval.mask_threshold, strategy, cell_diameter),
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
