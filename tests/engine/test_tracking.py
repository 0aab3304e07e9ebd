"""MLflow tracking against a real SQLite store, queried back with MlflowClient."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blob_batches

from weakseg.components import DataSummary
from weakseg.engine.tracking import MlflowTracker, artifact_root, resolve_tracking_uri


def test_tracking_uri_precedence(make_recipe, tmp_path, monkeypatch):
    recipe = make_recipe()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(recipe, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert resolve_tracking_uri(recipe, tmp_path) == "sqlite:////elsewhere/x.db"
    pinned = recipe.evolve(output=recipe.output.__class__(dir="runs", tracking_uri="http://mlflow:5000"))
    assert resolve_tracking_uri(pinned, tmp_path) == "http://mlflow:5000"
    assert (
        artifact_root("sqlite:////data/runs/mlflow.db", "cks livecell") == "file:///data/runs/mlartifacts/cks_livecell"
    )
    assert artifact_root("http://mlflow:5000", "x") is None


def test_run_is_written_to_sqlite_with_params_metrics_tags_artifacts(make_recipe, output_dir):
    from mlflow import MlflowClient

    from weakseg.build import build_strategy
    from weakseg.engine.trainer import Trainer

    tmp_path = output_dir
    recipe = make_recipe(steps=6, log_every=2, checkpoint_every=0)
    tracker = MlflowTracker.open(recipe, tmp_path, tags={"weakseg.world_size": "1"})
    summary = DataSummary(in_channels=1)
    trainer = Trainer(
        build_strategy(recipe, summary), recipe, summary, batches=blob_batches(), tracker=tracker, progress=False
    )
    trainer.fit()
    tracker.log_png(np.zeros((8, 8, 3), np.uint8), "panels/step-00000006.png")
    tracker.log_text(recipe.to_yaml(), "recipe.yaml")
    tracker.finish()

    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    assert exp.artifact_location == (tmp_path / "mlartifacts" / "tiny").as_uri()
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == tracker.run_id and run.info.status == "FINISHED"
    params = run.data.params
    flat = recipe.flat_params()
    assert set(params) == set(flat)
    assert params["train.optimizer.lr"] == "0.01" and params["strategy.type"] == "tiny_test"
    assert params["train.steps"] == "6" and params["model"] == "None"
    tags = run.data.tags
    assert tags["weakseg.strategy"] == "tiny_test"
    assert tags["weakseg.label_source"] == "centroids"
    assert tags["weakseg.backbone"] == "none"
    assert tags["weakseg.version"]
    assert tags["weakseg.git_commit"]
    assert tags["weakseg.phase"] == "main"
    assert tags["mlflow.note.content"] == "engine test recipe"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4, 6]
    assert all(np.isfinite(m.value) for m in history)
    for key in ("train/bce", "train/lr", "train/grad_norm", "train/images_per_s", "train/phase_index"):
        assert client.get_metric_history(run.info.run_id, key), key
    phase = client.get_metric_history(run.info.run_id, "train/phase_index")
    assert [m.value for m in phase] == [0.0, 1.0, 1.0]  # step 2 ends the warm-up (steps 0, 1)
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"panels", "recipe.yaml"} <= files
    assert [f.path for f in client.list_artifacts(run.info.run_id, "panels")] == ["panels/step-00000006.png"]


def test_reopening_a_run_continues_it(make_recipe, output_dir):
    from mlflow import MlflowClient

    tmp_path = output_dir
    recipe = make_recipe()
    first = MlflowTracker.open(recipe, tmp_path)
    first.log_metrics({"train/loss": 1.0}, 1)
    first.finish("KILLED")
    again = MlflowTracker.open(recipe, tmp_path, run_id=first.run_id)
    assert again.run_id == first.run_id
    client = MlflowClient(tracking_uri=again.tracking_uri)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    again.log_metrics({"train/loss": 0.5}, 2)
    again.finish()
    assert [m.step for m in client.get_metric_history(first.run_id, "train/loss")] == [1, 2]
    assert len(client.search_runs([again.experiment_id])) == 1
    assert client.get_run(first.run_id).data.tags["weakseg.resumed"] == "true"


@pytest.mark.parametrize("value", ["x" * 7000])
def test_long_param_values_are_truncated(value):
    from weakseg.engine.tracking import MAX_PARAM_CHARS, stringify_params

    out = stringify_params({"a.b": value, "group_scales.A 172+": 1.5, "none": None})
    assert len(out["a.b"]) == MAX_PARAM_CHARS and out["a.b"].endswith("...")
    assert out["group_scales.A 172_"] == "1.5" and out["none"] == "None"
