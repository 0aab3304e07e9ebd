"""The example third-party plugin: pip-installed, listed by `weakseg plugins`, usable from a recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "weakseg-example-plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """pip-install the example distribution into a private folder (no network: no deps, no build isolation)."""
    target = tmp_path_factory.mktemp("example-site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("weakseg_example_plugin-*.dist-info")), "no dist-info written"
    return target


def run_with(site: Path | None, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "weakseg", *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_plugins_lists_the_example_with_its_distribution(installed_example):
    before = json.loads(run_with(None, "plugins", "--json").stdout)
    assert "bbox-centers" not in {e["name"] for e in before["label_sources"]}
    proc = run_with(installed_example, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    entry = {e["name"]: e for e in json.loads(proc.stdout)["label_sources"]}["bbox-centers"]
    assert entry["source"] == "weakseg-example-plugin 0.1.0 (weakseg_example.plugin)"
    assert entry["description"].startswith("Points at the centre of each cell's bounding box")


def test_a_recipe_can_use_the_example_component(installed_example, tmp_path):
    recipe = tmp_path / "with_plugin.yaml"
    recipe.write_text(
        f"extends: {REPO / 'recipes' / 'demo.yaml'}\nname: demo-bbox\n"
        "data: {label_source: {type: bbox-centers, jitter: 1.5}}\n"
    )
    proc = run_with(installed_example, "recipes", "check", str(recipe))
    assert proc.returncode == 0, proc.stderr
    # Without the plugin installed the same recipe is refused with the registry's message.
    proc = run_with(None, "recipes", "check", str(recipe))
    assert proc.returncode == 2 and "unknown label source 'bbox-centers'" in proc.stderr


def test_the_example_label_source_makes_points_inside_cells(installed_example, monkeypatch):
    import numpy as np

    monkeypatch.syspath_prepend(str(installed_example))
    from weakseg import plugins

    plugins.reset()
    try:
        source = plugins.registries().label_sources.create("bbox-centers").build()
        labels = np.zeros((40, 40), np.int32)
        labels[2:12, 4:10] = 1
        labels[20:31, 20:35] = 2
        pts = source.points(image=None, labels=labels, points=None, nuclei=None, rng=np.random.default_rng(0))
        np.testing.assert_allclose(pts, [[7.0, 7.0], [25.5, 27.5]])
        assert [labels[int(y), int(x)] for y, x in pts] == [1, 2]
    finally:
        plugins.reset()
