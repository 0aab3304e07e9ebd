"""The weakseg plugin contract: one pluggy hook per registry.

A plugin is a module (or object) with functions marked ``@weakseg.hookimpl`` and is found through
the ``weakseg`` entry-point group. The built-in plugins (``weakseg.data.plugin``, ``weakseg.nn.plugin``,
``weakseg_cks``, ``weakseg_nishimura``) are declared in the same group, so a third-party package is
loaded exactly like they are. Each hook receives a sink bound to the plugin's distribution; call
``registry.add(name, ConfigClass)`` where ``ConfigClass`` is an attrs class with ``build(**ctx)``.

There is one hook ``weakseg_register_<kind>(registry)`` per registry kind of
:data:`weakseg.registry.KINDS` (the hook specifications below are made from that table).
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
strategies                ``recipe: Recipe, data: DataSummary``      :class:`weakseg.strategy.StrategyModule`
importers                 (none)                                     :class:`weakseg.components.Importer`
========================  =========================================  ======================================

Two optional class-level declarations are read without building anything (so ``weakseg recipes
check`` stays torch-free):

- a consistency-loss config class may set ``role`` (a class attribute such as ``"foreground"``)
  naming the term it can play; a strategy reads it to accept or refuse a loss for one of its keys;
- a strategy config class may define ``check(self, recipe) -> list[tuple[str, str]]`` returning
  ``(key path, message)`` for each part of the recipe it cannot train with (``recipe.model`` empty,
  a loss of the wrong role, ...). :func:`weakseg.recipe.load_recipe` and
  :func:`weakseg.build.build_strategy` call it before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from weakseg.registry import KINDS, Kind, RegistrySink

PROJECT = "weakseg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def _hook_spec(kind: Kind) -> Callable[[RegistrySink], None]:
    """The hook specification of one registry kind: ``weakseg_register_<kind>(registry)``."""

    def spec(registry: RegistrySink) -> None:
        pass

    spec.__name__ = spec.__qualname__ = kind.hook
    spec.__doc__ = kind.summary
    spec.__module__ = __name__
    return hookspec(spec)


for _kind in KINDS:
    globals()[_kind.hook] = _hook_spec(_kind)
del _kind

#: hook name -> registry kind, in the order ``weakseg plugins`` lists them.
HOOK_TO_KIND: dict[str, str] = {kind.hook: kind.name for kind in KINDS}
