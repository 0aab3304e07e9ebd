"""Bad recipes through the real command line: exit code 2, the key path or file named, no traceback.

Each recipe here passes the schema but cannot be trained (or cannot be read); the point is that
``weakseg recipes check`` and ``weakseg run`` say so before any data is prepared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "recipes" / "demo.yaml"


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weakseg", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def child_of_demo(tmp_path: Path, body: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"extends: {DEMO}\n{body}")
    return path


def test_cks_recipe_without_a_model_exits_2_naming_recipe_model(tmp_path):
    path = child_of_demo(tmp_path, "model: null\n")
    proc = run_cli("recipes", "check", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"error: {path}:" in proc.stderr
    assert "recipe.model: strategy 'cks' trains a principal model" in proc.stderr
    assert "Traceback" not in proc.stderr and "ok:" not in proc.stdout


def test_consistency_loss_of_the_wrong_role_exits_2_naming_the_key(tmp_path):
    path = child_of_demo(tmp_path, "strategy: {consistency: {type: collapse}}\n")
    proc = run_cli("recipes", "check", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "recipe.strategy.consistency: consistency loss 'collapse' is a collapse loss, "
        "but this key takes a foreground loss (one of: cross_entropy, linear)"
    ) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_recipe_that_is_not_utf8_exits_2_naming_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: d\xe9mo\ndescription: caf\xe9\n")
    proc = run_cli("recipes", "check", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}: the recipe is not UTF-8 text" in proc.stderr
    assert "UnicodeDecodeError" not in proc.stderr and "Traceback" not in proc.stderr


def test_run_refuses_an_untrainable_recipe_before_preparing_the_store(tmp_path):
    store = tmp_path / "demo.zarr"
    path = child_of_demo(tmp_path, f"model: null\ndata: {{store: {store}}}\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "recipe.model:" in proc.stderr and "Traceback" not in proc.stderr
    assert not store.exists() and not (tmp_path / "runs").exists()


def test_missing_store_is_a_warning_naming_the_path_and_exits_0(tmp_path):
    missing = tmp_path / "nowhere.zarr"
    path = child_of_demo(tmp_path, f"data: {{store: {missing}, synthetic: null}}\n")
    proc = run_cli("recipes", "check", str(path))
    assert proc.returncode == 0, proc.stderr
    assert f"ok: {path}" in proc.stdout
    assert f"warning: {path}: recipe.data.store: {missing}: store not found" in proc.stderr
    # a synthetic store is made by the run itself: no warning for it
    synthetic = child_of_demo(tmp_path, f"data: {{store: {missing}}}\n", name="synthetic.yaml")
    proc = run_cli("recipes", "check", str(synthetic))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert not missing.exists()


def test_recipe_checks_do_not_import_torch(tmp_path):
    path = child_of_demo(tmp_path, "model: null\nstrategy: {instance_loss: {type: linear}}\n")
    code = (
        "import sys\n"
        "from weakseg.errors import RecipeError\n"
        "from weakseg.recipe import load_recipe\n"
        "try:\n"
        f"    load_recipe({str(path)!r})\n"
        "except RecipeError as exc:\n"
        "    print(exc)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "recipe.model:" in proc.stdout and "recipe.strategy.instance_loss:" in proc.stdout
    assert "torch imported: False" in proc.stdout


def test_without_the_cks_plugin_a_model_needs_an_explicit_head(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\ndata: {store: s.zarr, synthetic: {}}\nmodel: {backbone: {type: convnext_atto}}\n"
        "strategy: {type: nishimura}\n"
    )
    proc = run_cli("recipes", "check", str(path), env={"WEAKSEG_DISABLE_PLUGINS": "cks"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "recipe.model.head: required key 'head' is missing" in proc.stderr
    assert "lacss" not in proc.stderr and "Traceback" not in proc.stderr
    path.write_text("name: r\ndata: {store: s.zarr, synthetic: {}}\nstrategy: {type: nishimura}\n")
    proc = run_cli("recipes", "check", str(path), env={"WEAKSEG_DISABLE_PLUGINS": "cks"})
    assert proc.returncode == 0, proc.stderr
