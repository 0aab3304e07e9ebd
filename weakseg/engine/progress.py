"""Training progress on stderr: a rich bar on a terminal, plain lines in batch-job logs.

``WEAKSEG_PROGRESS=bar`` or ``=lines`` forces either; ``weakseg run --no-progress`` silences both.
Only rank 0 shows progress.
"""

from __future__ import annotations

import math
import os
import sys
import time


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A rich progress bar on a terminal; plain lines every ``line_every`` steps elsewhere; silent off rank 0."""

    def __init__(self, total: int, start: int, *, enabled: bool, line_every: int) -> None:
        self.total = total
        self.enabled = enabled
        self.line_every = max(1, line_every)
        self._bar = None
        self._task = None
        self._t0: float | None = None
        self._s0 = start
        tty_env = os.environ.get("WEAKSEG_PROGRESS")
        use_bar = sys.stderr.isatty() if tty_env is None else tty_env == "bar"
        if enabled and use_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.fields[phase]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[speed]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, phase="", loss="-", speed="")
            self._bar.start()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self, step: int, *, loss: float, phase: str) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._t0 is None:  # the rate counts from the end of the first step (start-up excluded)
            self._t0, self._s0 = now, step
        steps_per_s = (step - self._s0) / (now - self._t0) if step > self._s0 else 0.0
        speed = f"{steps_per_s:.2f} it/s" if steps_per_s > 0 else ""
        if self._bar is not None:
            self._bar.update(self._task, completed=step, phase=phase, loss=f"{loss:.4g}", speed=speed)
        elif step % self.line_every == 0 or step == self.total:
            eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("nan")
            self.message(f"step {step}/{self.total} [{phase}] loss {loss:.4g} {speed} eta {_fmt_time(eta)}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
