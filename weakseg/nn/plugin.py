"""weakseg.nn: built-in timm backbones (registered through the weakseg entry-point group)."""

from weakseg.hookspecs import hookimpl  # noqa: F401
