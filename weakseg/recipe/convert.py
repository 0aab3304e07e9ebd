"""Structuring recipe data: strict scalars, registry-driven component specs, errors with key paths.

The converter turns plain YAML data into the schema's attrs classes; a ``{type: name, **kwargs}``
mapping becomes a :class:`~weakseg.recipe.specs.ComponentSpec` whose config is the class the
plugin registered under ``name``. Problems are collected by cattrs and reported one line each:
``recipe.train.steps: expected int, got 'ten'``.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from weakseg.errors import RecipeError, WeaksegError
from weakseg.recipe.specs import ComponentSpec
from weakseg.registry import close_matches

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

class _TypeMismatch(ValueError):
    pass


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        # YAML reads 9e4 as a string and 9.0e+4 as a float: accept whole numbers written that way.
        try:
            number = float(value) if isinstance(value, (str, float)) else None
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
        raise _TypeMismatch(f"expected int, got {_describe(value)}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, str):
        try:  # PyYAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _TypeMismatch(f"expected float, got {_describe(value)}")
    return float(value)


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise _TypeMismatch(f"expected true or false, got {_describe(value)}")
    return value


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _TypeMismatch(f"expected a string, got {_describe(value)}")
    return value


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(str, _strict_str)

    def is_literal(t: Any) -> bool:
        return typing.get_origin(t) is Literal

    def structure_literal(value: Any, t: Any) -> Any:
        choices = typing.get_args(t)
        if value in choices:
            return value
        names = [str(c) for c in choices]
        raise _TypeMismatch(
            f"expected one of {', '.join(repr(c) for c in choices)}, got {_describe(value)}"
            + close_matches(str(value), names)
        )

    conv.register_structure_hook_func(is_literal, structure_literal)

    def is_spec(t: Any) -> bool:
        return isinstance(t, type) and issubclass(t, ComponentSpec) and t is not ComponentSpec

    def structure_spec(value: Any, cls: type[ComponentSpec]) -> ComponentSpec:
        from weakseg.plugins import registries

        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, Mapping):
            raise _TypeMismatch(f"expected a mapping with 'type:' naming a component, got {_describe(value)}")
        if "type" not in value:
            reg = registries()[cls.kind]
            raise _TypeMismatch(f"missing 'type:' naming a {reg.noun} (one of: {', '.join(reg.names())})")
        name = value["type"]
        entry = registries()[cls.kind].get(str(name))
        kwargs = {k: v for k, v in value.items() if k != "type"}
        config = conv.structure(kwargs, entry.config_cls)
        return cls(type=entry.name, config=config)

    conv.register_structure_hook_func(is_spec, structure_spec)

    def unstructure_spec(spec: ComponentSpec) -> dict[str, Any]:
        return {"type": spec.type, **conv.unstructure(spec.config)}

    conv.register_unstructure_hook_func(is_spec, unstructure_spec)
    # tuples unstructure to lists so YAML stays plain
    conv.register_unstructure_hook(tuple, lambda t: [conv.unstructure(v) for v in t])
    return conv


converter = _make_converter()


# --------------------------------------------------------------------------------------------
# Error formatting: cattrs exception groups -> "recipe.a.b: message"
# --------------------------------------------------------------------------------------------


def _field_names(cls: type) -> list[str]:
    return [a.alias or a.name for a in attrs.fields(cls)] if attrs.has(cls) else []


def _leaf_message(exc: BaseException) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        fields = _field_names(exc.cl)
        parts = []
        for extra in sorted(exc.extra_fields):
            parts.append(f"unknown key {extra!r}{close_matches(extra, fields)}")
        return "; ".join(parts) + f" (allowed: {', '.join(fields)})"
    if isinstance(exc, KeyError) and exc.args:
        return f"required key {exc.args[0]!r} is missing"
    if isinstance(exc, WeaksegError | _TypeMismatch):
        return str(exc)
    if isinstance(exc, ValueError | TypeError):
        return f"invalid value: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _walk(exc: BaseException, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                name = getattr(note, "name", None)
                index = getattr(note, "index", None)
                if name is not None:
                    sub_path = f"{path}.{name}"
                    break
                if index is not None:
                    sub_path = f"{path}[{index!r}]" if not isinstance(index, int) else f"{path}[{index}]"
                    break
            _walk(sub, sub_path, out)
        return
    if isinstance(exc, ForbiddenExtraKeysError):
        out.append((path, _leaf_message(exc)))
        return
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            _walk(sub, path, out)
        return
    out.append((path, _leaf_message(exc)))


def format_structure_error(exc: BaseException, root: str = "recipe") -> str:
    """One line per problem: ``recipe.train.steps: expected int, got 'ten'``."""
    problems: list[tuple[str, str]] = []
    _walk(exc, root, problems)
    return "\n".join(f"{p}: {m}" for p, m in problems)


def structure(data: Any, cls: type, root: str = "recipe") -> Any:
    """Structure ``data`` into ``cls``; any problem raises :class:`RecipeError` with key paths."""
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        raise RecipeError(format_structure_error(exc, root)) from None
    except (WeaksegError, _TypeMismatch, ValueError, TypeError) as exc:
        raise RecipeError(f"{root}: {_leaf_message(exc)}") from None
