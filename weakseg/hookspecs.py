"""The weakseg plugin contract: one pluggy hook per registry.

A plugin is a module (or object) with functions marked ``@weakseg.hookimpl`` and is found through
the ``weakseg`` entry-point group. The built-in plugins (``weakseg.builtin``, ``weakseg_cks``,
``weakseg_nishimura``) are declared in the same group, so a third-party package is loaded exactly
like they are. Each hook receives a sink bound to the plugin's distribution; call
``registry.add(name, ConfigClass)`` where ``ConfigClass`` is an attrs class with ``build(**ctx)``.

What ``build`` receives and returns, per registry (see :mod:`weakseg.components`):

========================  =========================================  ======================================
hook                      ``build(...)`` arguments                   returns
========================  =========================================  ======================================
backbones                 ``in_channels: int``                       ``nn.Module``: image -> list of
                                                                     feature maps, strides 4, 8, 16, 32
principal_heads           ``backbone: nn.Module, in_channels: int``  :class:`weakseg.components.PrincipalModel`
collaborators             ``in_channels: int, n_groups: int``        ``nn.Module``: (image, group) ->
                                                                     (foreground, border) logits (B, H, W)
consistency_losses        (none)                                     callable loss object (``nn.Module``)
label_sources             (none)                                     :class:`weakseg.components.LabelSource`
strategies                ``recipe: Recipe, data: DataSummary``      :class:`weakseg.components.Strategy`
importers                 (none)                                     :class:`weakseg.components.Importer`
========================  =========================================  ======================================
"""

from __future__ import annotations

import pluggy

from weakseg.registry import RegistrySink

PROJECT = "weakseg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def weakseg_register_backbones(registry: RegistrySink) -> None:
    """Register feature-pyramid backbones (image -> multi-scale features)."""


@hookspec
def weakseg_register_principal_heads(registry: RegistrySink) -> None:
    """Register principal models built on a backbone (image -> ``Instances``)."""


@hookspec
def weakseg_register_collaborators(registry: RegistrySink) -> None:
    """Register pixel-level collaborator networks (image -> foreground/border logits)."""


@hookspec
def weakseg_register_consistency_losses(registry: RegistrySink) -> None:
    """Register losses that tie a principal model and a collaborator together."""


@hookspec
def weakseg_register_label_sources(registry: RegistrySink) -> None:
    """Register label sources that make point labels (from masks, nuclei, CSV files, ...)."""


@hookspec
def weakseg_register_strategies(registry: RegistrySink) -> None:
    """Register training strategies (CKS, supervised, baselines, ...)."""


@hookspec
def weakseg_register_importers(registry: RegistrySink) -> None:
    """Register data importers that turn user data into a weakseg zarr store."""


#: hook name -> registry kind, in the order ``weakseg plugins`` lists them.
HOOK_TO_KIND: dict[str, str] = {
    "weakseg_register_backbones": "backbones",
    "weakseg_register_principal_heads": "principal_heads",
    "weakseg_register_collaborators": "collaborators",
    "weakseg_register_consistency_losses": "consistency_losses",
    "weakseg_register_label_sources": "label_sources",
    "weakseg_register_strategies": "strategies",
    "weakseg_register_importers": "importers",
}
