"""``Instances``: what every principal model returns for one image.

Each instance is a detection score, a (y, x) location and a square mask crop whose top-left
pixel sits at ``origins[i]`` in the image (crop pixel (a, b) is image pixel (y0 + a, x0 + b)).
Crops may extend past the image borders; pasting clips them.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch


@attrs.define
class Instances:
    """Instances of one image. ``masks`` are probabilities in [0, 1], shape (N, S, S)."""

    scores: torch.Tensor  # (N,) float
    locations: torch.Tensor  # (N, 2) float, (y, x) image pixels
    masks: torch.Tensor  # (N, S, S) float probabilities
    origins: torch.Tensor  # (N, 2) int64, top-left (y0, x0) of each crop in image pixels
    image_shape: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, image_shape: tuple[int, int], crop_size: int = 1, device: torch.device | str = "cpu") -> Instances:
        return cls(
            scores=torch.zeros(0, device=device),
            locations=torch.zeros(0, 2, device=device),
            masks=torch.zeros(0, crop_size, crop_size, device=device),
            origins=torch.zeros(0, 2, dtype=torch.long, device=device),
            image_shape=tuple(image_shape),
        )

    def select(self, keep: torch.Tensor) -> Instances:
        """A subset (boolean mask or index tensor)."""
        return Instances(
            scores=self.scores[keep],
            locations=self.locations[keep],
            masks=self.masks[keep],
            origins=self.origins[keep],
            image_shape=self.image_shape,
        )

    @classmethod
    def concat(cls, parts: list[Instances], image_shape: tuple[int, int]) -> Instances:
        """One Instances from several (e.g. the tiles of an image) in the same frame.

        Parts may have different crop sizes (strategies with adaptive crops, such as Nishimura-1's
        per-image window): smaller crops are zero-padded at the bottom and right to the largest
        size, which keeps every mask pixel where it was (crops are anchored at their origin).
        """
        if not parts:
            return cls.empty(image_shape)
        size = max(int(p.masks.shape[-1]) for p in parts)
        masks = [
            p.masks
            if p.masks.shape[-1] == size
            else torch.nn.functional.pad(p.masks, (0, size - p.masks.shape[-1], 0, size - p.masks.shape[-2]))
            for p in parts
        ]
        return cls(
            scores=torch.cat([p.scores for p in parts]),
            locations=torch.cat([p.locations for p in parts]),
            masks=torch.cat(masks),
            origins=torch.cat([p.origins for p in parts]),
            image_shape=tuple(image_shape),
        )

    def to(self, device: torch.device | str) -> Instances:
        moved = [t.to(device) for t in (self.scores, self.locations, self.masks, self.origins)]
        return Instances(*moved, image_shape=self.image_shape)

    def shift(self, dy: int, dx: int, image_shape: tuple[int, int]) -> Instances:
        """The same instances in a larger frame (tile offset (dy, dx))."""
        offset = torch.tensor([dy, dx], device=self.origins.device)
        return Instances(self.scores, self.locations + offset, self.masks, self.origins + offset, tuple(image_shape))

    def to_label_image(
        self, score_threshold: float = 0.5, mask_threshold: float = 0.5, min_area: int = 0
    ) -> np.ndarray:
        """Paste into an int32 label image; where instances overlap, the higher score wins.

        Labels are 1..M in order of decreasing score. Instances below ``score_threshold`` or with
        no more than ``min_area`` pixels inside the image are dropped.
        """
        h, w = self.image_shape
        label = np.zeros((h, w), np.int32)
        if len(self) == 0:
            return label
        scores = self.scores.detach().float().cpu().numpy()
        masks = self.masks.detach().float().cpu().numpy() >= mask_threshold
        origins = self.origins.detach().cpu().numpy().astype(np.int64)
        best = np.full((h, w), -np.inf, np.float32)
        order = np.argsort(-scores, kind="stable")
        next_id = 1
        for i in order:
            if scores[i] < score_threshold:
                continue
            y0, x0 = origins[i]
            s_h, s_w = masks[i].shape
            ya, xa = max(y0, 0), max(x0, 0)
            yb, xb = min(y0 + s_h, h), min(x0 + s_w, w)
            if ya >= yb or xa >= xb:
                continue
            m = masks[i][ya - y0 : yb - y0, xa - x0 : xb - x0]
            if m.sum() <= min_area:
                continue
            region = best[ya:yb, xa:xb]
            take = m & (scores[i] > region)
            if not take.any():
                continue
            label[ya:yb, xa:xb][take] = next_id
            region[take] = scores[i]
            next_id += 1
        return label
