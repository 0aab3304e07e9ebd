"""attrs field validators shared by the config classes of the core and the plugins.

Messages name the field, so that recipe errors read ``recipe.model.head: invalid value:
instance_channels must be > 0, got -4``. ``None`` passes (optional fields keep their meaning).
"""

from __future__ import annotations

from typing import Any

import attrs


def positive(instance: Any, attribute: attrs.Attribute, value: float | None) -> None:
    """The field must be > 0 (or None)."""
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def non_negative(instance: Any, attribute: attrs.Attribute, value: float | None) -> None:
    """The field must be >= 0 (or None)."""
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def fraction(instance: Any, attribute: attrs.Attribute, value: float | None) -> None:
    """The field must lie in [0, 1] (or be None)."""
    if value is not None and not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must lie in [0, 1], got {value!r}")


def positive_range(instance: Any, attribute: attrs.Attribute, value: tuple[float, float] | None) -> None:
    """The field is a ``[low, high]`` pair with 0 < low <= high (or None)."""
    if value is None:
        return
    low, high = value
    if not 0 < low <= high:
        raise ValueError(f"{attribute.name} must be [low, high] with 0 < low <= high, got {list(value)!r}")


def positive_values(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Every value of the mapping field must be > 0."""
    bad = {k: v for k, v in (value or {}).items() if not v > 0}
    if bad:
        raise ValueError(f"{attribute.name} values must be > 0, got {bad!r}")
