"""The ``weakseg`` command line: run | recipes | plugins | data | evaluate | predict | correct.

User errors (:class:`weakseg.WeaksegError`) print one message and exit with code 2, no traceback.
Subcommands of the data, evaluation and inference layers live in their own ``cli`` modules, each
with ``register(subparsers)``; they import heavy libraries only when run.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from weakseg import __version__
from weakseg.errors import WeaksegError

#: Modules that add subcommands: each has ``register(subparsers) -> None``.
SUBCOMMAND_MODULES = (
    "weakseg.engine.cli",
    "weakseg.data.cli",
    "weakseg.eval.cli",
    "weakseg.inference.cli",
    "weakseg.inference.correct_cli",
    "weakseg.inference.size_fit",  # weakseg size-model
)


def recipe_dirs() -> list[Path]:
    """Folders searched by ``weakseg recipes list``: ./recipes and the one beside the package."""
    here = Path(__file__).resolve().parent.parent / "recipes"
    dirs = [Path.cwd() / "recipes", here]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def _cmd_recipes_schema(args: argparse.Namespace) -> int:
    """Print every recipe key with its type, default and documentation (``docs/recipes.md`` is --markdown)."""
    from weakseg import recipe_reference

    print(recipe_reference.render_markdown() if args.markdown else recipe_reference.render_text(), end="")
    return 0


def _cmd_recipes_list(args: argparse.Namespace) -> int:
    import yaml

    rows = []
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            try:
                desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
            except Exception:  # noqa: BLE001 - listing must not fail on one bad file
                desc = "(unreadable YAML)"
            rows.append((str(path), str(desc).strip().splitlines()[0] if desc else ""))
    if args.json:
        print(json.dumps([{"path": p, "description": d} for p, d in rows], indent=2))
    else:
        width = max((len(p) for p, _ in rows), default=0)
        for p, d in rows:
            print(f"{p:<{width}}  {d}")
    return 0


def _cmd_recipes_check(args: argparse.Namespace) -> int:
    """Validate each recipe (schema and the strategy's own checks); warn about a store the run cannot find.

    A missing ``data.store`` is only a warning: the store may be imported on another machine or
    later. A recipe with ``data.synthetic`` makes its store itself, so it gets no warning.
    """
    from weakseg.data.store import open_store
    from weakseg.recipe import load_recipe

    failed = 0
    for file in args.files:
        try:
            recipe = load_recipe(file, args.set)
        except WeaksegError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"ok: {file} (recipe {recipe.name!r}, strategy {recipe.strategy.type!r})")
        if recipe.data.synthetic is None:
            try:
                open_store(recipe.data.store)  # reads zarr.json only; `weakseg run` would stop here
            except WeaksegError as exc:
                print(f"warning: {file}: recipe.data.store: {exc}", file=sys.stderr)
    return 2 if failed else 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from weakseg.plugins import registries

    regs = registries()
    if args.json:
        print(json.dumps(regs.as_json(), indent=2))
        return 0
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        for kind, reg in regs.items():
            print(f"[{kind}]")
            for e in reg:
                print(f"  {e.name:<28} {e.source}  {e.description}")
        return 0
    console = Console()
    for kind, reg in regs.items():
        table = Table(title=kind, title_justify="left", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("source")
        table.add_column("description")
        for e in reg:
            table.add_row(e.name, str(e.source), e.description)
        console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weakseg", description="Train cell segmentation models from weak labels.")
    parser.add_argument("--version", action="version", version=f"weakseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("recipes", help="list, check or describe recipes")
    rsub = p.add_subparsers(dest="recipes_command", metavar="ACTION")
    rsub.required = True
    pl = rsub.add_parser("list", help="list shipped recipes")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=_cmd_recipes_list)
    pc = rsub.add_parser("check", help="validate recipes without running them (exit 2 on error)")
    pc.add_argument("files", nargs="+", metavar="FILE")
    pc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    pc.set_defaults(func=_cmd_recipes_check)
    ps = rsub.add_parser("schema", help="every recipe key: dotted path, type, default, documentation")
    ps.add_argument("--markdown", action="store_true", help="as markdown tables (the text of docs/recipes.md)")
    ps.set_defaults(func=_cmd_recipes_schema)

    p = sub.add_parser("plugins", help="list every registered component and its source")
    p.add_argument("--json", action="store_true", help="machine-readable: registry -> [{name, source, description}]")
    p.set_defaults(func=_cmd_plugins)

    import importlib

    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return int(args.func(args) or 0)
    except WeaksegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
