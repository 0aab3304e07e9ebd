"""Where a run starts: step 0 in an empty folder, the newest good snapshot (``--resume``), or step 0
over an earlier run whose checkpoints are moved aside (``--fresh``).

A run folder that already holds checkpoints is never overwritten by accident: without ``--resume``
or ``--fresh`` the run refuses to start. ``--resume`` takes the newest snapshot that verifies (size,
sha256, content), whatever ``last.ckpt`` says, and says on stderr which one and why newer ones were
skipped; the damaged ones are moved to ``checkpoints/damaged/``. ``--fresh`` renames ``checkpoints/``
(and ``eval/``) to ``*.old-<UTC time>`` and the new MLflow run is tagged ``weakseg.restarted_from``
with the earlier run's id. Nothing is deleted.

Under torchrun rank 0 decides (it alone touches files) and tells the other ranks, so that every rank
starts from the same snapshot or stops with the same error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from weakseg.checkpoint import Checkpoint, CheckpointDir, CheckpointError, load_checkpoint
from weakseg.errors import RecipeError, WeaksegError

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
class StartPoint:
    """Rank 0's decision: the snapshot to resume from, or (``--fresh``) what the earlier run left."""

    checkpoint: Path | None = None
    restarted_from: str | None = None
    moved_to: Path | None = None

    def tracking_tags(self) -> dict[str, str]:
        """MLflow tags marking a run started over an earlier one."""
        if self.moved_to is None:
            return {}
        return {
            "weakseg.restarted_from": self.restarted_from or "unknown",
            "weakseg.earlier_checkpoints": str(self.moved_to),
        }


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


def choose_start(
    recipe: Any, ckdir: CheckpointDir, ctx: Any, *, resume: bool, fresh: bool
) -> tuple[StartPoint, Checkpoint | None]:
    """Decide on rank 0, tell every rank; returns the decision and the loaded snapshot (or ``None``)."""
    if resume and fresh:
        raise WeaksegError("--resume and --fresh exclude each other: continue the earlier run or start over")
    decision: Any = None
    checkpoint = None
    if ctx.is_main:
        try:
            start, checkpoint = _decide(recipe, ckdir, resume=resume, fresh=fresh, say=_say)
            decision = ("ok", start)
        except Exception as exc:
            if not ctx.distributed:
                raise
            decision, error = ("error", str(exc)), exc
    decision = ctx.broadcast(decision)
    if decision[0] == "error":
        if ctx.is_main:
            raise error
        raise WeaksegError(decision[1])
    start = decision[1]
    if checkpoint is None and start.checkpoint is not None:
        checkpoint = load_checkpoint(start.checkpoint)
    return start, checkpoint


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _decide(
    recipe: Any, ckdir: CheckpointDir, *, resume: bool, fresh: bool, say: Callable[[str], None]
) -> tuple[StartPoint, Checkpoint | None]:
    if not ckdir.has_checkpoints():
        if resume:
            say(f"no checkpoint in {ckdir.path}; starting {recipe.name!r} from step 0")
        return StartPoint(), None
    if fresh:
        return _start_over(recipe, ckdir, say), None
    if not resume:
        raise WeaksegError(
            f"{ckdir.path} holds checkpoints of an earlier run of recipe {recipe.name!r}; pass --resume to continue "
            "it or --fresh to start over (its checkpoints are moved aside), or --output DIR for a new folder"
        )
    found = ckdir.newest_good()
    if found.checkpoint is None:
        raise CheckpointError(
            ckdir.path, found.summary(), "pass --fresh to start over (the old files are moved aside, not deleted)"
        )
    checkpoint = found.checkpoint
    where = checkpoint.file or checkpoint.path
    check_resumable(recipe, checkpoint.recipe_yaml, where)
    ckdir.repair(found)
    if found.skipped or found.pointer_problem:
        moved = f" (moved to {ckdir.path / 'damaged'})" if found.skipped else ""
        say(f"{ckdir.path}: {found.summary()}{moved}")
    say(f"resuming {recipe.name!r} from {where} at step {checkpoint.step}/{recipe.train.steps}")
    return StartPoint(checkpoint=where), checkpoint


def _start_over(recipe: Any, ckdir: CheckpointDir, say: Callable[[str], None]) -> StartPoint:
    """``--fresh``: note the earlier run's MLflow id, then move its checkpoints and evaluations aside."""
    try:
        earlier = ckdir.newest_good().checkpoint
    except WeaksegError:  # e.g. its strategy's plugin is gone: the run id is a nicety, not a requirement
        earlier = None
    moved = ckdir.move_aside()
    assert moved is not None  # has_checkpoints() was true
    eval_dir = ckdir.path.parent / "eval"
    if eval_dir.is_dir():
        os.replace(eval_dir, eval_dir.with_name("eval" + moved.name.removeprefix(ckdir.path.name)))
    say(f"--fresh: the earlier run's checkpoints are now in {moved}; starting {recipe.name!r} from step 0")
    return StartPoint(restarted_from=earlier.run_id if earlier is not None else None, moved_to=moved)
