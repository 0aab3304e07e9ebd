"""weakseg.data: built-in importers and label sources (registered through the weakseg entry-point group)."""

from weakseg.hookspecs import hookimpl  # noqa: F401
