"""Named component registries with provenance and did-you-mean errors.

A component is registered as an attrs *config class*: calling the class with keyword arguments
validates them (this is what a recipe's ``{type: name, **kwargs}`` turns into) and the config's
``build(**context)`` method makes the runtime object. Config classes stay cheap to import; heavy
libraries (torch, timm) are imported inside ``build``.

Each registry records where an entry came from (distribution and module), refuses a second entry
with the same name (naming both sources) and answers unknown names with close matches.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator
from typing import Any

import attrs

from weakseg.errors import WeaksegError


@attrs.frozen
class Kind:
    """One registry: its key (``backbones``), the noun used in messages and what a plugin registers there."""

    name: str
    noun: str
    summary: str

    @property
    def hook(self) -> str:
        """The pluggy hook a plugin implements to fill this registry (see :mod:`weakseg.hookspecs`)."""
        return f"weakseg_register_{self.name}"


#: Every registry, in the order ``weakseg plugins`` lists them. The hook specifications
#: (:mod:`weakseg.hookspecs`) and the recipe's component specs (:mod:`weakseg.recipe.specs`) derive from it.
KINDS: tuple[Kind, ...] = (
    Kind("backbones", "backbone", "Register feature-pyramid backbones (image -> multi-scale features)."),
    Kind(
        "principal_heads",
        "principal head",
        "Register principal models built on a backbone (image -> ``Instances``).",
    ),
    Kind(
        "collaborators",
        "collaborator",
        "Register pixel-level collaborator networks (image -> foreground/border logits).",
    ),
    Kind(
        "consistency_losses",
        "consistency loss",
        "Register losses that tie a principal model and a collaborator together.",
    ),
    Kind(
        "label_sources",
        "label source",
        "Register label sources that make point labels (from masks, nuclei, CSV files, ...).",
    ),
    Kind("strategies", "strategy", "Register training strategies (CKS, supervised, baselines, ...)."),
    Kind("importers", "data importer", "Register data importers that turn user data into a weakseg zarr store."),
)

#: registry kind -> the noun used in messages.
REGISTRY_KINDS: dict[str, str] = {kind.name: kind.noun for kind in KINDS}


@attrs.frozen
class Source:
    """Where a registry entry came from."""

    distribution: str
    module: str

    def __str__(self) -> str:
        return f"{self.distribution} ({self.module})"


@attrs.frozen
class Entry:
    """One registered component: its name, config class, provenance and one-line description."""

    name: str
    config_cls: type
    source: Source
    description: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "source": str(self.source), "description": self.description}


class UnknownComponentError(WeaksegError):
    """An unknown component name was asked for."""


class DuplicateComponentError(WeaksegError):
    """Two plugins registered the same name in one registry."""


def _first_line(text: str | None) -> str:
    text = inspect.cleandoc(text or "")
    return text.splitlines()[0] if text else ""


def close_matches(word: str, candidates: list[str]) -> str:
    """Return "; did you mean 'x'?" for the closest candidate (several only when tied), else ""."""
    hits = difflib.get_close_matches(word, candidates, n=5, cutoff=0.6)
    if not hits:
        return ""
    ratio = [difflib.SequenceMatcher(None, word, h).ratio() for h in hits]
    best = [h for h, r in zip(hits, ratio, strict=True) if r >= max(ratio) - 1e-9]
    return "; did you mean " + " or ".join(repr(h) for h in best) + "?"


class Registry:
    """name -> component config class, with provenance.

    Plugins receive a :class:`RegistrySink` bound to their source (see :mod:`weakseg.plugins`)
    and call ``sink.add(name, ConfigClass)``.
    """

    def __init__(self, kind: str) -> None:
        if kind not in REGISTRY_KINDS:
            raise ValueError(f"unknown registry kind {kind!r}")
        self.kind = kind
        self.noun = REGISTRY_KINDS[kind]
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, config_cls: type, *, source: Source, description: str | None = None) -> None:
        """Register ``config_cls`` under ``name``; a name taken by another source is an error."""
        if not name or not isinstance(name, str) or name != name.strip():
            raise DuplicateComponentError(f"{source}: invalid {self.noun} name {name!r}")
        if not attrs.has(config_cls) or not callable(getattr(config_cls, "build", None)):
            raise TypeError(
                f"{source}: {self.noun} {name!r} must be an attrs class with a build() method, got {config_cls!r}"
            )
        if name in self._entries:
            other = self._entries[name].source
            raise DuplicateComponentError(
                f"{self.noun} {name!r} is registered twice: by {other} and by {source}. "
                "Uninstall one of the two plugin distributions or ask its author to rename the component."
            )
        desc = description if description is not None else _first_line(config_cls.__doc__)
        self._entries[name] = Entry(name=name, config_cls=config_cls, source=source, description=desc)

    def get(self, name: str, *, where: str = "") -> Entry:
        """Look ``name`` up; unknown names raise with close matches and a pointer to ``weakseg plugins``."""
        try:
            return self._entries[name]
        except KeyError:
            prefix = f"{where}: " if where else ""
            hint = close_matches(str(name), list(self._entries))
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownComponentError(
                f"{prefix}unknown {self.noun} {name!r}{hint} "
                f"(known: {known}; run `weakseg plugins` to see every component and its source)"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Make a config instance for ``name`` from keyword arguments (a shortcut for Python users)."""
        return self.get(name).config_cls(**kwargs)


class RegistrySink:
    """The object a plugin's ``weakseg_register_<kind>`` hook receives: ``add`` with its source bound."""

    def __init__(self, registry: Registry, source: Source) -> None:
        self._registry = registry
        self._source = source

    @property
    def kind(self) -> str:
        return self._registry.kind

    def add(self, name: str, config_cls: type, *, description: str | None = None) -> type:
        """Register ``config_cls`` under ``name``; returns the class so it can be used as a helper."""
        self._registry.add(name, config_cls, source=self._source, description=description)
        return config_cls


class Registries:
    """All registries of one plugin manager, addressable as attributes or by kind."""

    def __init__(self) -> None:
        self._by_kind = {kind: Registry(kind) for kind in REGISTRY_KINDS}

    def __getitem__(self, kind: str) -> Registry:
        return self._by_kind[kind]

    def __getattr__(self, kind: str) -> Registry:
        try:
            return self.__dict__["_by_kind"][kind]
        except KeyError:
            raise AttributeError(kind) from None

    def items(self) -> list[tuple[str, Registry]]:
        return list(self._by_kind.items())

    def as_json(self) -> dict[str, list[dict[str, str]]]:
        return {kind: [e.as_dict() for e in reg] for kind, reg in self._by_kind.items()}
