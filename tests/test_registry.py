"""Registry: provenance, duplicates naming both sources, did-you-mean for unknown names."""

from __future__ import annotations

import attrs
import pytest

from weakseg.errors import WeaksegError
from weakseg.registry import DuplicateComponentError, Registries, Registry, RegistrySink, Source, UnknownComponentError


@attrs.frozen(kw_only=True)
class _Conf:
    """A tiny component for registry tests.

    More text that is not part of the description.
    """

    depth: int = 2

    def build(self, **context):
        return ("built", self.depth, context)


def test_add_records_source_and_first_docstring_line():
    reg = Registry("backbones")
    RegistrySink(reg, Source("pkg-a 1.0", "pkg_a.plugin")).add("net", _Conf)
    entry = reg.get("net")
    assert entry.config_cls is _Conf
    assert str(entry.source) == "pkg-a 1.0 (pkg_a.plugin)"
    assert entry.description == "A tiny component for registry tests."
    assert reg.create("net", depth=5).build(x=1) == ("built", 5, {"x": 1})


def test_duplicate_name_names_both_sources():
    reg = Registry("collaborators")
    reg.add("unet", _Conf, source=Source("pkg-a 1.0", "a.plugin"))
    with pytest.raises(DuplicateComponentError) as info:
        reg.add("unet", _Conf, source=Source("pkg-b 2.0", "b.plugin"))
    msg = str(info.value)
    assert "pkg-a 1.0 (a.plugin)" in msg and "pkg-b 2.0 (b.plugin)" in msg
    assert isinstance(info.value, WeaksegError)


def test_unknown_name_suggests_close_match_and_points_to_plugins_command():
    reg = Registry("backbones")
    reg.add("convnext_small", _Conf, source=Source("x", "y"))
    reg.add("convnext_tiny", _Conf, source=Source("x", "y"))
    with pytest.raises(UnknownComponentError) as info:
        reg.get("convnext_smal", where="recipe.model.backbone")
    msg = str(info.value)
    assert msg.startswith("recipe.model.backbone: unknown backbone 'convnext_smal'")
    assert "did you mean 'convnext_small'" in msg
    assert "weakseg plugins" in msg


def test_non_attrs_or_buildless_components_are_refused():
    reg = Registry("strategies")

    class Plain:
        def build(self):
            return None

    with pytest.raises(TypeError, match="attrs class with a build"):
        reg.add("plain", Plain, source=Source("x", "y"))


def test_registries_cover_every_kind_and_serialise():
    regs = Registries()
    regs.importers.add("folder", _Conf, source=Source("d", "m"))
    data = regs.as_json()
    assert set(data) == {
        "backbones",
        "principal_heads",
        "collaborators",
        "consistency_losses",
        "label_sources",
        "strategies",
        "importers",
    }
    expected = {"name": "folder", "source": "d (m)", "description": "A tiny component for registry tests."}
    assert data["importers"] == [expected]


def test_one_kinds_table_drives_hooks_and_recipe_specs():
    from weakseg import hookspecs
    from weakseg.plugins import make_plugin_manager
    from weakseg.recipe import SPEC_CLASSES
    from weakseg.registry import KINDS, REGISTRY_KINDS

    assert list(REGISTRY_KINDS) == [k.name for k in KINDS]
    assert list(hookspecs.HOOK_TO_KIND.values()) == list(REGISTRY_KINDS)
    assert set(SPEC_CLASSES) == set(REGISTRY_KINDS)
    pm = make_plugin_manager(entry_points=False)
    for kind in KINDS:
        caller = getattr(pm.hook, kind.hook)
        assert caller.spec is not None and caller.spec.argnames == ("registry",)
        assert getattr(hookspecs, kind.hook).__doc__ == kind.summary
