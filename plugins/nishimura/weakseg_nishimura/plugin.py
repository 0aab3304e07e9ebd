"""Registers the Nishimura-1 baseline and the seeded-watershed baseline as weakseg strategies.

Kept cheap to import (attrs only): torch, scipy and scikit-image are imported inside ``build``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs

from weakseg.hookspecs import hookimpl
from weakseg.validators import fraction, non_negative, positive

Modality = Literal["fluorescence", "phase"]


@attrs.frozen(kw_only=True)
class NishimuraConfig:
    """Nishimura-1 (MICCAI 2019): heatmap U-Net, guided backprop from each peak, graph cut per cell.

    Training regresses max-combined Gaussians (``sigma`` px) made from the points with an MSE loss.
    Prediction finds peaks, back-propagates each peak's output region to the input through guided
    ReLUs (batched over peaks, in windows of ``window`` px around each peak), normalises the
    response maps, assigns pixels by maximum response and cuts each cell out with a two-label graph
    cut (``variant: graphcut``, the paper) or keeps the argmax ownership (``variant: lite``).
    Thresholds on responses refer to normalised maps (``response_norm``).
    """

    #: Trains from points alone (``data.crop_edge_cells: auto``).
    points_only: ClassVar[bool] = True

    variant: Literal["graphcut", "lite"] = "graphcut"
    modality: Modality = "phase"
    #: Standard deviation (px) of the Gaussian per point in the training target (the paper: 12).
    sigma: float = attrs.field(default=12.0, validator=positive)
    #: U-Net width of the first level (the paper: 64, i.e. 64-128-256-512-512) and number of poolings.
    unet_base: int = attrs.field(default=64, validator=positive)
    unet_depth: int = attrs.field(default=4, validator=positive)
    #: Peaks: heatmap value threshold (the paper: 125/255 in propagation) and suppression half-width (px).
    peak_threshold: float = attrs.field(default=0.5, validator=fraction)
    peak_min_distance: int = attrs.field(default=5, validator=non_negative)
    #: At most this many peaks per image (the highest), so an untrained network cannot stall evaluation.
    max_peaks: int = attrs.field(default=1000, validator=positive)
    #: Each peak's output region: its Voronoi cell within region_radius * sigma (the paper: ~2.6 sigma).
    region_radius: float = attrs.field(default=2.6, validator=positive)
    #: Guided-backprop window side (px) around each peak; None: 2 * region + 64 rounded up to 16.
    window: int | None = None
    #: Back-propagate through the whole image for every peak (exact, as the paper; slow).
    whole_image: bool = False
    #: Peaks per forward/backward batch.
    peak_batch: int = attrs.field(default=16, validator=positive)
    #: Precision of the guided backpropagation: ``auto`` is bf16 where it is fast (CUDA, CPUs with
    #: AVX512-BF16 or AMX) and fp32 elsewhere; the normalised responses differ by ~1-2 % between the two.
    backprop_precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: Which part of the channel-summed input gradient is the response: ``positive`` (the paper),
    #: ``negative`` or ``abs``.
    response_sign: Literal["positive", "negative", "abs"] = "positive"
    #: Response maps: Gaussian smoothing (px), then normalisation per map.
    response_blur: float = attrs.field(default=1.0, validator=non_negative)
    response_norm: Literal["max", "quantile", "none"] = "max"
    #: Pixels whose best normalised response is below this belong to no cell.
    response_threshold: float = attrs.field(default=0.05, validator=non_negative)
    #: Graph cut seeds (normalised responses): the cell's own pixels above fg_seed_threshold are
    #: foreground; other cells' pixels above bg_seed_threshold, and pixels where every response is
    #: below empty_threshold, are background.
    fg_seed_threshold: float = attrs.field(default=0.2, validator=non_negative)
    bg_seed_threshold: float = attrs.field(default=0.2, validator=non_negative)
    empty_threshold: float = attrs.field(default=0.02, validator=non_negative)
    min_seed_area: int = attrs.field(default=3, validator=non_negative)
    #: Pairwise term: ``intensity`` = the paper's exp(-beta * I) (I inverted for fluorescence, beta 10);
    #: ``contrast`` = exp(-beta * dI^2 / (2 <dI^2>)) (beta 1), cheap cuts across edges. Image smoothed
    #: by edge_smooth px first. Potts weight, background bias per pixel, ROI margin around each cell.
    edge_weights: Literal["contrast", "intensity"] = "contrast"
    edge_beta: float | None = None
    edge_smooth: float = attrs.field(default=0.0, validator=non_negative)
    pairwise_weight: float = attrs.field(default=20.0, validator=non_negative)
    unary_bias: float = attrs.field(default=2e-4, validator=non_negative)
    graphcut_margin: int = attrs.field(default=16, validator=non_negative)
    #: Post-processing of each cut cell: dilate (disk 2), fill holes, erode (disk 1).
    smooth: bool = True
    #: Image channel for the graph-cut edge weights (None: mean of all channels).
    edge_channel: int | None = None
    #: Side of the square mask crops of the returned Instances (None: per image, the largest cell
    #: box + 2). A fixed size gives every image and tile the same crop size; larger cells are clipped.
    mask_size: int | None = None

    def resolved_window(self) -> int | None:
        """The window side in px (None = whole image)."""
        if self.whole_image:
            return None
        if self.window is not None:
            return self.window
        side = 2 * self.region_radius * self.sigma + 64
        return int(-(-side // 16) * 16)

    def build(self, *, recipe: Any = None, data: Any) -> Any:
        from weakseg_nishimura.strategies import NishimuraStrategy

        return NishimuraStrategy(self, in_channels=data.in_channels)


@attrs.frozen(kw_only=True)
class SeededWatershedConfig:
    """Seeded watershed (training-free): Otsu foreground, watershed from points or from own seeds.

    Foreground: Otsu on smoothed intensity (fluorescence) or on local standard deviation (phase
    contrast / bright field texture). Seeds: the given points (``predict_with_points``, e.g. nuclei
    at prediction time in the A431 setting) or, without points, maxima of the smoothed distance
    transform of the foreground, or LoG blobs on ``nuclear_channel`` when set.
    """

    modality: Modality = "phase"
    #: Intensity channel (None: mean of the channels other than nuclear_channel).
    channel: int | None = None
    #: Gaussian smoothing (px) of the intensity before Otsu.
    smooth_sigma: float = attrs.field(default=1.0, validator=non_negative)
    #: Local standard deviation window (px) for phase contrast / bright field.
    texture_window: int = attrs.field(default=9, validator=positive)
    #: Foreground clean-up: remove objects up to min_size px, fill holes up to max_hole_size px
    #: (phase-contrast texture marks mostly the cell outline).
    min_size: int = attrs.field(default=30, validator=non_negative)
    max_hole_size: int = attrs.field(default=5000, validator=non_negative)
    #: Morphological closing of the foreground (disk radius, px) before hole filling.
    closing_radius: int = attrs.field(default=0, validator=non_negative)
    #: Watershed surface: distance transform of the foreground, or the (smoothed) intensity.
    surface: Literal["distance", "intensity"] = "distance"
    compactness: float = attrs.field(default=0.0, validator=non_negative)
    #: Own seeds: maxima of the distance transform smoothed by seed_smooth, min_distance apart.
    seed_min_distance: int = attrs.field(default=7, validator=positive)
    seed_smooth: float = attrs.field(default=2.0, validator=non_negative)
    #: Own seeds from a nuclear stain: LoG blob detection on this channel (sigmas in px).
    nuclear_channel: int | None = None
    blob_min_sigma: float = attrs.field(default=2.0, validator=positive)
    blob_max_sigma: float = attrs.field(default=10.0, validator=positive)
    blob_threshold: float = attrs.field(default=0.05, validator=positive)
    #: Given points are stamped as discs of this radius (px) and forced into the foreground.
    seed_radius: int = attrs.field(default=2, validator=non_negative)
    #: Drop instances smaller than this (px).
    min_area: int = attrs.field(default=10, validator=non_negative)
    #: Side of the square mask crops (None: per image, the largest cell box + 2; see nishimura).
    mask_size: int | None = None

    def build(self, *, recipe: Any = None, data: Any) -> Any:
        from weakseg_nishimura.strategies import SeededWatershedStrategy

        return SeededWatershedStrategy(self, in_channels=data.in_channels)


@hookimpl
def weakseg_register_strategies(registry: Any) -> None:
    registry.add("nishimura", NishimuraConfig)
    registry.add("seeded-watershed", SeededWatershedConfig)
