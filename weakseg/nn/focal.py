"""Binary focal cross-entropy (Lin et al. 2017), as the CKS point detector uses it.

The CKS paper (Eq. 3) trains its detection map with a focal binary cross-entropy; the reference
implementation uses gamma = 2 and **no** alpha balancing:
``loss = -(1 - p_t)^gamma * log(p_t)`` with ``p_t = y p + (1 - y)(1 - p)``.
The logit form is preferred: it is exact where the probability form has to clip ``p_t``, and it
keeps the loss in float32 when the model runs under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Element-wise focal BCE from logits (no reduction, float32), targets in [0, 1].

    For a hard target the result equals ``-(1 - p_t)**gamma * log(p_t)``; soft targets interpolate
    the log terms linearly.
    """
    z = logits.float()
    y = targets.to(z.dtype)
    log_p = F.logsigmoid(z)
    log_1mp = F.logsigmoid(-z)
    p = torch.sigmoid(z)
    p_t = y * p + (1 - y) * (1 - p)
    log_p_t = y * log_p + (1 - y) * log_1mp
    return -((1 - p_t) ** gamma) * log_p_t


def focal_bce(probs: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """Element-wise focal BCE from probabilities, ``log`` of ``p_t`` clipped to ``[eps, 1]`` (as the reference)."""
    p = probs.float()
    y = targets.to(p.dtype)
    p_t = y * p + (1 - y) * (1 - p)
    return -((1 - p_t) ** gamma) * torch.log(p_t.clamp(eps, 1.0))
