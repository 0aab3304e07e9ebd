"""Fixtures for the engine tests: the tiny plugin, recipes for it, and a deterministic batch stream."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # tiny_strategy is imported by name (also by subprocesses via PYTHONPATH)
    sys.path.insert(0, str(HERE))

import tiny_strategy  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny convolutions run fastest on one thread; two spinning OpenMP threads on a busy 2-core
    machine made each step ~100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_plugin(plugin_registration):
    """Register the tiny strategy and label source in this process."""
    plugin_registration(tiny_strategy)
    return tiny_strategy


def recipe_dict(store: str | Path, **train) -> dict:
    """A recipe for the tiny strategy; ``train`` overrides keys of ``recipe.train``."""
    return {
        "name": "tiny",
        "description": "engine test recipe",
        "data": {
            "store": str(store),
            "label_source": {"type": "centroids"},
            "crop_size": 32,
            "num_workers": 0,
            "synthetic": {"n_images": 6, "size": 64, "cell_diameter": 12.0, "val_fraction": 0.34, "seed": 0},
        },
        "strategy": {"type": tiny_strategy.STRATEGY, "width": 8, "warmup_steps": 2},
        "train": {
            "steps": 12,
            "batch_size": 2,
            "precision": "fp32",
            "device": "cpu",
            "log_every": 1,
            "eval_every": 0,
            "checkpoint_every": 4,
            "grad_clip": 1.0,
            "optimizer": {"type": "adamw", "lr": 0.01, "schedule": "finetune", "finetune_lr": 0.002},
            **train,
        },
        "eval": {"max_images": 2, "panel": True},
    }


@pytest.fixture
def make_recipe(tiny_plugin, tmp_path):
    """``make_recipe(store=None, **train_overrides)`` -> a validated Recipe for the tiny strategy
    (a small synthetic store, generated on first use, at ``store`` or ``<tmp>/store.zarr``)."""
    from weakseg.recipe import Recipe, structure

    def make(store: str | Path | None = None, **train) -> Recipe:
        return structure(recipe_dict(store or tmp_path / "store.zarr", **train), Recipe)

    return make


def blob_batches(seed: int = 0, batch_size: int = 2, size: int = 32, n_cells: int = 3):
    """``factory(start_step)`` -> endless Batch stream; the batch of step k depends only on (seed, k)."""
    import torch

    from weakseg.components import Batch

    yy, xx = np.mgrid[0:size, 0:size] + 0.5

    def batch_for(step: int) -> Batch:
        rng = np.random.default_rng([seed, step])
        images, points, masks = [], [], []
        for _ in range(batch_size):
            label = np.zeros((size, size), np.int64)
            centres = rng.uniform(6, size - 6, (n_cells, 2))
            for i, (cy, cx) in enumerate(centres, start=1):
                label[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = i
            image = (label > 0).astype(np.float32) + 0.3 * rng.standard_normal((size, size)).astype(np.float32)
            images.append(image[None])
            points.append(torch.from_numpy(centres.astype(np.float32)))
            masks.append(None)
        return Batch(
            image=torch.from_numpy(np.stack(images)),
            points=points,
            masks=masks,
            group=torch.zeros(batch_size, dtype=torch.long),
            image_ids=[f"s{step}-{b}" for b in range(batch_size)],
        )

    def factory(start: int):
        step = start
        while True:
            yield batch_for(step)
            step += 1

    return factory


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow SQLite store (creating one takes seconds; copying it does not)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def output_dir(tmp_path, _empty_mlflow_db, monkeypatch) -> Path:
    """A run output folder holding a fresh, empty ``mlflow.db`` (MLFLOW_TRACKING_URI unset)."""
    import shutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "runs"
    out.mkdir()
    shutil.copyfile(_empty_mlflow_db, out / "mlflow.db")
    return out


@pytest.fixture
def plugin_env(tmp_path_factory) -> dict:
    """Environment for ``python -m weakseg`` subprocesses that see the tiny plugin through a real
    entry point: a ``*.dist-info`` folder declaring ``[weakseg] tiny_test = tiny_strategy``."""
    import os

    site = tmp_path_factory.mktemp("site")
    info = site / "weakseg_tiny_test-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: weakseg-tiny-test\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[weakseg]\ntiny_test = {tiny_strategy.__name__}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEAKSEG_TINY_", "MLFLOW_TRACKING_URI"))}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
    return env


def write_recipe(path: Path, store: str | Path, **train) -> Path:
    """Write the tiny recipe as YAML (for ``weakseg run``)."""
    import yaml

    path.write_text(yaml.safe_dump(recipe_dict(store, **train), sort_keys=False))
    return path


def run_command(cmd: list[str], env: dict, timeout: float = 300):
    """Run ``cmd`` in its own process group; on timeout the whole group (torchrun's workers too) is
    killed, so a hung distributed run cannot outlive the test."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
