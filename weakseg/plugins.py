"""Plugin manager: loads every ``weakseg`` entry point and fills the registries.

Built-in and third-party plugins take the same path: each is an entry point in the ``weakseg``
group (built-ins are declared in weakseg's own ``pyproject.toml``). A plugin that fails to import
is skipped with a warning naming its distribution and the error; the others keep working.

Set ``WEAKSEG_DISABLE_PLUGINS=name1,name2`` to block entry points by name.
"""

from __future__ import annotations

import functools
import os
import warnings
from importlib import metadata
from types import ModuleType

import pluggy

from weakseg import hookspecs
from weakseg.registry import Registries, RegistrySink, Source

ENTRY_POINT_GROUP = "weakseg"


class PluginLoadWarning(UserWarning):
    """A plugin distribution could not be loaded."""


def _source_for(pm: pluggy.PluginManager, plugin: object) -> Source:
    module = getattr(plugin, "__name__", type(plugin).__name__)
    dist = getattr(pm, "weakseg_distributions", {}).get(id(plugin))
    return Source(distribution=dist or "(registered in code)", module=module)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    pm.weakseg_distributions = {}  # id(plugin) -> "name version"
    blocked = {n.strip() for n in os.environ.get("WEAKSEG_DISABLE_PLUGINS", "").split(",") if n.strip()}
    seen: set[str] = set()
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or ep.name in blocked or ep.name in seen:
                continue
            seen.add(ep.name)
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the host
                dist_name = dist.metadata["Name"]
                warnings.warn(
                    f"weakseg plugin {ep.name!r} from distribution {dist_name} {dist.version} "
                    f"could not be loaded and is skipped: {type(exc).__name__}: {exc}",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                continue
            pm.weakseg_distributions[id(plugin)] = f"{dist.metadata['Name']} {dist.version}"


def make_plugin_manager(
    *, extra_plugins: tuple[ModuleType | object, ...] = (), entry_points: bool = True
) -> pluggy.PluginManager:
    """A fresh plugin manager with the weakseg hookspecs, entry points and ``extra_plugins``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def fill_registries(pm: pluggy.PluginManager) -> Registries:
    """Call every registration hook once per plugin, with a sink bound to that plugin's source."""
    registries = Registries()
    for hook_name, kind in hookspecs.HOOK_TO_KIND.items():
        caller = getattr(pm.hook, hook_name)
        # Call implementations oldest-registered first so listings follow load order.
        for impl in reversed(caller.get_hookimpls()):
            sink = RegistrySink(registries[kind], _source_for(pm, impl.plugin))
            impl.function(registry=sink)
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
