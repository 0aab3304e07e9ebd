"""Prediction and training for the dock widget, each in a child Python process.

napari draws with OpenGL; with Mesa's software or AMD drivers that loads an LLVM into the process,
and torch's compiler stack (triton, pulled in by torchvision) loading its own LLVM afterwards crashes
the process. A child process keeps models and napari apart, leaves the viewer responsive, and lets a
training run be stopped without touching napari.

Protocol: ``python -m weakseg_napari._jobs predict|train SPEC.json``; the child prints one JSON
object per line on stdout: ``{"progress": [done, total]}`` while it works, then ``{"result": ...}``,
or ``{"error": message}`` (exit code 2) for a user error. :func:`run_job` starts it from a worker
thread and hands progress to a callback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.errors import WeaksegError


def _emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def _predict(spec: dict[str, Any]) -> dict[str, Any]:
    import weakseg
    from weakseg.inference.correct import detect

    predictor = weakseg.load(spec["checkpoint"], device=spec.get("device", "auto"))
    found = detect(predictor, np.load(spec["image"]), progress=lambda d, t: _emit({"progress": [d, t]}))
    np.savez(spec["output"], labels=found.labels, points=found.points, scores=found.scores)
    return {"output": spec["output"], "cells": len(found.scores)}


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    from weakseg.inference.correct import train_from_folder

    def step(trainer: Any, done: int, _losses: Any) -> None:
        _emit({"progress": [done, trainer.train_cfg.steps]})

    result = train_from_folder(
        spec["recipe"],
        spec["folder"],
        spec["work_dir"],
        init_from=spec.get("init_from"),
        name=spec.get("name"),
        steps=spec.get("steps"),
        output=spec.get("output"),
        callbacks=[step],
    )
    return {
        "run_dir": str(result.run_dir),
        "checkpoint": str(result.checkpoint),
        "step": result.step,
        "seconds": result.seconds,
        "run_id": result.run_id,
        "tracking_uri": result.tracking_uri,
        "metrics": result.metrics,
    }


JOBS = {"predict": _predict, "train": _train}


def main(argv: list[str] | None = None) -> int:
    """Run one job: ``predict|train SPEC.json``."""
    kind, spec_file = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(spec_file).read_text())
    try:
        _emit({"result": JOBS[kind](spec)})
    except WeaksegError as exc:
        _emit({"error": str(exc)})
        return 2
    return 0


def _child_env() -> dict[str, str]:
    """The parent's environment, with the folders holding weakseg and this plugin on PYTHONPATH."""
    import weakseg

    roots = [str(Path(weakseg.__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1])]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*roots, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    return env


def run_job(
    kind: str, spec: dict[str, Any], work: Path, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Run a job in a child process and return its result; a user error raises WeaksegError, a crash
    RuntimeError with the end of the child's stderr."""
    work.mkdir(parents=True, exist_ok=True)
    spec_file = work / f"{kind}.json"
    spec_file.write_text(json.dumps(spec))
    outcome: dict[str, Any] = {}
    log_file = work / f"{kind}.log"
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "weakseg_napari._jobs", kind, str(spec_file)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=_child_env(),
        )
        for line in proc.stdout or ():
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a library printing to stdout
            if "progress" in message and progress is not None:
                progress(*message["progress"])
            outcome.update({k: v for k, v in message.items() if k != "progress"})
        code = proc.wait()
    if "error" in outcome:
        raise WeaksegError(outcome["error"])
    if code != 0 or "result" not in outcome:
        tail = log_file.read_text()[-2000:]
        raise RuntimeError(f"weakseg {kind} stopped (exit code {code}); its log {log_file} ends:\n{tail}")
    return outcome["result"]


if __name__ == "__main__":
    sys.exit(main())
