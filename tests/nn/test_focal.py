"""Focal BCE (gamma 2, no alpha) against the formula, the clipped probability form and plain BCE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from weakseg.nn.focal import focal_bce, focal_bce_with_logits


def test_matches_the_formula_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0, 3.0])
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0])
    got = focal_bce_with_logits(logits, targets)
    expected = []
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        p = 1 / (1 + math.exp(-z))
        pt = p if y == 1 else 1 - p
        expected.append(-((1 - pt) ** 2) * math.log(pt))
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert math.isclose(got[0].item(), 0.25 * math.log(2), rel_tol=1e-6)


def test_probability_form_agrees_and_gamma_zero_is_bce():
    torch.manual_seed(0)
    z = torch.randn(50) * 3
    y = (torch.rand(50) > 0.5).float()
    assert torch.allclose(focal_bce_with_logits(z, y), focal_bce(torch.sigmoid(z), y), atol=1e-5)
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    assert torch.allclose(focal_bce_with_logits(z, y, gamma=0.0), bce, atol=1e-6)


def test_logit_form_stays_finite_where_probabilities_saturate():
    z = torch.tensor([60.0, -60.0], requires_grad=True)
    loss = focal_bce_with_logits(z, torch.tensor([0.0, 1.0]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(z.grad).all()
    assert loss.min() > 50  # -(1-0)^2 log(e^-60) = 60
