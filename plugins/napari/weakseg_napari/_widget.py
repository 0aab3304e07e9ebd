"""The dock widget: predict the current image, correct the detected centres, train or retrain.

1. *Model*: a run folder or ``.ckpt`` (``weakseg run`` output). *Predict* segments the current image
   layer in the background (progress per tile) and adds ``<image> cells`` (labels) and
   ``<image> points`` (the detected centres, editable, with a ``score`` feature).
2. Correct: add a point inside every missed cell, delete false detections (napari's points tools).
   Any points layer trains: it belongs to the image named in its metadata, or ``<image> ...`` by
   name, or the only image of the viewer.
3. *Train* writes every image with points to a work folder, imports it with the points importer and
   runs the chosen recipe there (in the background; progress per step; MLflow run id when done); the
   new model becomes the current one. *Retrain* does the same but starts the principal from the
   current model (``model.init_from``), so the corrected images are added to what it already knows.

The work lives in :mod:`weakseg.inference.correct`, which scripts the same loop without a GUI; the
widget runs it in child processes (:mod:`weakseg_napari._jobs`, started from napari worker threads),
so that torch never shares a process with napari's OpenGL.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)


class _Signals(QObject):
    """Progress from worker threads, delivered in the GUI thread (queued connection)."""

    progress = Signal(int, int)


def _path_row(edit: QLineEdit, pick: Any) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    button = QPushButton("...")
    button.setMaximumWidth(32)
    button.clicked.connect(pick)
    layout.addWidget(edit)
    layout.addWidget(button)
    return row


def _default_recipe() -> str:
    """The CPU Kromp recipe of a checkout, when weakseg runs from one."""
    import weakseg

    path = Path(weakseg.__file__).resolve().parent.parent / "recipes" / "cks_kromp_cpu.yaml"
    return str(path) if path.is_file() else ""


class WeaksegWidget(QWidget):
    """Predict, correct and retrain weakseg models on the layers of a napari viewer."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.last_run: dict[str, Any] | None = None  #: run_dir, checkpoint, run_id, ... of the newest training
        self.worker: Any = None
        self.work_dir: Path | None = None
        self.rounds = 0
        self._signals = _Signals()
        self._signals.progress.connect(self._on_progress)
        self._build()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("run folder or .ckpt")
        self.predict_button = QPushButton("Predict current image")
        self.predict_button.clicked.connect(self.predict)
        self.recipe = QLineEdit(_default_recipe())
        self.recipe.setPlaceholderText("recipe YAML")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(300)
        self.output = QLineEdit()
        self.output.setPlaceholderText("work folder (default: a temporary one)")
        self.train_button = QPushButton("Train from points")
        self.train_button.clicked.connect(lambda: self.train(retrain=False))
        self.retrain_button = QPushButton("Retrain from current model")
        self.retrain_button.clicked.connect(lambda: self.train(retrain=True))
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("choose a model or a recipe")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("model", _path_row(self.checkpoint, self._pick_checkpoint))
        form.addRow("recipe", _path_row(self.recipe, self._pick_recipe))
        form.addRow("steps", self.steps)
        form.addRow("work folder", self.output)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for w in (self.predict_button, self.train_button, self.retrain_button, self.progress, self.status):
            layout.addWidget(w)
        layout.addStretch(1)

    def _pick_checkpoint(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "weakseg run folder")
        if folder:
            self.checkpoint.setText(folder)

    def _pick_recipe(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, "weakseg recipe", filter="YAML (*.yaml *.yml)")
        if file:
            self.recipe.setText(file)

    # ------------------------------------------------------------------ helpers

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _busy(self, busy: bool) -> None:
        for w in (self.predict_button, self.train_button, self.retrain_button):
            w.setEnabled(not busy)

    def _failed(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._busy(False)
        self.worker = None
        self.status.setText(f"error: {exc}")
        show_error(f"weakseg: {exc}")

    def _start(self, func: Any, done: Any) -> Any:
        from napari.qt.threading import create_worker

        self._busy(True)
        worker = create_worker(func)
        worker.returned.connect(done)
        worker.errored.connect(self._failed)
        self.worker = worker
        worker.start()
        return worker

    def current_image(self) -> Any:
        """The selected image layer, else the newest one; None when the viewer has no image."""
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        return images[-1] if images else None

    def _image_array(self, layer: Any) -> Any:
        import numpy as np

        from weakseg.inference.correct import as_channel_first

        data = np.asarray(layer.data)
        return np.moveaxis(data, -1, 0) if layer.rgb else as_channel_first(data, layer.name)

    # ------------------------------------------------------------------ prediction

    def _work(self) -> Path:
        """The work folder: the chosen one, else a temporary folder kept while napari runs."""
        if self.work_dir is None:
            chosen = self.output.text().strip()
            self.work_dir = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="weakseg-napari-"))
        return self.work_dir

    def predict(self) -> Any:
        """Segment the current image in a worker thread; returns the worker (None when nothing to do)."""
        import numpy as np

        from weakseg.inference.correct import Detections
        from weakseg_napari._jobs import run_job

        layer = self.current_image()
        path = self.checkpoint.text().strip()
        if layer is None or not path:
            self.status.setText("open an image and choose a model (a run folder or .ckpt) first")
            return None
        image = self._image_array(layer)
        name = layer.name
        job = self._work() / "predict"
        self.status.setText(f"predicting {name} ...")

        def run() -> Any:
            job.mkdir(parents=True, exist_ok=True)
            np.save(job / "image.npy", image)
            spec = {"checkpoint": path, "image": str(job / "image.npy"), "output": str(job / "found.npz")}
            run_job("predict", spec, job, self._signals.progress.emit)
            with np.load(job / "found.npz") as found:
                return Detections(labels=found["labels"], points=found["points"], scores=found["scores"])

        return self._start(run, lambda found: self._show_detections(name, found))

    def _show_detections(self, name: str, found: Any) -> None:
        from weakseg.inference.correct import to_napari

        self._busy(False)
        self.worker = None
        cells = f"{name} cells"
        if cells in self.viewer.layers:
            self.viewer.layers[cells].data = found.labels
        else:
            self.viewer.add_labels(found.labels, name=cells, opacity=0.4)
        points = f"{name} points"
        if points in self.viewer.layers:
            self.viewer.layers.remove(points)
        self.viewer.add_points(
            to_napari(found.points),
            name=points,
            features={"score": found.scores},
            size=6,
            face_color="#ffdd00",
            metadata={"weakseg": {"image": name, "source": "prediction"}},
        )
        self.status.setText(
            f"{name}: {len(found.scores)} cells; correct the points (add missed cells, delete false ones), "
            "then retrain"
        )

    # ------------------------------------------------------------------ training

    def _image_for(self, points: Any, images: dict[str, Any]) -> Any:
        named = (points.metadata.get("weakseg") or {}).get("image")
        if named in images:
            return images[named]
        for name, layer in images.items():
            if points.name.startswith(f"{name} "):
                return layer
        return next(iter(images.values())) if len(images) == 1 else None

    def training_items(self) -> list[tuple[str, Any, Any]]:
        """(image name, image (C, H, W), points in weakseg's convention) for every non-empty points layer."""
        from napari.layers import Image, Points

        from weakseg.inference.correct import from_napari

        images = {layer.name: layer for layer in self.viewer.layers if isinstance(layer, Image)}
        items: dict[str, tuple[str, Any, Any]] = {}
        for layer in self.viewer.layers:
            if not isinstance(layer, Points) or len(layer.data) == 0:
                continue
            image = self._image_for(layer, images)
            if image is not None:  # the newest points layer of an image wins
                items[image.name] = (image.name, self._image_array(image), from_napari(layer.data))
        return list(items.values())

    def train(self, retrain: bool = False) -> Any:
        """Train the recipe from the viewer's points (from the current model with ``retrain``); the worker."""
        from weakseg.inference.correct import write_training_folder
        from weakseg_napari._jobs import run_job

        recipe = self.recipe.text().strip()
        init = self.checkpoint.text().strip() if retrain else None
        items = self.training_items()
        problem = (
            "choose a recipe YAML first" if not recipe else
            "choose the model to start from first" if retrain and not init else
            "add a points layer with one point per cell to an image first" if not items else None
        )
        if problem:
            self.status.setText(problem)
            return None
        self.rounds += 1
        work, name, steps = self._work() / f"round-{self.rounds}", f"napari-{self.rounds}", self.steps.value()
        self.status.setText(f"training {name} on {len(items)} image(s) for {steps} steps ...")
        spec = {
            "recipe": str(Path(recipe).resolve()),
            "folder": str(work / "points"),
            "work_dir": str(work),
            "init_from": init,
            "name": name,
            "steps": steps,
            "output": str(self._work() / "runs"),
        }

        def run() -> Any:
            write_training_folder(work / "points", items)
            return run_job("train", spec, work, self._signals.progress.emit)

        return self._start(run, self._trained)

    def _trained(self, result: dict[str, Any]) -> None:
        self._busy(False)
        self.worker = None
        self.last_run = result
        self.checkpoint.setText(result["checkpoint"])  # the new model is the one Predict uses
        self.status.setText(
            f"trained {result['step']} steps in {result['seconds']:.0f} s; MLflow run {result['run_id']} "
            f"({result['tracking_uri']}); the new model is current"
        )
