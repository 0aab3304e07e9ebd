"""Loading recipe files: YAML, ``extends`` chains, ``--set`` overrides, then validation and checks.

``extends: base.yaml`` inherits and overrides (paths relative to the extending file; a list merges
several, in order); ``--set a.b.c=value`` overrides from the command line. After structuring, each
strategy checks the recipe as a whole (:func:`check_recipe`), so a recipe the strategy cannot train
fails here, before any data is prepared.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from weakseg.errors import RecipeError
from weakseg.recipe.convert import _describe, structure
from weakseg.recipe.schema import Recipe


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a syntax error names the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found (run `weakseg recipes list` for the shipped ones)") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path}: the recipe is not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
            "save the file as UTF-8 (recipes are YAML text)"
        ) from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RecipeError(f"{where}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: YAML syntax error: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base``; a component whose ``type`` changes is replaced whole."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            if "type" in value and "type" in old and value["type"] != old["type"]:
                out[key] = copy.deepcopy(dict(value))
            else:
                out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file and resolve ``extends`` (recursively, relative to each file)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise RecipeError(f"{path}: 'extends' forms a cycle: {chain}")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parents = parent if isinstance(parent, list) else [parent]
    merged: dict[str, Any] = {}
    for p in parents:
        if not isinstance(p, str):
            raise RecipeError(f"{path}: recipe.extends: expected a file name, got {_describe(p)}")
        merged = deep_merge(merged, load_raw(path.parent / p, (*_seen, resolved)))
    return deep_merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; a leading ``recipe.`` is optional)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=100")
        parts = key.strip().split(".")
        if parts[0] == "recipe":
            parts = parts[1:]
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(["recipe", *parts[: i + 1]])
                raise RecipeError(f"--set {item!r}: {where} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data


def recipe_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """(key path, message) for each thing the recipe's strategy cannot work with, found without torch.

    A strategy config may define ``check(recipe) -> list of (key path, message)``, e.g. "this
    strategy trains a principal model, but ``recipe.model`` is empty"; configs without it accept
    every recipe that validates.
    """
    check = getattr(recipe.strategy.config, "check", None)
    return list(check(recipe)) if callable(check) else []


def raise_problems(problems: list[tuple[str, str]], origin: str = "") -> None:
    """Raise one :class:`RecipeError` with a ``key path: message`` line per problem (none: return)."""
    if problems:
        lines = "\n".join(f"{key}: {message}" for key, message in problems)
        raise RecipeError(f"{origin}:\n{lines}" if origin else lines)


def check_recipe(recipe: Recipe, origin: str = "") -> Recipe:
    """Raise :class:`RecipeError` listing every problem :func:`recipe_problems` finds; else return ``recipe``."""
    raise_problems(recipe_problems(recipe), origin)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, merge, override, validate and check a recipe file (see :func:`check_recipe`)."""
    data = apply_overrides(load_raw(path), overrides or [])
    try:
        recipe = structure(data, Recipe)
    except RecipeError as exc:
        raise RecipeError(f"{path}:\n{exc}") from None
    return check_recipe(recipe, origin=str(path))


def recipe_from_yaml_text(text: str, origin: str = "<checkpoint>") -> Recipe:
    """Validate a resolved recipe stored as YAML text (e.g. in a checkpoint)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{origin}: the stored recipe is not valid YAML: {exc}") from None
    try:
        return structure(data, Recipe)
    except RecipeError as exc:
        raise RecipeError(f"{origin}:\n{exc}") from None
