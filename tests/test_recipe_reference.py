"""The recipe-key reference: generated from the schema, and ``docs/recipes.md`` is its current output."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path
from typing import Literal

import attrs

from weakseg import recipe_reference
from weakseg.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_docs_recipes_md_is_the_current_output_of_the_schema_command():
    proc = subprocess.run(
        [sys.executable, "-m", "weakseg", "recipes", "schema", "--markdown"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    committed = (REPO / "docs" / "recipes.md").read_text()
    assert committed == proc.stdout, (
        "docs/recipes.md is stale: regenerate it with `weakseg recipes schema --markdown > docs/recipes.md`"
    )


def test_known_keys_carry_type_default_and_documentation():
    keys = recipe_reference.keys()
    assert keys["train.steps"].type.startswith("int") and keys["train.steps"].default == "90000"
    assert keys["train.optimizer.lr"].default == "0.001" and "> 0" in keys["train.optimizer.lr"].type
    assert keys["eval.mask_threshold"].default == "auto"
    assert "binarised" in keys["eval.mask_threshold"].doc  # from the #: comment above the field
    assert keys["train.precision"].type == 'one of "fp32", "bf16", "auto"'
    assert keys["data.store"].default == "required"
    assert keys["data.target_cell_size"].type == "float or null"
    # component keys point to the registry instead of listing every component's arguments
    strategy = keys["strategy"]
    assert strategy.registry == "strategies" and "weakseg plugins" in strategy.doc
    assert keys["data.label_source"].default == "{type: centroids}"
    # nested sections are walked, optional ones included
    assert {"data.augment.flips", "data.synthetic.n_images", "model.init_from", "output.dir"} <= set(keys)


def test_every_schema_field_appears_once(capsys):
    from weakseg.recipe import Recipe

    def count(cls: type) -> int:
        """Fields of ``cls`` plus, recursively, those of the attrs sections it holds (not component specs)."""
        hints = typing.get_type_hints(cls)
        n = 0
        for f in attrs.fields(cls):
            n += 1
            inner = [t for t in (typing.get_args(hints[f.name]) or (hints[f.name],)) if t is not type(None)]
            if len(inner) == 1 and isinstance(inner[0], type) and attrs.has(inner[0]) and not hasattr(inner[0], "kind"):
                n += count(inner[0])
        return n

    assert len(recipe_reference.keys()) == count(Recipe)
    assert main(["recipes", "schema"]) == 0
    out = capsys.readouterr().out
    assert "  train.steps (int (>= 0), default 90000)" in out.splitlines()


def test_field_docs_prefer_metadata_then_comments_then_docstring():
    @attrs.frozen(kw_only=True)
    class Example:
        """An example section.

        Attributes:
            b: from the docstring,
                continued.
            c: docstring text that the metadata overrides.
        """

        #: from the comment
        a: int = 1
        b: Literal["x", "y"] = "x"
        c: float | None = attrs.field(default=None, metadata={"doc": "from the metadata"})
        d: tuple[str, ...] = ()

    docs = recipe_reference.field_docs(Example)
    assert docs == {"a": "from the comment", "b": "from the docstring, continued.", "c": "from the metadata", "d": ""}
    (section,) = recipe_reference.sections(Example, "example")
    by_path = {k.path: k for k in section.keys}
    assert by_path["example.b"].type == 'one of "x", "y"' and by_path["example.d"].type == "list of string"
    assert by_path["example.c"].type == "float or null" and by_path["example.c"].default == "null"


def test_every_recipe_key_is_documented():
    """A new schema field without a ``#:`` comment (or metadata doc) would leave a blank in docs/recipes.md."""
    from weakseg.recipe_reference import keys

    assert not [path for path, key in keys().items() if not key.doc]
