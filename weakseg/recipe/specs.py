"""Component specs: a recipe's ``{type: name, **kwargs}`` as (registered name, validated config).

Each spec class names the registry it draws from (``kind``, one of
:data:`weakseg.registry.REGISTRY_KINDS`); :data:`SPEC_CLASSES` maps every kind to its spec class.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from weakseg.registry import REGISTRY_KINDS

#: registry kind -> the spec class whose ``type:`` names an entry of that registry.
SPEC_CLASSES: dict[str, type[ComponentSpec]] = {}


@attrs.frozen
class ComponentSpec:
    """A registry entry chosen by name plus its validated config. ``build(**ctx)`` makes it."""

    kind: ClassVar[str] = ""
    type: str
    config: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind not in REGISTRY_KINDS:
            known = ", ".join(REGISTRY_KINDS)
            raise TypeError(f"{cls.__name__}.kind must be a registry kind ({known}), got {cls.kind!r}")
        SPEC_CLASSES.setdefault(cls.kind, cls)

    def build(self, **context: Any) -> Any:
        return self.config.build(**context)

    def __getattr__(self, name: str) -> Any:
        # spec.sigma reads spec.config.sigma: recipes read naturally in code.
        if name.startswith("_") or name in ("type", "config"):
            raise AttributeError(name)
        return getattr(self.config, name)

    @classmethod
    def of(cls, name: str, **kwargs: Any) -> ComponentSpec:
        """Make a spec in code: ``LossSpec.of("linear")``; validates like a recipe would (RecipeError)."""
        from weakseg.recipe.convert import structure

        return structure({"type": name, **kwargs}, cls, root=f"{cls.kind}[{name!r}]")


class BackboneSpec(ComponentSpec):
    kind = "backbones"


class HeadSpec(ComponentSpec):
    kind = "principal_heads"


class CollaboratorSpec(ComponentSpec):
    kind = "collaborators"


class LossSpec(ComponentSpec):
    kind = "consistency_losses"


class LabelSourceSpec(ComponentSpec):
    kind = "label_sources"


class StrategySpec(ComponentSpec):
    kind = "strategies"


class ImporterSpec(ComponentSpec):
    kind = "importers"


def spec_factory(cls: type[ComponentSpec], name: str, **kwargs: Any) -> Any:
    """An attrs default factory for a spec field: ``attrs.field(factory=spec_factory(LossSpec, "linear"))``."""
    return lambda: cls.of(name, **kwargs)
