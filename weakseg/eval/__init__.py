"""Evaluation: instance-segmentation metrics and evaluation runs."""
