"""The command line: recipes list/check, plugins listing, user errors exit 2 without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from weakseg.cli import main

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "weakseg", *args], capture_output=True, text=True, cwd=REPO)


def test_plugins_json_lists_every_registry_with_provenance():
    proc = run_cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {
        "backbones",
        "principal_heads",
        "collaborators",
        "consistency_losses",
        "label_sources",
        "strategies",
        "importers",
    }
    for kind, entries in data.items():
        assert entries, f"registry {kind} is empty"
        for entry in entries:
            assert set(entry) == {"name", "source", "description"}
            assert entry["source"] and entry["description"], entry


def test_plugins_table_mentions_sources(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "weakseg_cks.plugin" in out and "strategies" in out


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_checks_ok(recipe, capsys):
    assert main(["recipes", "check", str(recipe)]) == 0, capsys.readouterr().err


def test_recipes_list_shows_shipped_recipes(capsys):
    assert main(["recipes", "list", "--json"]) == 0
    listed = {Path(r["path"]).name for r in json.loads(capsys.readouterr().out)}
    assert {p.name for p in SHIPPED} <= listed


def test_check_misspelled_key_and_unknown_component_exit_2_with_path_and_hint(tmp_path):
    demo = REPO / "recipes" / "demo.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {demo}\ntrain: {{stesp: 3}}\nmodel: {{backbone: {{type: convnext_atot}}}}\n")
    proc = run_cli("recipes", "check", str(bad))
    assert proc.returncode == 2
    assert "recipe.train: unknown key 'stesp'; did you mean 'steps'?" in proc.stderr
    assert "recipe.model.backbone: unknown backbone 'convnext_atot'; did you mean 'convnext_atto'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_user_error_in_run_is_one_line_exit_2(tmp_path):
    proc = run_cli("run", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2
    assert "recipe file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_disabling_the_core_data_plugin_is_refused_with_a_message():
    import os

    env = {**os.environ, "WEAKSEG_DISABLE_PLUGINS": "data"}
    proc = subprocess.run(
        [sys.executable, "-m", "weakseg", "plugins", "--json"], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "'data' is part of weakseg's core" in proc.stderr and "cannot be disabled" in proc.stderr
    data = json.loads(proc.stdout)
    assert "centroids" in {e["name"] for e in data["label_sources"]}
    assert "folder" in {e["name"] for e in data["importers"]}
