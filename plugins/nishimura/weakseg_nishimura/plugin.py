"""Registers the Nishimura baseline components."""

from weakseg.hookspecs import hookimpl  # noqa: F401
