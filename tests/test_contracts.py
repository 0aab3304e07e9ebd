"""Contract tests over EVERY registered component, third-party plugins included.

Each backbone / principal head / collaborator builds and runs forward + backward on a tiny tensor;
each consistency loss gives a finite scalar with gradients when called by its role's protocol; each
strategy turns a tiny batch into finite named losses and predicts ``Instances``; each label source
and importer runs on a tiny fixture. A component added by a plugin is picked up automatically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data.io_fixtures import blob_labels, image_for, usiigaci_like, write_tif

from weakseg.components import Batch, DataSummary
from weakseg.plugins import registries
from weakseg.recipe import BackboneSpec, CollaboratorSpec, HeadSpec, LabelSourceSpec, Recipe, structure

REGS = registries()
SIZE = 64  # a multiple of 32 and big enough for every stride


def names(kind: str) -> list[str]:
    return REGS[kind].names()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def tiny_backbone(in_channels: int = 1):
    return BackboneSpec.of("convnext_atto").build(in_channels=in_channels)


def grads_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]


def tiny_batch(n_images: int = 2, in_channels: int = 1) -> Batch:
    labels = [blob_labels((SIZE, SIZE), n=3, seed=k, radius=6) for k in range(n_images)]
    image = torch.stack([torch.from_numpy(image_for(lab, np.float32, seed=k)).float() for k, lab in enumerate(labels)])
    image = ((image - image.mean()) / image.std())[:, None].repeat(1, in_channels, 1, 1)
    points = []
    for lab in labels:
        ys, xs = [], []
        for i in range(1, lab.max() + 1):
            yy, xx = np.nonzero(lab == i)
            ys.append(yy.mean() + 0.5)
            xs.append(xx.mean() + 0.5)
        points.append(torch.tensor(np.stack([ys, xs], 1), dtype=torch.float32))
    masks = [torch.from_numpy(lab.astype(np.int64)) for lab in labels]
    return Batch(image=image, points=points, masks=masks, group=torch.zeros(n_images, dtype=torch.long),
                 image_ids=[f"img{k}" for k in range(n_images)])


@pytest.mark.parametrize("name", names("backbones"))
def test_backbone_builds_and_runs_forward_backward(name):
    if name == "timm":
        spec = BackboneSpec.of("timm", model_name="convnext_atto")
    else:
        spec = BackboneSpec.of(name)
    model = spec.build(in_channels=2)
    x = torch.randn(1, 2, SIZE, SIZE)
    feats = model(x)
    assert len(feats) == 4
    for stride, f in zip((4, 8, 16, 32), feats, strict=True):
        assert f.shape[0] == 1 and f.shape[-2:] == (SIZE // stride, SIZE // stride), (stride, f.shape)
        assert torch.isfinite(f).all()
    sum(f.float().mean() for f in feats).backward()
    assert grads_of(model), f"backbone {name} produced no gradients"


@pytest.mark.parametrize("name", names("principal_heads"))
def test_principal_head_trains_and_predicts(name):
    head = HeadSpec.of(name).build(backbone=tiny_backbone(1), in_channels=1)
    batch = tiny_batch()
    out = head.forward_train(batch.image)
    loss = head.detection_loss(out, batch.points)
    locations = head.training_locations(out, batch.points)
    assert [len(loc) for loc in locations] == [len(p) for p in batch.points]
    crops = head.segment(out, locations)
    assert crops.logits.shape[0] == sum(len(p) for p in batch.points)  # only real instances, no padding
    total = loss + crops.logits.float().mean()
    assert torch.isfinite(total)
    total.backward()
    assert grads_of(head)
    head.eval()
    with torch.no_grad():
        predictions = head.predict(batch.image[:1])
    assert len(predictions) == 1 and predictions[0].image_shape == (SIZE, SIZE)


@pytest.mark.parametrize("name", names("collaborators"))
def test_collaborator_builds_and_runs_forward_backward(name):
    model = CollaboratorSpec.of(name).build(in_channels=2, n_groups=3)
    x = torch.randn(2, 2, SIZE, SIZE)
    out = model(x, torch.tensor([0, 2]))
    assert out.foreground.shape == out.border.shape == (2, SIZE, SIZE)
    (out.foreground.mean() + out.border.mean()).backward()
    assert grads_of(model)


@pytest.mark.parametrize("name", names("consistency_losses"))
def test_consistency_loss_gives_a_finite_scalar_with_gradients(name):
    from weakseg_cks.losses import crop_geometry

    config = REGS.consistency_losses.create(name)
    loss = config.build()
    role = getattr(loss, "role", None)
    # strategies read the role from the config class without building the loss: both must agree
    assert getattr(type(config), "role", None) == role, (name, role)
    assert role in {"foreground", "instance", "border", "collapse", "mask", "foreground_supervised"}, role
    b, s, m = 2, 16, 3
    logits = torch.randn(m, s, s, requires_grad=True)
    fg = torch.randn(b, SIZE, SIZE, requires_grad=True)
    border = torch.randn(b, SIZE, SIZE, requires_grad=True)
    origins = torch.tensor([[4, 4], [10, 12], [40, 50]])
    geom = crop_geometry(origins, torch.tensor([0, 0, 1]), (SIZE, SIZE), b, s)
    if role == "foreground":
        value = loss(fg, logits, geom, None, None)
    elif role == "instance":
        value = loss(logits, geom, fg, hard=False, images=None)
    elif role == "border":
        value = loss(logits, geom, border, None)
    elif role == "collapse":
        value = loss(logits, geom, None)
    else:
        pytest.skip(f"role {role!r} is called by the supervised strategies, covered by their contract test")
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in (logits, fg, border))


def strategy_recipe(name: str) -> Recipe:
    return structure(
        {
            "name": f"contract-{name}",
            "data": {"store": "unused.zarr", "crop_size": SIZE},
            "model": {"backbone": {"type": "convnext_atto"}, "head": {"type": "lacss"}},
            "collaborator": {"type": "cks"},
            "strategy": {"type": name},
            "train": {"steps": 10},
        },
        Recipe,
    )


@pytest.mark.parametrize("name", names("strategies"))
def test_strategy_check_accepts_a_complete_recipe(name):
    from weakseg.recipe import check_recipe, recipe_problems

    recipe = strategy_recipe(name)
    problems = recipe_problems(recipe)
    assert isinstance(problems, list) and all(isinstance(k, str) and isinstance(m, str) for k, m in problems)
    assert problems == [], problems
    assert check_recipe(recipe) is recipe


@pytest.mark.parametrize("name", names("strategies"))
def test_strategy_turns_a_batch_into_finite_losses_and_predicts(name):
    from weakseg.build import build_strategy
    from weakseg.nn.instances import Instances

    summary = DataSummary(in_channels=1, n_groups=1, group_names=("all",), has_masks=True)
    strategy = build_strategy(strategy_recipe(name), summary)
    batch = tiny_batch()
    if strategy.trainable:
        losses = strategy(batch, 0)
        assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
        assert grads_of(strategy), f"strategy {name} trained nothing"
    else:
        assert not any(p.requires_grad for p in strategy.parameters())
    strategy.eval()
    with torch.no_grad():
        predictions = strategy.principal().predict(batch.image[:1])
    assert len(predictions) == 1 and isinstance(predictions[0], Instances)
    label = predictions[0].to_label_image(score_threshold=0.0)
    assert label.shape == (SIZE, SIZE)


@pytest.mark.parametrize("name", names("label_sources"))
def test_label_source_makes_points_on_a_tiny_image(name):
    rng = np.random.default_rng(0)
    labels = blob_labels((SIZE, SIZE), n=4, seed=3, radius=6)
    image = image_for(labels, np.uint16)
    nuclei = image.astype(np.float32)
    options: dict = {}
    entry = REGS.label_sources.get(name)
    try:
        source = LabelSourceSpec.of(name, **options).build()
    except Exception as exc:  # noqa: BLE001 - a source needing mandatory options must say which
        pytest.skip(f"label source {name!r} needs options to build: {exc}")
    given = np.array([[10.5, 10.5], [40.5, 30.5]], np.float32)
    pts = source.points(image=image[None], labels=labels, points=given, nuclei=nuclei, rng=rng)
    pts = np.asarray(pts)
    assert pts.ndim == 2 and pts.shape[1] == 2, (entry.name, pts.shape)
    assert len(pts) > 0
    assert (pts >= 0).all() and (pts[:, 0] <= SIZE).all() and (pts[:, 1] <= SIZE).all()


def _folder_fixture(root: Path) -> dict:
    usiigaci_like(root, n_sets=2)
    return {}


def _points_fixture(root: Path) -> dict:
    write_tif(root / "a.tif", np.zeros((40, 50), np.uint16))
    (root / "a.csv").write_text("y,x\n10,20\n30,5\n")
    return {}


def _a431_fixture(root: Path) -> dict:
    labels = blob_labels((SIZE, SIZE), n=3, seed=1)
    write_tif(root / "img_0.tif", image_for(labels))
    write_tif(root / "nuclei" / "img_0.tif", image_for(labels, seed=5))
    return {"images": "img_*.tif", "nuclei": "nuclei/{stem}.tif"}


def _coco_fixture(root: Path) -> dict:
    from data.test_importers import _coco_files

    _coco_files(root)
    return {}


def _livecell_fixture(root: Path) -> dict:
    from data.test_importers import _coco_files

    _coco_files(root, "annotations/LIVECell/livecell_coco_train.json", "images/livecell_train_val_images")
    return {"parts": ("train",), "download": False}


IMPORTER_FIXTURES = {
    "folder": _folder_fixture,
    "points": _points_fixture,
    "a431": _a431_fixture,
    "coco": _coco_fixture,
    "livecell": _livecell_fixture,
}


@pytest.mark.parametrize("name", names("importers"))
def test_importer_scans_a_tiny_fixture(name, tmp_path):
    from weakseg.data.ingest import build_importer

    if name not in IMPORTER_FIXTURES:
        pytest.skip(f"no tiny fixture known for third-party importer {name!r}")
    options = IMPORTER_FIXTURES[name](tmp_path)
    _spec, importer = build_importer(name, options)
    records = list(importer.scan(tmp_path))
    assert records, f"importer {name} found nothing"
    for record in records:
        image = np.asarray(record.load_image())
        assert image.ndim == 3 and image.shape[0] >= 1
        if record.load_labels is not None:
            labels = np.asarray(record.load_labels())
            assert labels.shape == image.shape[1:]
