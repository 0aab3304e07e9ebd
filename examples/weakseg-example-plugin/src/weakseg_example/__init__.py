"""An example weakseg plugin distribution (see plugin.py)."""
