"""Registers the CKS components."""

from weakseg.hookspecs import hookimpl  # noqa: F401
