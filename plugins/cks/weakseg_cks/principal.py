"""The LACSS principal model of CKS: backbone + FPN, shared point detector, windowed instance segmentation.

CKS paper (Sec. III-A, Fig. 1 and 3) and the layer sizes of its reference implementation (LACSS).
The model knows nothing about how it is trained. Strategies use this training API:

- :meth:`LacssPrincipal.forward_train` ``(image) -> PrincipalOutput`` (FPN features + detection maps);
- :meth:`LacssPrincipal.detection_loss` ``(out, points) -> Tensor``, the paper's L_det / reference LPN loss;
- :meth:`LacssPrincipal.training_locations` ``(out, points) -> list[Tensor]``: each point replaced by
  the best detection within ``max_proposal_offset`` (12 px), without gradient;
- :meth:`LacssPrincipal.segment` ``(out, locations) -> InstanceCrops``: mask logits of the M real
  instances of the batch (differentiable);
- :meth:`LacssPrincipal.predict` ``(image) -> list[Instances]`` (eval: detection, NMS, segmentation).

Images are (B, C, H, W) float32, standardised; any H, W: they are zero-padded at the bottom and
right to a multiple of 32 and every output is in input-pixel coordinates. Coordinates are (y, x)
with pixel centres at i + 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.errors import DataError
from weakseg.nn.instances import Instances
from weakseg_cks.detection import (
    DetectionHead,
    decode_candidates,
    detection_loss_terms,
    match_training_locations,
    select_detections,
)
from weakseg_cks.segmentation import SEGMENTATION_STRIDE, SegmentationHead

#: Inputs are padded to a multiple of the coarsest backbone stride.
SIZE_DIVISOR = 32


@attrs.define(eq=False)
class PrincipalOutput:
    """What :meth:`LacssPrincipal.forward_train` computes once per batch.

    ``features``: FPN maps at strides 4, 8, 16, 32 of the padded image. ``det_logits[k]`` (B, 1, h, w)
    score logits and ``det_offsets[k]`` (B, 2, h, w) offsets (feature pixels) at stride
    ``det_strides[k]``. ``image_shape`` is the unpadded input (H, W).
    """

    features: list[torch.Tensor]
    det_logits: list[torch.Tensor]
    det_offsets: list[torch.Tensor]
    det_strides: tuple[int, ...]
    image_shape: tuple[int, int]
    #: dense segmentation features, computed on the first :meth:`LacssPrincipal.segment` call.
    seg_features: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.features[0].shape[0])

    def det_scores(self) -> list[torch.Tensor]:
        """Detection probabilities per level, (B, 1, h, w)."""
        return [torch.sigmoid(x.float()) for x in self.det_logits]


@attrs.define(eq=False)
class InstanceCrops:
    """Mask logits of the M real instances of a batch (no padding), in image-pixel crops.

    Crop pixel (a, b) of instance m is image pixel (origins[m, 0] + a, origins[m, 1] + b); its centre
    is at that index + 0.5. ``centers`` are the crop centres in continuous coordinates
    (``origins + crop_size / 2``; pixel index ``origins + (crop_size - 1) / 2``), which the CKS prior
    uses. ``locations`` are the points the crops were made for; ``batch_index`` says which image.
    """

    logits: torch.Tensor  # (M, S, S)
    origins: torch.Tensor  # (M, 2) int64
    centers: torch.Tensor  # (M, 2) float
    batch_index: torch.Tensor  # (M,) int64
    crop_size: int
    locations: torch.Tensor  # (M, 2) float
    image_shape: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def pixel_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Image row (M, S) and column (M, S) indices of the crop pixels (may be outside the image)."""
        ar = torch.arange(self.crop_size, device=self.origins.device)
        return self.origins[:, 0:1] + ar, self.origins[:, 1:2] + ar

    def inside_image(self) -> torch.Tensor:
        """(M, S, S) bool: crop pixels that lie inside the (unpadded) image."""
        ys, xs = self.pixel_indices()
        h, w = self.image_shape
        iny = (ys >= 0) & (ys < h)
        inx = (xs >= 0) & (xs < w)
        return iny[:, :, None] & inx[:, None, :]

    def counts(self, batch_size: int) -> list[int]:
        """Number of instances per image."""
        return torch.bincount(self.batch_index, minlength=batch_size).tolist()


