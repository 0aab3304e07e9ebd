"""The collaborator sign check: foreground on the points against the image mean, and the warm-up switch."""

from __future__ import annotations

import pytest
import torch
from test_strategies_cks import disc_batch, make_strategy
from weakseg_cks.monitor import ForegroundMonitor

POINTS = [torch.tensor([[4.0, 5.0], [10.0, 12.0]])]


def _logits(on_points: float, elsewhere: float) -> torch.Tensor:
    logits = torch.full((1, 16, 16), elsewhere)
    logits[0, 4, 5] = logits[0, 10, 12] = on_points
    return logits


def test_a_foreground_high_on_the_points_gives_a_positive_contrast():
    monitor = ForegroundMonitor()
    monitor.update(_logits(4.0, -4.0), POINTS, last_warmup_step=True)
    m = monitor.metrics()
    assert m["collab_fg_on_points"] == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item())
    assert m["collab_fg_mean"] < 0.05
    assert m["collab_fg_contrast_at_switch"] > 0.9
    assert "collab_fg_contrast_at_switch" not in monitor.metrics()  # logged once


def test_an_inverted_foreground_at_the_switch_warns():
    monitor = ForegroundMonitor()
    monitor.update(_logits(4.0, -4.0), POINTS, last_warmup_step=False)  # only the switch step is judged
    with pytest.warns(UserWarning, match="sign may be inverted"):
        monitor.update(_logits(-4.0, 4.0), POINTS, last_warmup_step=True)
    m = monitor.metrics()
    assert m["collab_fg_contrast_at_switch"] < -0.9
    assert m["collab_fg_on_points"] == pytest.approx(0.5, abs=0.01)  # the mean of both steps


def test_cks_training_logs_the_check():
    strategy = make_strategy({"type": "cks", "warmup_steps": 2})
    for step in range(3):
        strategy(disc_batch(), step)
    m = strategy.interval_metrics()
    assert {"collab_fg_on_points", "collab_fg_mean", "collab_fg_contrast_at_switch"} <= set(m)
    assert 0.0 < m["collab_fg_mean"] < 1.0
