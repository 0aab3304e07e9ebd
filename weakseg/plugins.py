"""Plugin manager: loads every ``weakseg`` entry point and fills the registries.

Built-in and third-party plugins take the same path: each is an entry point in the ``weakseg``
group (built-ins are declared in weakseg's own ``pyproject.toml``), loaded by pluggy's
``load_setuptools_entrypoints``. A plugin that fails to import is skipped with a warning naming
its distribution and the error; the others keep working.

Set ``WEAKSEG_DISABLE_PLUGINS=name1,name2`` to block entry points by name. The built-in data
plugin (``data``: the importers and the label sources recipes fall back on) is part of weakseg's
core: it is registered before the entry points and cannot be blocked.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from importlib import metadata
from types import ModuleType

import pluggy

from weakseg import __version__, hookspecs
from weakseg.registry import Registries, RegistrySink, Source

ENTRY_POINT_GROUP = "weakseg"
#: Environment variable naming entry points (comma-separated) that are not loaded.
DISABLE_ENV = "WEAKSEG_DISABLE_PLUGINS"
#: Plugins that are part of weakseg's core: entry-point name -> module. Registered first, never blocked.
CORE_PLUGINS: dict[str, str] = {"data": "weakseg.data.plugin"}
CORE_DISTRIBUTION = f"weakseg {__version__}"


class PluginLoadWarning(UserWarning):
    """A plugin distribution could not be loaded (or a core plugin was asked to be disabled)."""


def _source_for(pm: pluggy.PluginManager, plugin: object) -> Source:
    module = getattr(plugin, "__name__", type(plugin).__name__)
    dists = {id(p): f"{d.project_name} {d.version}" for p, d in pm.list_plugin_distinfo()}
    if pm.get_name(plugin) in CORE_PLUGINS:
        dists.setdefault(id(plugin), CORE_DISTRIBUTION)
    return Source(distribution=dists.get(id(plugin), "(registered in code)"), module=module)


def _blocked_names() -> set[str]:
    """Entry-point names in ``WEAKSEG_DISABLE_PLUGINS``, less the core plugins (with a warning if named)."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    core = sorted(names & CORE_PLUGINS.keys())
    if core:
        warnings.warn(
            f"{DISABLE_ENV}: {', '.join(repr(n) for n in core)} is part of weakseg's core (the built-in importers "
            "and label sources, including the default 'centroids') and cannot be disabled; it stays loaded. "
            f"Remove it from {DISABLE_ENV}.",
            PluginLoadWarning,
            stacklevel=3,
        )
    return names - CORE_PLUGINS.keys()


def _distribution_of(entry_point_name: str) -> str:
    """'name version' of the first distribution declaring the entry point (for messages)."""
    for dist in metadata.distributions():
        if any(ep.group == ENTRY_POINT_GROUP and ep.name == entry_point_name for ep in dist.entry_points):
            return f"{dist.metadata['Name']} {dist.version}"
    return "(unknown distribution)"


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Load the group's entry points one name at a time through pluggy, so one broken plugin only warns."""
    for name in _blocked_names():
        pm.set_blocked(name)
    names = dict.fromkeys(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    for name in names:
        if pm.has_plugin(name) or pm.is_blocked(name):
            continue
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the host
            warnings.warn(
                f"weakseg plugin {name!r} from distribution {_distribution_of(name)} "
                f"could not be loaded and is skipped: {type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=3,
            )


def make_plugin_manager(
    *, extra_plugins: tuple[ModuleType | object, ...] = (), entry_points: bool = True
) -> pluggy.PluginManager:
    """A fresh plugin manager with the weakseg hookspecs, the core plugins, entry points and ``extra_plugins``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, module in CORE_PLUGINS.items():
        pm.register(importlib.import_module(module), name=name)
    if entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def fill_registries(pm: pluggy.PluginManager) -> Registries:
    """Call every registration hook once per plugin, with a sink bound to that plugin's source.

    Each plugin's implementation is called through pluggy (a hook caller restricted to that plugin),
    so the registry can record which distribution and module registered each component.
    """
    registries = Registries()
    for hook_name, kind in hookspecs.HOOK_TO_KIND.items():
        caller = getattr(pm.hook, hook_name)
        # Call implementations oldest-registered first so listings follow load order.
        implementers = [impl.plugin for impl in reversed(caller.get_hookimpls())]
        for plugin in implementers:
            others = [p for p in pm.get_plugins() if p is not plugin]
            sink = RegistrySink(registries[kind], _source_for(pm, plugin))
            pm.subset_hook_caller(hook_name, remove_plugins=others)(registry=sink)
    return registries


_in_process_plugins: list[object] = []


@functools.cache
def registries() -> Registries:
    """The process-wide registries, filled from installed entry points on first use."""
    return fill_registries(make_plugin_manager(extra_plugins=tuple(_in_process_plugins)))


def register_plugin(plugin: object) -> None:
    """Add a plugin object or module in this process (notebooks, tests) and refresh the registries."""
    _in_process_plugins.append(plugin)
    registries.cache_clear()


def unregister_plugin(plugin: object) -> None:
    """Remove a plugin added with :func:`register_plugin`."""
    _in_process_plugins.remove(plugin)
    registries.cache_clear()


def reset() -> None:
    """Forget the cached registries (tests, or after installing a plugin distribution in-process)."""
    registries.cache_clear()
