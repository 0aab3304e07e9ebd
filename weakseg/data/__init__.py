"""Data layer: zarr store, importers, label sources, torch datasets, augmentation, demo data."""
