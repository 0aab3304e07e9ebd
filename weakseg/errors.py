"""The one exception type for errors a user can cause and fix.

Anything raised as :class:`WeaksegError` is shown by the CLI as a single message (no traceback)
and exits with code 2. The message must name the file or recipe key at fault and say what to do.
"""

from __future__ import annotations


class WeaksegError(Exception):
    """A user-facing error: bad recipe, missing or corrupt file, shape mismatch, zero points..."""

    exit_code = 2


class RecipeError(WeaksegError):
    """A recipe does not validate; the message carries the key path (``recipe.model.backbone``)."""


class DataError(WeaksegError):
    """Input data cannot be used; the message names the file."""
