"""Shared attrs validators: the field name and the value in the message, None passes."""

from __future__ import annotations

import attrs
import pytest

from weakseg.errors import RecipeError
from weakseg.recipe import HeadSpec, StrategySpec
from weakseg.validators import fraction, non_negative, positive


@attrs.frozen(kw_only=True)
class _Conf:
    size: int | None = attrs.field(default=None, validator=positive)
    margin: float = attrs.field(default=0.0, validator=non_negative)
    share: float = attrs.field(default=0.5, validator=fraction)


def test_bounds_and_messages():
    assert _Conf(size=None, margin=0.0, share=1.0).share == 1.0
    with pytest.raises(ValueError, match=r"^size must be > 0, got 0$"):
        _Conf(size=0)
    with pytest.raises(ValueError, match=r"^margin must be >= 0, got -0.5$"):
        _Conf(margin=-0.5)
    with pytest.raises(ValueError, match=r"^share must lie in \[0, 1\], got 1.5$"):
        _Conf(share=1.5)


def test_plugin_configs_report_through_the_recipe_key():
    with pytest.raises(RecipeError, match=r"principal_heads\['lacss'\]: invalid value: instance_channels must be > 0"):
        HeadSpec.of("lacss", instance_channels=0)
    with pytest.raises(RecipeError, match=r"invalid value: peak_threshold must lie in \[0, 1\], got 2.0"):
        StrategySpec.of("nishimura", peak_threshold=2.0)
    with pytest.raises(RecipeError, match=r"invalid value: warmup_steps must be >= 0, got -1"):
        StrategySpec.of("cks", warmup_steps=-1)
