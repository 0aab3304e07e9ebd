"""The training loop: strategy-agnostic, step-based, resumable, one process or many.

The trainer knows nothing about what a strategy trains. Each step it takes the next
:class:`~weakseg.components.Batch`, calls ``strategy(batch, step)`` for a dict of named scalar
losses, back-propagates their sum and steps the optimizer. Around that it owns:

- **optimizer and schedule** (``recipe.train.optimizer``, built in :mod:`weakseg.engine.optim`):
  AdamW/Adam/SGD; ``constant``, ``cosine`` or ``finetune`` (the CKS paper's schedule: ``lr`` (1e-3)
  and then ``finetune_lr`` (2e-4) for the steps after ``finetune_start`` of the run), times an
  optional linear warm-up. Biases and normalisation weights (1-D parameters) get no weight decay.
- **phases** the strategy declares (``strategy.phases()``, e.g. the CKS warm-up); the current phase
  is printed, tagged (``weakseg.phase``) and logged as ``train/phase_index``.
- **precision**: ``bf16`` autocasts the forward pass to bfloat16 (CUDA or CPU), ``fp32`` does not,
  ``auto`` means bf16 on CUDA and fp32 on the CPU. bf16 has float32's range, so no loss scaler.
- **gradient clipping** by global norm (``train.grad_clip``; the norm is logged as ``train/grad_norm``).
- **safety**: a NaN/inf loss or gradient norm stops the run before the optimizer touches the
  weights, with a :class:`NonFiniteLossError` naming the loss and step; the last good checkpoint
  stays. SIGINT/SIGTERM finish the current step, write a checkpoint and raise
  :class:`TrainingInterrupted` (the CLI exits with 130 / 143; ``--resume`` continues).
- **distribution**: DDP wrapping, rank-0-only logging/checkpoints/evaluation, and per-step losses
  averaged over ranks (one small all-reduce that also carries the stop flag, so all ranks stop at
  the same step).
- **periodic work**: losses every ``log_every`` steps (averaged over the interval), evaluation
  every ``eval_every`` steps, checkpoints every ``checkpoint_every`` steps and at the end.
- **progress** (:mod:`weakseg.engine.progress`): a rich progress bar with phase, loss, throughput and
  ETA when stderr is a terminal; otherwise one plain line per checkpoint interval (batch-job logs
  stay short). ``WEAKSEG_PROGRESS=bar`` or ``=lines`` forces either; ``weakseg run --no-progress``
  silences both.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from weakseg import checkpoint as ckpt_io
from weakseg.components import Batch, DataSummary
from weakseg.devices import unwrap
from weakseg.engine.distributed import DistContext, wrap
from weakseg.engine.optim import LRSchedule, autocast_dtype, build_optimizer
from weakseg.engine.progress import Progress
from weakseg.engine.tracking import NullTracker
from weakseg.errors import WeaksegError

__all__ = [
    "LRSchedule",
    "NonFiniteLossError",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "autocast_dtype",
    "build_optimizer",
    "evaluate_on_main",
]

BatchFactory = Callable[[int], Iterator[Batch]]
StepCallback = Callable[["Trainer", int, Mapping[str, float]], None]
EvaluateFn = Callable[[Any, int], "Mapping[str, float] | None"]


class NonFiniteLossError(WeaksegError):
    """A loss or the gradient norm became NaN/inf; the run stopped, the last good checkpoint is kept."""


class TrainingInterrupted(WeaksegError):
    """SIGINT/SIGTERM stopped training after a checkpoint was written; ``--resume`` continues."""

    def __init__(self, message: str, signum: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        #: 128 + signal number, the shell convention: 130 for SIGINT, 143 for SIGTERM.
        self.exit_code = 128 + int(signum)


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------


@attrs.frozen
class TrainResult:
    """What a finished :meth:`Trainer.fit` reports."""

    step: int
    checkpoint: Path | None
    losses: dict[str, float]
    phase: str
    seconds: float
    steps_run: int


class _StopRequest:
    """Records SIGINT/SIGTERM during training; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


@attrs.frozen
class _StepOutcome:
    """One step's losses (averaged over ranks, plus their sum as ``loss``), gradient norm and stop flag."""

    losses: dict[str, float]
    grad_norm: float
    stop_flag: float


