"""Training engine: the trainer loop, where a run starts (resume / fresh), distribution, MLflow tracking.

Checkpoints live in :mod:`weakseg.checkpoint` and devices in :mod:`weakseg.devices`, so that
evaluation and prediction need nothing from here.
"""
