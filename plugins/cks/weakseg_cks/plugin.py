"""Registers the CKS components.

Kept cheap to import: the config classes import no torch; their ``build`` methods do.
"""

from weakseg.hookspecs import hookimpl
from weakseg_cks import principal_config, train_components


# --- principal model (cks-model) -------------------------------------------------------------
@hookimpl
def weakseg_register_principal_heads(registry):
    """The LACSS principal head: shared multi-scale point detector + windowed instance segmentation."""
    registry.add("lacss", principal_config.LacssHeadConfig)


# --- collaborator, losses, strategies (cks-train) ----------------------------------------------
@hookimpl
def weakseg_register_collaborators(registry):
    """The CKS collaborator (nets a1/b1) and the larger variants of the paper's Table VII."""
    for name, config_cls in train_components.COLLABORATORS.items():
        registry.add(name, config_cls)


@hookimpl
def weakseg_register_consistency_losses(registry):
    """L_M (linear, cross-entropy), L_S (instance, instance_cross_entropy), L_B (border), L_MC (collapse)."""
    for name, config_cls in train_components.CONSISTENCY_LOSSES.items():
        registry.add(name, config_cls)


@hookimpl
def weakseg_register_strategies(registry):
    """cks (points), supervised (masks, the upper bound), mixed (masks on some images, points on the rest)."""
    for name, config_cls in train_components.STRATEGIES.items():
        registry.add(name, config_cls)