class _LossMeter:
    """Sums of the per-step losses between two logging steps, and the throughput since the last one."""

    def __init__(self, step: int) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.last: dict[str, float] = {}
        self._t, self._step = time.perf_counter(), step

    def add(self, losses: Mapping[str, float], grad_norm: float) -> None:
        self.last = dict(losses)
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.sums["grad_norm"] = self.sums.get("grad_norm", 0.0) + grad_norm
        self.n += 1

    def take(self, step: int) -> tuple[dict[str, float], float]:
        """The interval's mean metrics (``train/...``) and steps per second; starts a new interval."""
        now = time.perf_counter()
        steps_per_s = (step - self._step) / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        metrics = {f"train/{k}": v / max(self.n, 1) for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return metrics, steps_per_s


class Trainer:
    """Runs ``recipe.train`` on ``strategy`` (see the module docstring).

    ``batches(start_step)`` must return the endless batch stream starting at ``start_step`` (the
    data layer's ``make_train_loader(..., start_step=...)``); ``evaluate(strategy, step)`` runs on
    rank 0 every ``eval_every`` steps and returns metrics to log (``val/...``); ``callbacks`` run
    after every step on every rank with ``(trainer, step, losses)``.
    """

    def __init__(
        self,
        strategy: nn.Module,
        recipe: Any,
        data_summary: DataSummary,
        *,
        batches: BatchFactory,
        ctx: DistContext | None = None,
        checkpoints: ckpt_io.CheckpointDir | None = None,
        tracker: Any = None,
        evaluate: EvaluateFn | None = None,
        callbacks: Sequence[StepCallback] = (),
        progress: bool = True,
        input_scale: dict[str, Any] | None = None,
    ) -> None:
        self.ctx = ctx or DistContext()
        self.strategy = strategy.to(self.ctx.device)
        self.recipe = recipe
        self.train_cfg = recipe.train
        self.data_summary = data_summary
        self.input_scale = input_scale
        self.batches = batches
        self.checkpoints = checkpoints
        self.tracker = tracker or NullTracker()
        self.evaluate = evaluate
        self.callbacks = list(callbacks)
        self.progress_enabled = progress and self.ctx.is_main
        self.recipe_yaml = recipe.to_yaml()
        self.step = 0
        self.phase = ""
        self.schedule = LRSchedule.from_recipe(self.train_cfg)
        self.amp_dtype = autocast_dtype(self.train_cfg.precision, self.ctx.device)
        parts_of = getattr(self.strategy, "parameter_groups", None)
        self.optimizer = build_optimizer(
            self.strategy,
            self.train_cfg.optimizer,
            parts_of() if callable(parts_of) else None,
            str(getattr(recipe.strategy, "type", "")),
        )
        self.last_checkpoint: Path | None = None
        self._last_saved_step = 0
        self._params: list[nn.Parameter] = []

    # -- state ---------------------------------------------------------------------------------

    def restore(self, checkpoint: ckpt_io.Checkpoint) -> None:
        """Continue from ``checkpoint``: weights, optimizer, step and (same world size) random states."""
        raw = checkpoint.raw
        self.strategy.load_state_dict(checkpoint.state_dict, strict=True)
        if "optimizer" in raw:
            self._restore_optimizer(raw["optimizer"], checkpoint.path)
        self.step = checkpoint.step
        self.last_checkpoint = checkpoint.path
        self._last_saved_step = checkpoint.step
        rng = raw.get("rng") or []
        saved_world = (raw.get("data") or {}).get("world_size", len(rng))
        if len(rng) == self.ctx.world_size and saved_world == self.ctx.world_size:
            ckpt_io.set_rng_state(rng[self.ctx.rank])
        elif self.ctx.is_main:
            import warnings

            warnings.warn(
                f"{checkpoint.path}: written by {saved_world} process(es), resumed by {self.ctx.world_size}; "
                "training continues, but random states and data shards differ from an uninterrupted run",
                stacklevel=2,
            )

    def _restore_optimizer(self, state: dict[str, Any], path: Any) -> None:
        """The saved optimizer state, with the recipe's learning-rate factors (they may have changed).

        A state whose parameter groups no longer fit (``train.optimizer.lr_factors`` now names other parts)
        is dropped with a warning: the weights and the step resume, the optimizer's moments restart.
        """
        factors = [g.get("lr_factor", 1.0) for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state)
        except ValueError as exc:
            if self.ctx.is_main:
                import warnings

                warnings.warn(
                    f"{path}: the saved optimizer state does not fit the recipe's parameter groups ({exc}; "
                    "train.optimizer.lr_factors changed?): the weights and the step resume, the optimizer "
                    "moments start afresh",
                    stacklevel=3,
                )
            return
        for group, factor in zip(self.optimizer.param_groups, factors, strict=True):
            group["lr_factor"] = factor

    def state_payload(self) -> dict[str, Any]:
        """The checkpoint dict of the current state (collective: every rank must call it)."""
        rng = self.ctx.gather(ckpt_io.rng_state())
        return ckpt_io.make_payload(
            recipe_yaml=self.recipe_yaml,
            data_summary=self.data_summary,
            state_dict=unwrap(self.strategy).state_dict(),
            step=self.step,
            phase=self.phase or unwrap(self.strategy).phase_at(self.step),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            rng=rng,
            data={"step": self.step, "seed": self.train_cfg.seed, "world_size": self.ctx.world_size},
            tracking=self.tracker.info() if self.ctx.is_main else None,
            input_scale=self.input_scale,
        )

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank must call it)."""
        payload = self.state_payload()
        path = None
        if self.ctx.is_main and self.checkpoints is not None:
            path = self.checkpoints.save(payload, self.step)
            self.last_checkpoint = path
            self._last_saved_step = self.step
        if self.ctx.is_main:
            self.tracker.flush()  # metrics up to the checkpoint are on disk with it
        self.ctx.barrier()
        return path

    # -- the loop ------------------------------------------------------------------------------

    def _enter_phase(self, name: str, progress: Progress) -> None:
        if name == self.phase:
            return
        self.phase = name
        progress.message(f"step {self.step}: phase '{name}'")
        if self.ctx.is_main:
            self.tracker.set_tags({"weakseg.phase": name})

    def _phase_index(self, name: str) -> int:
        names = [p.name for p in sorted(unwrap(self.strategy).phases(), key=lambda p: p.start)]
        return names.index(name) if name in names else -1

    def _forward(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        device = self.ctx.device
        ctx = (
            torch.autocast(device_type=device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            losses = model(batch, self.step)
        bad = not isinstance(losses, Mapping) or not losses
        bad = bad or any(not isinstance(v, torch.Tensor) or v.numel() != 1 for v in losses.values())
        if bad:
            raise WeaksegError(
                f"strategy {self.recipe.strategy.type!r} returned {type(losses).__name__} at step {self.step}; "
                "forward(batch, step) must return a non-empty dict of named scalar loss tensors"
            )
        return dict(losses)

    def _raise_non_finite(self, names: list[str], values: list[float], grad_norm: float) -> None:
        bad = [f"{n}={v}" for n, v in zip(names, values, strict=True) if not math.isfinite(v)]
        what = f"loss {', '.join(bad)}" if bad else f"gradient norm {grad_norm} (losses finite)"
        last = self.last_checkpoint
        keep = f"the last good checkpoint is {last} (step {self._last_saved_step})" if last else "no checkpoint yet"
        raise NonFiniteLossError(
            f"training stopped: non-finite {what} at step {self.step} (phase '{self.phase}') of recipe "
            f"{self.recipe.name!r}; the weights were not updated and {keep}. Lower train.optimizer.lr, set "
            "train.grad_clip, add train.optimizer.warmup_steps or try train.precision=fp32."
        )

    def _interrupted(self, signum: int) -> None:
        name = signal.Signals(signum).name
        where = self.last_checkpoint or (self.checkpoints.last if self.checkpoints else None)
        raise TrainingInterrupted(
            f"training of {self.recipe.name!r} interrupted by {name} at step {self.step}/{self.train_cfg.steps}; "
            f"checkpoint written to {where}; continue with `weakseg run RECIPE --resume`",
            signum,
            self.step,
            where,
        )

    def fit(self) -> TrainResult:
        """Train from ``self.step`` to ``recipe.train.steps``; returns the final state."""
        cfg = self.train_cfg
        start, t_start = self.step, time.perf_counter()
        model = wrap(self.strategy, self.ctx, find_unused_parameters=cfg.find_unused_parameters)
        model.train()
        self._params = [p for p in self.strategy.parameters() if p.requires_grad]
        line_every = cfg.checkpoint_every if cfg.checkpoint_every > 0 else max(cfg.steps // 20, 1)
        progress = Progress(cfg.steps, start, enabled=self.progress_enabled, line_every=line_every)
        meter = _LossMeter(start)
        stream = self.batches(start) if start < cfg.steps else iter(())
        try:
            with _StopRequest() as stop:
                while self.step < cfg.steps:
                    self._train_step(model, stream, stop, meter, progress)
            if start >= cfg.steps and self.checkpoints is not None and not self.checkpoints.last.exists():
                self.save()
        finally:
            progress.close()
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        model.eval()
        return TrainResult(
            step=self.step,
            checkpoint=self.last_checkpoint,
            losses=meter.last,
            phase=self.phase,
            seconds=time.perf_counter() - t_start,
            steps_run=self.step - start,
        )

    def _train_step(
        self, model: nn.Module, stream: Iterator[Batch], stop: _StopRequest, meter: _LossMeter, progress: Progress
    ) -> None:
        """One optimisation step, then the periodic work due after it: log, evaluate, checkpoint, stop."""
        cfg = self.train_cfg
        self._enter_phase(unwrap(self.strategy).phase_at(self.step), progress)
        lr = self.schedule.apply(self.optimizer, self.step)
        batch = self._next_batch(stream, stop)
        outcome = self._optimise(model, batch, stop)
        self.step += 1
        meter.add(outcome.losses, outcome.grad_norm)
        for callback in self.callbacks:
            callback(self, self.step, outcome.losses)
        if self.step % max(cfg.log_every, 1) == 0 or self.step == cfg.steps:
            self._log_interval(meter, lr)
        progress.update(self.step, loss=outcome.losses["loss"], phase=self.phase)
        # periodic evaluation (the final one is the caller's); every rank enters, since the
        # others wait at a barrier while rank 0 evaluates (``evaluate`` is None off rank 0)
        if cfg.eval_every > 0 and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
            self.run_evaluation(progress)
        # distributed: the flag reduced with this step's losses (all ranks agree); else read it now
        stopping = outcome.stop_flag > 0 if self.ctx.distributed else stop.signum is not None
        due = cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0
        if stopping or self.step == cfg.steps or due:
            self.save()
        if stopping:
            self._interrupted(stop.signum or signal.SIGTERM)

    def _next_batch(self, stream: Iterator[Batch], stop: _StopRequest) -> Batch:
        """The next batch on this rank's device; a fetch failing after a signal ends training cleanly."""
        try:
            return next(stream).to(self.ctx.device)
        except Exception:
            # Ctrl-C reaches data-loader workers too; a fetch failing after a signal is the
            # interruption itself: the step has not started, so checkpoint and stop here
            if stop.signum is None:
                raise
            self.save()
            self._interrupted(stop.signum)
            raise

    def _optimise(self, model: nn.Module, batch: Batch, stop: _StopRequest) -> _StepOutcome:
        """Forward, backward and clip; losses, gradient norm and stop flag averaged over ranks in one
        all-reduce; the optimizer steps only when all of them are finite."""
        losses = self._forward(model, batch)
        names = sorted(losses)
        loss_total = sum(losses[n].float() for n in names)
        self.optimizer.zero_grad(set_to_none=True)
        loss_total.backward()
        clip = self.train_cfg.grad_clip if self.train_cfg.grad_clip else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, clip)
        parts = [losses[n].detach().float().reshape(()) for n in names]
        parts += [loss_total.detach().reshape(()), grad_norm.detach().float().to(loss_total.device)]
        if self.ctx.distributed:  # the stop flag travels with the losses: all ranks stop together
            parts.append(torch.full((), 1.0 if stop.signum else 0.0, device=loss_total.device))
        values = self.ctx.all_reduce_mean(torch.stack(parts)).cpu().tolist()
        if not self.ctx.distributed:
            values.append(1.0 if stop.signum else 0.0)
        *loss_values, total_value, norm_value, stop_value = values
        if not all(math.isfinite(v) for v in (*loss_values, total_value, norm_value)):
            self._raise_non_finite(names, loss_values, norm_value)
        self.optimizer.step()
        named = {**dict(zip(names, loss_values, strict=True)), "loss": total_value}
        return _StepOutcome(losses=named, grad_norm=norm_value, stop_flag=stop_value)

    def _log_interval(self, meter: _LossMeter, lr: float) -> None:
        """Log the interval's mean losses, learning rate, throughput and phase (rank 0)."""
        metrics, steps_per_s = meter.take(self.step)
        metrics["train/lr"] = lr
        metrics["train/steps_per_s"] = steps_per_s
        metrics["train/images_per_s"] = steps_per_s * self.train_cfg.batch_size * self.ctx.world_size
        metrics["train/phase_index"] = float(self._phase_index(self.phase))
        extra = getattr(unwrap(self.strategy), "interval_metrics", None)
        metrics.update({f"train/{k}": float(v) for k, v in (extra() if callable(extra) else {}).items()})
        if self.ctx.is_main:
            self.tracker.log_metrics(metrics, self.step)

    def run_evaluation(self, progress: Progress | None = None) -> dict[str, float]:
        """Evaluate on rank 0 (the others wait) and log the metrics at the current step."""
        return evaluate_on_main(self.ctx, self.strategy, self.evaluate, self.tracker, self.step, progress)


def evaluate_on_main(
    ctx: DistContext,
    strategy: nn.Module,
    evaluate: EvaluateFn | None,
    tracker: Any,
    step: int,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Run ``evaluate(strategy, step)`` on rank 0 in eval mode without gradients, log its metrics
    at ``step``, and hold the other ranks at a barrier meanwhile. Returns the metrics (rank 0)."""
    metrics: dict[str, float] = {}
    if ctx.is_main and evaluate is not None:
        module = unwrap(strategy)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                metrics = dict(evaluate(module, step) or {})
        finally:
            module.train(was_training)
        if metrics:
            tracker.log_metrics(metrics, step)
            if progress is not None:
                shown = ", ".join(f"{k}={v:.4f}" for k, v in list(metrics.items())[:4])
                progress.message(f"step {step}: {shown}")
    ctx.barrier()
    return metrics
