"""Checkpoints: one self-describing file that can rebuild, resume or serve a model.

Used by training (:mod:`weakseg.engine`), evaluation and prediction alike, so it depends on none of
them. A checkpoint is ``torch.save`` of a plain dict of tensors and primitives, so it loads with
``torch.load(weights_only=True)`` (no pickled classes, nothing executed on load)::

    format        "weakseg-checkpoint/1"
    weakseg       the writing weakseg version
    recipe        the resolved recipe as YAML text (rebuilds the strategy through the registries)
    data_summary  the DataSummary fields (in_channels, n_groups, group_names, has_masks)
    state_dict    strategy.state_dict()
    step          number of finished optimisation steps
    phase         the strategy phase at ``step``
    optimizer     optimizer.state_dict()           (absent for training-free strategies)
    scheduler     lr scheduler state_dict()        (idem)
    rng           one entry per rank: python, numpy, torch (and CUDA) generator states
    data          data position: {"step", "seed", "world_size"}; the loader restarts at ``step``
    tracking      {"run_id", "tracking_uri", "experiment_id"} of the MLflow run to continue
    input_scale   {"group_scales", "cell_diameter", "pixel_size"}: how training images were resized,
                  so that prediction on new images resizes them the same way (absent before 0.2)
    size_model    optional: a regression of an image's cell diameter on the principal's features
                  (``weakseg.inference.sizing``), added after training or by ``weakseg size-model``

``recipe``, ``data_summary``, ``state_dict`` and ``step`` are required; a file without them is
refused with a :class:`CheckpointError`. On disk (:mod:`weakseg.checkpoint.files`) each file is
written atomically with its size and sha256 recorded beside it and checked again when read; a
run's folder (:mod:`weakseg.checkpoint.folder`) keeps step snapshots and a ``last.ckpt`` pointer
to the newest.
"""

from weakseg.checkpoint.files import LAST, CheckpointError, FileRecord, save_checkpoint, verify_file
from weakseg.checkpoint.folder import CheckpointDir, Found
from weakseg.checkpoint.load import Checkpoint, checkpoint_from_file, load_checkpoint, load_strategy
from weakseg.checkpoint.payload import (
    FORMAT,
    make_payload,
    rng_state,
    seed_everything,
    set_rng_state,
    summary_from_dict,
    summary_to_dict,
)

__all__ = [
    "FORMAT",
    "LAST",
    "Checkpoint",
    "CheckpointDir",
    "CheckpointError",
    "FileRecord",
    "Found",
    "checkpoint_from_file",
    "load_checkpoint",
    "load_strategy",
    "make_payload",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "summary_from_dict",
    "summary_to_dict",
    "verify_file",
]
