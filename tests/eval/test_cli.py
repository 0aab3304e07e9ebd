"""``weakseg evaluate`` on a real checkpoint (training-free seeded watershed) and a synthetic store."""

from __future__ import annotations

import csv
import json

import pytest

from weakseg.cli import main
from weakseg.eval.metrics import METRIC_KEYS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from weakseg.build import build_strategy
    from weakseg.checkpoint import make_payload, save_checkpoint
    from weakseg.data.dataset import data_summary
    from weakseg.data.prepare import ensure_store
    from weakseg.recipe import Recipe, structure

    root = tmp_path_factory.mktemp("evalcli")
    recipe = structure(
        {
            "name": "ws",
            "data": {
                "store": str(root / "store.zarr"),
                "synthetic": {"n_images": 4, "size": 96, "modality": "fluorescence", "cell_diameter": 16},
                "num_workers": 0,
            },
            "strategy": {"type": "seeded-watershed", "modality": "fluorescence"},
        },
        Recipe,
    )
    ensure_store(recipe.data)
    summary = data_summary(recipe.data)
    strategy = build_strategy(recipe, summary)
    payload = make_payload(
        recipe_yaml=recipe.to_yaml(), data_summary=summary, state_dict=strategy.state_dict(), step=7
    )
    path = save_checkpoint(payload, root / "ws.ckpt")
    return path, root / "store.zarr", recipe


def test_evaluate_json(checkpoint, capsys, tmp_path):
    ckpt, store, _ = checkpoint
    code = main(["evaluate", str(ckpt), str(store), "--split", "val", "--json", "--device", "cpu",
                 "--csv", str(tmp_path / "m.csv"), "--panel", str(tmp_path / "p.png")])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["split"] == "val" and doc["store"] == str(store)
    assert set(doc["overall"]) == set(METRIC_KEYS)
    assert doc["overall"]["n_images"] >= 1 and doc["overall"]["n_gt"] > 0
    for group in doc["groups"].values():
        for key in ("AP50", "AP75", "mAP", "coco_AP", "dice", "F1"):
            assert group[key] is None or 0.0 <= group[key] <= 1.0
    # The watershed finds cells: better than nothing, worse than perfect.
    assert 0.0 < doc["overall"]["dice"] < 1.0
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert rows[0]["group"] == "all" and float(rows[0]["dice"]) == pytest.approx(doc["overall"]["dice"])
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_table_and_max_images(checkpoint, capsys):
    ckpt, store, _ = checkpoint
    assert main(["evaluate", str(ckpt), str(store), "--split", "train", "--max-images", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "AP50" in out and "coco_AP" in out and "step 7" in out and "seeded-watershed" in out


def test_evaluate_user_errors(checkpoint, capsys, tmp_path):
    ckpt, store, _ = checkpoint
    assert main(["evaluate", str(ckpt), str(tmp_path / "nope.zarr"), "--device", "cpu"]) == 2
    assert "nope.zarr" in capsys.readouterr().err
    assert main(["evaluate", str(ckpt), str(store), "--split", "nosuchsplit", "--device", "cpu"]) == 2
    assert "nosuchsplit" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.ckpt"), str(store), "--device", "cpu"]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    assert main(["evaluate", str(ckpt), str(store), "--split", "val", "--max-overlap", "-1", "--device", "cpu"]) == 2
    assert "max_overlap must be in [0, 1]" in capsys.readouterr().err
