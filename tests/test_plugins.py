"""Plugin manager: entry points, in-process plugins, broken plugins only warn."""

from __future__ import annotations

import types
from importlib import metadata

import attrs
import pytest

import weakseg
from weakseg import plugins
from weakseg.hookspecs import hookimpl
from weakseg.plugins import PluginLoadWarning, fill_registries, make_plugin_manager


@attrs.frozen(kw_only=True)
class _Loss:
    """An in-process test loss."""

    def build(self):
        return lambda a, b: 0.0


def _module_plugin(name: str, register_name: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    @hookimpl
    def weakseg_register_consistency_losses(registry):
        registry.add(register_name, _Loss)

    mod.weakseg_register_consistency_losses = weakseg_register_consistency_losses
    return mod


def test_builtins_load_through_the_entry_point_group():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="weakseg")}
    # Built-ins are declared exactly like a third-party plugin would be.
    assert {"data", "backbones", "cks", "nishimura"} <= set(eps)
    regs = fill_registries(make_plugin_manager())
    cks = [e for e in regs.strategies if e.source.module == "weakseg_cks.plugin"]
    assert {"cks", "supervised", "mixed"} <= {e.name for e in cks}
    assert all(e.source.distribution == f"weakseg {weakseg.__version__}" for e in cks)
    assert "folder" in regs.importers and "centroids" in regs.label_sources


def test_in_process_plugin_is_listed_with_its_module(plugin_registration):
    plugin_registration(_module_plugin("my_lab_plugin", "my-loss"))
    entry = plugins.registries().consistency_losses.get("my-loss")
    assert entry.source.module == "my_lab_plugin"
    assert entry.description == "An in-process test loss."


def test_same_name_from_two_plugins_is_an_error_naming_both(plugin_registration):
    from weakseg.registry import DuplicateComponentError

    plugin_registration(_module_plugin("plugin_one", "clash"))
    plugin_registration(_module_plugin("plugin_two", "clash"))
    with pytest.raises(DuplicateComponentError, match="plugin_one.*plugin_two|plugin_two.*plugin_one"):
        plugins.registries()


def test_broken_entry_point_warns_with_distribution_and_others_keep_working(monkeypatch, tmp_path):
    dist_dir = tmp_path / "brokenplug-0.1.dist-info"
    dist_dir.mkdir()
    (dist_dir / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (dist_dir / "entry_points.txt").write_text("[weakseg]\nbroken = brokenplug_missing_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginLoadWarning, match=r"brokenplug 0\.1.*ModuleNotFoundError"):
        pm = make_plugin_manager()
    regs = fill_registries(pm)
    assert len(regs.importers) > 0  # built-ins still registered


def test_blocked_plugins_are_skipped(monkeypatch):
    monkeypatch.setenv("WEAKSEG_DISABLE_PLUGINS", "nishimura")
    regs = fill_registries(make_plugin_manager())
    assert not any("weakseg_nishimura" in str(e.source) for e in regs.strategies)
    assert "weakseg_nishimura" not in {getattr(p, "__name__", "") for p in make_plugin_manager().get_plugins()}


def test_the_core_data_plugin_cannot_be_disabled(monkeypatch):
    monkeypatch.setenv("WEAKSEG_DISABLE_PLUGINS", "data, nishimura")
    with pytest.warns(PluginLoadWarning, match=r"'data' is part of weakseg's core.*cannot be disabled"):
        pm = make_plugin_manager()
    regs = fill_registries(pm)
    centroids = regs.label_sources.get("centroids")
    assert centroids.source.module == "weakseg.data.plugin"
    assert centroids.source.distribution == f"weakseg {weakseg.__version__}"
    assert "folder" in regs.importers
    assert "nishimura" not in regs.strategies  # the other names are still honoured


def test_each_plugin_is_called_once_per_hook_with_its_own_source(plugin_registration):
    calls = []

    class Counting:
        @hookimpl
        def weakseg_register_importers(self, registry):
            calls.append(registry.kind)
            registry.add("counting-importer", _Loss)

    plugin_registration(Counting())
    entry = plugins.registries().importers.get("counting-importer")
    assert calls == ["importers"]
    assert entry.source.distribution == "(registered in code)" and entry.source.module == "Counting"
