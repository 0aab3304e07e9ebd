"""MLflow tracking with an explicit SQLite store, so runs of any strategy line up in ``mlflow ui``.

Where runs go (first match wins):

1. ``recipe.output.tracking_uri``;
2. the ``MLFLOW_TRACKING_URI`` environment variable;
3. ``sqlite:///<output.dir>/mlflow.db``: one store per output folder, shared by every recipe run
   there, with artifacts beside it in ``<output.dir>/mlartifacts/<experiment>/<run id>/``.

Browse them with ``mlflow ui --backend-store-uri sqlite:///<output.dir>/mlflow.db``.

Each recipe name is one experiment (``output.experiment`` renames it). A run records:

- params: the flattened recipe with dotted keys (``model.backbone.type``, ``train.optimizer.lr``),
  the same keys for every strategy, so the compare view lines runs up;
- metrics on one step axis: ``train/<loss>``, ``train/loss`` (the sum), ``train/lr``,
  ``train/images_per_s``, ``train/phase_index``; ``val/AP50``, ``val/mAP``, ``val/dice``... and per
  group ``val/<group>/AP50``...;
- tags: ``weakseg.strategy``, ``weakseg.label_source``, ``weakseg.backbone``, ``weakseg.head``,
  ``weakseg.collaborator``, ``weakseg.version``, ``weakseg.git_commit`` (also
  ``mlflow.source.git.commit``), ``weakseg.strategy_source`` (the plugin distribution), ``weakseg.phase``;
- artifacts: ``recipe.yaml``, ``eval/metrics-step-NNNNNNNN.csv|json`` (per group),
  ``panels/step-NNNNNNNN.png``, and at the end the final snapshot ``checkpoints/step-NNNNNNNN.ckpt``
  with its size + sha256 record.

Only rank 0 tracks; the other ranks use :class:`NullTracker`. MLflow's fluent API keeps global
state and is not thread-safe, so this module drives an explicit :class:`mlflow.MlflowClient`.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: MLflow limits (mlflow/utils/validation.py): params / metrics per batch, characters per param value.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_PARAM_CHARS = 6000
#: Metrics are buffered and written at most this often (a SQLite write costs ~5-50 ms), and on
#: ``flush()`` / ``finish()``; each point keeps its own step and timestamp.
FLUSH_SECONDS = 5.0
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")


def metric_key(key: str) -> str:
    """A name MLflow accepts (letters, digits, ``_ - . / space``); other characters become ``_``."""
    return _BAD_KEY_CHARS.sub("_", key)


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(recipe: Any, output_dir: str | Path) -> str:
    """``recipe.output.tracking_uri`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<output_dir>/mlflow.db``."""
    if recipe.output.tracking_uri:
        return recipe.output.tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return default_tracking_uri(output_dir)


def artifact_root(tracking_uri: str, experiment: str) -> str | None:
    """``file://<db folder>/mlartifacts/<experiment>`` for a SQLite store; ``None`` (server default) else."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    return (db.resolve().parent / "mlartifacts" / metric_key(experiment).replace(" ", "_")).as_uri()


def git_commit() -> str:
    """The commit of the weakseg checkout (``unknown`` when not installed from git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def recipe_tags(recipe: Any) -> dict[str, str]:
    """Filterable tags describing what a recipe trains."""
    from weakseg import __version__

    tags = {
        "weakseg.recipe": recipe.name,
        "weakseg.strategy": recipe.strategy.type,
        "weakseg.label_source": recipe.data.label_source.type,
        "weakseg.backbone": recipe.model.backbone.type if recipe.model is not None else "none",
        "weakseg.head": recipe.model.head.type if recipe.model is not None else "none",
        "weakseg.collaborator": recipe.collaborator.type if recipe.collaborator is not None else "none",
        "weakseg.version": __version__,
    }
    try:
        from weakseg.plugins import registries

        tags["weakseg.strategy_source"] = str(registries()["strategies"].get(recipe.strategy.type).source)
    except Exception:  # noqa: BLE001 - provenance is a nicety, never a reason to fail a run
        pass
    commit = git_commit()
    tags["weakseg.git_commit"] = commit
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    if recipe.description:
        tags["mlflow.note.content"] = recipe.description
    return tags


def stringify_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Param values as MLflow stores them: strings of at most 6000 characters."""
    out = {}
    for key, value in params.items():
        text = value if isinstance(value, str) else str(value)
        if len(text) > MAX_PARAM_CHARS:
            text = text[: MAX_PARAM_CHARS - 3] + "..."
        out[metric_key(key)] = text
    return out


class NullTracker:
    """Tracks nothing: used on ranks other than 0 and when tracking is switched off."""

    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_png(self, image: np.ndarray | str | Path, artifact_file: str) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def info(self) -> dict[str, str | None]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id}


class MlflowTracker(NullTracker):
    """One MLflow run, driven through an explicit client (see the module docstring)."""

    def __init__(self, client: Any, run_id: str, tracking_uri: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self._warned = False
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()

    @classmethod
    def open(
        cls,
        recipe: Any,
        output_dir: str | Path,
        *,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MlflowTracker:
        """Start a run for ``recipe`` (or reopen ``run_id`` when resuming) and log params and tags."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        # MLflow's SQLAlchemy store emits deprecation warnings that mean nothing to a weakseg user
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"sqlalchemy\.")
        uri = resolve_tracking_uri(recipe, output_dir)
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///") :]).resolve().parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                warnings.warn(
                    f"MLflow run {run_id} from the checkpoint is not in {uri}; starting a new run",
                    stacklevel=2,
                )
            else:
                client.update_run(run_id, status="RUNNING")
                tracker = cls(client, run_id, uri, run.info.experiment_id)
                tracker.set_tags({"weakseg.resumed": "true", **(tags or {})})
                return tracker
        name = recipe.output.experiment or recipe.name
        experiment_id = _get_or_create_experiment(client, name, artifact_root(uri, name))
        all_tags = {**recipe_tags(recipe), **(tags or {})}
        run = client.create_run(experiment_id, tags=all_tags, run_name=recipe.name)
        tracker = cls(client, run.info.run_id, uri, experiment_id)
        tracker.log_params(recipe.flat_params())
        return tracker

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Tracking trouble (a locked database, a server hiccup) warns once and never stops training."""
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if not self._warned:
                warnings.warn(f"MLflow: could not {what} for run {self.run_id}: {exc}", stacklevel=3)
                self._warned = True

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in stringify_params(params).items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(metric_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        if len(self._pending) >= METRICS_PER_BATCH or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metric points."""
        items, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        for i in range(0, len(items), METRICS_PER_BATCH):
            self._guard("log metrics", self.client.log_batch, self.run_id, metrics=items[i : i + METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._guard("set tags", self.client.log_batch, self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._guard(f"log artifact {path}", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._guard(f"log {artifact_file}", self.client.log_text, self.run_id, text, artifact_file)

    def log_png(self, image: np.ndarray | str | Path, artifact_file: str) -> None:
        """Log a PNG file, or an (H, W) / (H, W, 3) uint8 array written as PNG, as ``artifact_file``."""
        folder, _, name = artifact_file.rpartition("/")
        if isinstance(image, (str, Path)):
            if Path(image).name == name:
                self.log_artifact(image, folder or None)
                return
            image = np.asarray(_read_png(image))
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            Image.fromarray(np.asarray(image)).save(path)
            self.log_artifact(path, folder or None)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self._guard("close the run", self.client.set_terminated, self.run_id, status=status)


def _read_png(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