class LacssPrincipal(nn.Module):
    """The CKS principal model (LACSS): see the module docstring for the training API."""

    def __init__(self, backbone: nn.Module, in_channels: int, config: Any) -> None:
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        self.backbone = backbone
        width = int(backbone.out_channels)
        strides = tuple(getattr(backbone, "strides", (4, 8, 16, 32)))
        self.backbone_strides = strides
        missing = [s for s in (*config.detection_levels, SEGMENTATION_STRIDE) if s not in strides]
        if missing:
            raise ValueError(f"the backbone has strides {strides}; the head needs {missing}")
        self.det_strides = tuple(sorted(config.detection_levels))
        self.detector = DetectionHead(width, config.detection_channels or width, config.detection_layers)
        self.segmentor = SegmentationHead(
            width,
            config.segmentation_channels or width,
            n_layers=config.segmentation_layers,
            instance_channels=config.instance_channels,
            crop_size=config.crop_size,
            position_encoding=config.position_encoding,
            encoder_hidden=tuple(config.encoder_hidden),
            encoder_dims=tuple(config.encoder_dims),
        )
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def crop_size(self) -> int:
        return self.segmentor.crop_size

    # ------------------------------------------------------------------ training API

    def _check_image(self, image: torch.Tensor) -> None:
        if image.ndim != 4:
            raise DataError(f"the principal model expects an image batch (B, C, H, W), got shape {tuple(image.shape)}")
        if image.shape[1] != self.in_channels:
            raise DataError(
                f"the model was built for {self.in_channels}-channel images but got {image.shape[1]} channels "
                f"(shape {tuple(image.shape)}); use data with the channels the model was trained on"
            )
        if image.shape[-2] < 1 or image.shape[-1] < 1:
            raise DataError(f"empty image of shape {tuple(image.shape)}")

    def forward_train(self, image: torch.Tensor) -> PrincipalOutput:
        """Backbone, FPN and the shared detection head on every detection level."""
        self._check_image(image)
        h, w = image.shape[-2:]
        ph, pw = -h % SIZE_DIVISOR, -w % SIZE_DIVISOR
        x = F.pad(image, (0, pw, 0, ph)) if (ph or pw) else image
        # a model cast to bfloat16 (inference) takes float32 images as they come
        dtype = self.detector.score.weight.dtype
        x = x.to(dtype=dtype if dtype.is_floating_point else x.dtype, memory_format=self.memory_format)
        features = list(self.backbone(x))
        logits, offsets = [], []
        for stride in self.det_strides:
            score, offset = self.detector(features[self.backbone_strides.index(stride)])
            logits.append(score)
            offsets.append(offset)
        return PrincipalOutput(features, logits, offsets, self.det_strides, (int(h), int(w)))

    forward = forward_train

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's FPN maps (strides 4..32, finest first) of an image batch: what generic tools
        such as the size model (``weakseg.inference.sizing``) read from a principal."""
        self._check_image(image)
        ph, pw = -image.shape[-2] % SIZE_DIVISOR, -image.shape[-1] % SIZE_DIVISOR
        x = F.pad(image, (0, pw, 0, ph)) if (ph or pw) else image
        dtype = self.detector.score.weight.dtype
        x = x.to(dtype=dtype if dtype.is_floating_point else x.dtype, memory_format=self.memory_format)
        return list(self.backbone(x))

    def detection_loss_terms(
        self, out: PrincipalOutput, points: Sequence[torch.Tensor], **weighting: Any
    ) -> dict[str, torch.Tensor]:
        """``{"focal": ..., "localization": ...}``: the two parts of :meth:`detection_loss`.

        ``weighting``: ``annotated`` (B, H, W) and ``unlabelled_prior`` of
        :func:`~weakseg_cks.detection.detection_loss_terms` (negatives outside annotated regions, or
        confident ones, count less).
        """
        if len(points) != out.batch_size:
            raise ValueError(f"got {len(points)} point sets for a batch of {out.batch_size} images")
        cfg = self.config
        return detection_loss_terms(
            out.det_logits,
            out.det_offsets,
            out.det_strides,
            points,
            roi=cfg.detection_roi,
            gamma=cfg.focal_gamma,
            huber_delta=cfg.huber_delta,
            localization_norm=cfg.localization_norm,
            **weighting,
        )

    def detection_loss(self, out: PrincipalOutput, points: Sequence[torch.Tensor], **weighting: Any) -> torch.Tensor:
        """The paper's L_det (Eq. 3; reference ``lpn_loss``): focal BCE + Huber, scalar float32."""
        terms = self.detection_loss_terms(out, points, **weighting)
        return terms["focal"] + terms["localization"]

    @torch.no_grad()
    def detect(
        self,
        out: PrincipalOutput,
        *,
        min_score: float | None = None,
        max_detections: int | None = None,
        nms_distance: float | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Detections per image: (scores (K,), locations (K, 2)) best first, after the score floor and NMS."""
        cfg = self.config
        scores, locations = decode_candidates(out.det_logits, out.det_offsets, out.det_strides, out.image_shape)
        return [
            select_detections(
                scores[b],
                locations[b],
                min_score=cfg.min_score if min_score is None else min_score,
                nms_distance=cfg.nms_distance if nms_distance is None else nms_distance,
                max_detections=cfg.max_detections if max_detections is None else max_detections,
            )
            for b in range(out.batch_size)
        ]

    @torch.no_grad()
    def training_locations(self, out: PrincipalOutput, points: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each point replaced by the best-scoring detection within ``max_proposal_offset`` px (no gradient)."""
        detections = self.detect(out)
        return [
            match_training_locations(locs, scores, pts.to(locs.device), self.config.max_proposal_offset)
            for (scores, locs), pts in zip(detections, points, strict=True)
        ]

    def _seg_features(self, out: PrincipalOutput) -> torch.Tensor:
        if out.seg_features is None:
            out.seg_features = self.segmentor.dense(out.features[self.backbone_strides.index(SEGMENTATION_STRIDE)])
        return out.seg_features

    def segment(self, out: PrincipalOutput, locations: Sequence[torch.Tensor]) -> InstanceCrops:
        """Mask logits for every location of every image (M = sum N_b crops, no padding; differentiable)."""
        if len(locations) != out.batch_size:
            raise ValueError(f"got {len(locations)} location sets for a batch of {out.batch_size} images")
        device = out.features[0].device
        s = self.crop_size
        locs = [torch.as_tensor(p, device=device).float().reshape(-1, 2) for p in locations]
        counts = torch.tensor([p.shape[0] for p in locs], device=device)
        batch_index = torch.repeat_interleave(torch.arange(len(locs), device=device), counts)
        flat = torch.cat(locs, 0) if locs else torch.zeros(0, 2, device=device)
        if flat.shape[0] == 0:
            return InstanceCrops(
                logits=torch.zeros(0, s, s, device=device),
                origins=torch.zeros(0, 2, dtype=torch.long, device=device),
                centers=torch.zeros(0, 2, device=device),
                batch_index=batch_index,
                crop_size=s,
                locations=flat,
                image_shape=out.image_shape,
            )
        dense = self._seg_features(out)
        raw = out.features[self.backbone_strides.index(SEGMENTATION_STRIDE)]
        logits, origins = self.segmentor.crops(dense, raw, flat, batch_index)
        return InstanceCrops(
            logits=logits,
            origins=origins,
            centers=origins.float() + s / 2,
            batch_index=batch_index,
            crop_size=s,
            locations=flat,
            image_shape=out.image_shape,
        )

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, image: torch.Tensor, *, chunk: int = 1024) -> list[Instances]:
        """Eval-mode prediction: one :class:`Instances` per image, in input-pixel coordinates.

        Segments the real detections only, ``chunk`` instances at a time to bound memory.
        """
        was_training = self.training
        self.eval()
        try:
            out = self.forward_train(image)
            detections = self.detect(out)
            results = []
            for b, (scores, locs) in enumerate(detections):
                pieces, origins = [], []
                for start in range(0, locs.shape[0], chunk):
                    part = [torch.zeros(0, 2, device=locs.device)] * out.batch_size
                    part[b] = locs[start : start + chunk]
                    crops = self.segment(out, part)
                    pieces.append(torch.sigmoid(crops.logits.float()))
                    origins.append(crops.origins)
                if not pieces:
                    results.append(Instances.empty(out.image_shape, self.crop_size, device=locs.device))
                    continue
                results.append(
                    Instances(
                        scores=scores.float(),
                        locations=locs.float(),
                        masks=torch.cat(pieces, 0),
                        origins=torch.cat(origins, 0),
                        image_shape=out.image_shape,
                    )
                )
            return results
        finally:
            self.train(was_training)
