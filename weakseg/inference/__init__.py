"""Prediction on images of any size (tiling, stitching) and exporters."""
