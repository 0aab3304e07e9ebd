"""Real-data results: every strategy on every dataset of ``../shared/data``, and ``docs/results.md``.

For each dataset (Usiigaci phase contrast, Kromp fluorescence nuclei) this script

1. imports the images into a weakseg store (skipped when the store is already there), with the
   held-out test part fixed by the import command (Usiigaci sets 31-40; a seeded 20 % of each Kromp
   diagnosis group);
2. runs the CPU-sized recipes ``{cks,supervised,nishimura}_<dataset>_cpu.yaml`` and the training-free
   ``watershed_<dataset>.yaml`` with ``weakseg run``, all into one output folder and one MLflow
   experiment (``--experiment``), with ``eval.split=test`` so the run's final evaluation is the
   held-out test split, logged as ``test/AP50``, ``test/dice``, ... (no model selection on it: the
   periodic evaluation is switched off and the last checkpoint is scored);
3. writes one table (markdown, CSV and JSON in ``--out``): AP50, AP75, mAP, Dice, F1 per strategy
   and dataset, training seconds and evaluation seconds, with CKS's share of the supervised AP50
   and its Dice difference to Nishimura-1;
4. calibrates each trained model's mask threshold on its *validation* split (``weakseg evaluate
   --split val --sweep-mask-threshold ...``, best AP50) and scores the test split again at that
   threshold: a second table, since masks trained for a short budget are often binarised better below
   0.5 (``--no-calibrate`` skips it; the test split plays no part in the choice);
5. after a run of every dataset and strategy (or with ``--docs FILE``), stores the figures in
   ``benchmarks/results/accuracy.json`` and rewrites the generated part of ``docs/results.md`` from
   them (between the ``<!-- accuracy.py:begin -->`` / ``<!-- accuracy.py:end -->`` markers; the
   discussion around it is kept as written). ``--merge`` re-runs some cells (e.g. one strategy after
   its recipe changed) and replaces only those rows of the stored figures; the page lists every
   command its rows came from.

Each finished cell is recorded in ``<out>/results/<recipe>.json``; a killed benchmark started again
skips those and resumes an unfinished run from its last checkpoint (``weakseg run --resume``).

Usage (from the repository root, after ``pip install -e .``)::

    python benchmarks/accuracy.py                            # the recipes as shipped
    python benchmarks/accuracy.py --steps 800                # the budget of docs/results.md
    python benchmarks/accuracy.py --datasets kromp --strategies cks,supervised
    python benchmarks/accuracy.py --steps 800 --strategies cks --merge   # replace the CKS rows only
    python benchmarks/accuracy.py --render-only              # docs/results.md from the stored figures
    python benchmarks/accuracy.py --render-only --check      # exit 1 when docs/results.md is stale
    mlflow ui --backend-store-uri sqlite:///runs/accuracy/mlflow.db

Metric definitions are those of ``weakseg evaluate`` (AP at IoU 0.5 / 0.75 and mean over 0.5:0.95
as in CKS paper eq. 9, area-weighted instance Dice eq. 15, F1 at IoU 0.5).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: The figures docs/results.md is rendered from (written by a full run, read by --render-only).
STORED_RESULTS = REPO / "benchmarks" / "results" / "accuracy.json"
RESULTS_DOC = REPO / "docs" / "results.md"
BEGIN, END = "<!-- accuracy.py:begin -->", "<!-- accuracy.py:end -->"

#: How each dataset's store is imported (the same commands as the recipes' descriptions).
DATASETS: dict[str, dict[str, Any]] = {
    "usiigaci": {
        "folder": "usiigaci",
        "store": "stores/usiigaci.zarr",
        "import": ["--set", "splits.test=set(3[1-9]|40)", "--set", "val_fraction=0.2"],
        "title": "Usiigaci (phase contrast, 40 images, test = sets 31-40)",
    },
    "kromp": {
        "folder": "kromp",
        "store": "stores/kromp.zarr",
        "import": [
            "--set",
            "group_column=Diagnosis",
            "--set",
            "test_fraction=0.2",
            "--set",
            "val_fraction=0.2",
            "--set",
            "split_seed=0",
        ],
        "title": "Kromp (fluorescence nuclei, 42 images, test = seeded 20 % per diagnosis)",
    },
}

#: strategy -> recipe file name pattern; ``trained`` says whether --steps applies.
STRATEGIES: dict[str, dict[str, Any]] = {
    "cks": {"recipe": "cks_{}_cpu.yaml", "trained": True, "label": "CKS (points only)"},
    "supervised": {"recipe": "supervised_{}_cpu.yaml", "trained": True, "label": "supervised (full masks)"},
    "nishimura": {"recipe": "nishimura_{}_cpu.yaml", "trained": True, "label": "Nishimura-1 (points only)"},
    "watershed": {"recipe": "watershed_{}.yaml", "trained": False, "label": "seeded watershed (no training)"},
}

METRICS = ("AP50", "AP75", "mAP", "dice", "F1")

#: Mask thresholds tried on the validation split (step 4).
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5)


def weakseg_cmd() -> list[str]:
    return [sys.executable, "-m", "weakseg"]


def ensure_store(name: str, data_root: Path) -> Path:
    """Import ``name`` into its store unless a complete store is already there."""
    spec = DATASETS[name]
    store = REPO / spec["store"]
    if (store / "zarr.json").exists():
        return store
    source = data_root / spec["folder"]
    if not source.is_dir():
        raise SystemExit(f"{source} is missing: the real-data benchmark needs ../shared/data ({name})")
    cmd = [*weakseg_cmd(), "data", "import", "folder", str(source), "-o", str(store), *spec["import"]]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    return store


def write_page(doc: Path, text: str, check: bool = False) -> int:
    """Write a results page, or with ``check`` only say whether it differs from ``text`` (exit code 1 if so)."""
    if check:
        stale = not doc.exists() or doc.read_text() != text
        print(f"{doc} is {'stale' if stale else 'up to date'}", file=sys.stderr if stale else sys.stdout)
        return int(stale)
    doc.write_text(text)
    return 0


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """The newest ``eval/metrics-step-N.json`` of a run folder (its final evaluation)."""
    files = sorted((run_dir / "eval").glob("metrics-step-*.json"))
    if not files:
        raise RuntimeError(f"{run_dir} has no evaluation output")
    return json.loads(files[-1].read_text())


def run_one(dataset: str, strategy: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train (if the strategy trains) and score one recipe on the test split; cached in results/."""
    recipe = REPO / "recipes" / STRATEGIES[strategy]["recipe"].format(dataset)
    name = recipe.stem
    result_file = args.out / "results" / f"{name}.json"
    if result_file.exists() and not args.force:
        result = json.loads(result_file.read_text())
        if args.calibrate and STRATEGIES[strategy]["trained"] and "cal_AP50" not in result:
            result.update(calibrate(dataset, name, args))
            result_file.write_text(json.dumps(result, indent=2))
        return result
    cmd = [
        *weakseg_cmd(),
        "run",
        str(recipe),
        "--output",
        str(args.out),
        "--resume",
        "--set",
        f"output.experiment={args.experiment}",
        "--set",
        f"eval.split={args.split}",
        "--set",
        "eval.max_images=null",
        "--set",
        "train.eval_every=0",
    ]
    if STRATEGIES[strategy]["trained"] and args.steps:
        cmd += ["--set", f"train.steps={args.steps}"]
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=None, text=True)
    wall = time.perf_counter() - t0
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: weakseg run failed with exit code {proc.returncode}")
    # "run 'NAME': step S (N this time, T s)" -- training seconds as the trainer measured them
    m = re.search(r"\((\d+) this time, ([\d.]+) s\)", proc.stdout)
    train_seconds = float(m.group(2)) if m else 0.0
    overall = final_metrics(args.out / name)["overall"]
    run_id = re.search(r"MLflow run (\w+)", proc.stdout)
    result = {
        "dataset": dataset,
        "strategy": strategy,
        "recipe": f"recipes/{recipe.name}",
        "steps": args.steps if (STRATEGIES[strategy]["trained"] and args.steps) else None,
        **{k: overall.get(k) for k in METRICS},
        "n_images": overall.get("n_images"),
        "n_gt": overall.get("n_gt"),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(wall - train_seconds, 1),
        "mlflow_run_id": run_id.group(1) if run_id else None,
        **machine_info(),
    }
    print(f"{name}: finished; 1-minute system load {os.getloadavg()[0]:.2f} (CPU contention slows the timings)")
    if args.calibrate and STRATEGIES[strategy]["trained"]:
        result.update(calibrate(dataset, name, args))
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=2))
    return result


def evaluate_json(run_dir: Path, store: Path, *extra: str) -> dict[str, Any]:
    """``weakseg evaluate RUN STORE --json ...`` as a dict, each image at the store's measured cell size
    (``--known-sizes``: how the table's figures are scored, whatever sizing a checkpoint would choose)."""
    cmd = [*weakseg_cmd(), "evaluate", str(run_dir), str(store), "--json", "--no-progress", "--known-sizes", *extra]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout)


def calibrate(dataset: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The mask threshold with the best validation AP50, and the test metrics at it (``cal_*``)."""
    run_dir, store = args.out / name, REPO / DATASETS[dataset]["store"]
    sweep = [str(t) for t in SWEEP]
    val = evaluate_json(run_dir, store, "--split", "val", "--sweep-mask-threshold", *sweep)
    best = val["best_mask_threshold"]
    sweep_rows = {r["mask_threshold"]: r for r in val["mask_threshold_sweep"]}
    best_val = sweep_rows.get(best, val["overall"])
    test = evaluate_json(run_dir, store, "--split", args.split, "--mask-threshold", str(best))
    return {
        "mask_threshold": best,
        "val_AP50_at_threshold": best_val["AP50"],
        **{f"cal_{k}": test["overall"].get(k) for k in METRICS},
    }


def machine_info() -> dict[str, Any]:
    """Where a cell ran: date, CPU cores and type, and the GPU when torch sees one."""
    import datetime
    import platform

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency of weakseg
        pass
    return info


def comparisons(rows: list[dict[str, Any]]) -> list[str]:
    """Per dataset: CKS's share of the supervised AP50 and its Dice difference to Nishimura-1."""
    lines = []
    by = {(r["dataset"], r["strategy"]): r for r in rows}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        cks, sup, nis = (by.get((dataset, s)) for s in ("cks", "supervised", "nishimura"))
        parts = []
        if cks and sup and sup["AP50"]:
            ratio = cks["AP50"] / sup["AP50"]
            parts.append(f"CKS AP50 {cks['AP50']:.3f} = {100 * ratio:.0f} % of supervised {sup['AP50']:.3f}")
        if cks and nis:
            gap = cks["dice"] - nis["dice"]
            parts.append(f"CKS Dice {cks['dice']:.3f} vs Nishimura-1 {nis['dice']:.3f} ({gap:+.3f})")
        if parts:
            lines.append(f"{dataset}: " + "; ".join(parts))
    return lines


def _cell(value: Any) -> str:
    return f"{value:.3f}" if value is not None else "-"


def setting(rows: list[dict[str, Any]]) -> str:
    """The training budget, split and hardware of a table, in one sentence."""
    steps = sorted({r["steps"] for r in rows if r.get("steps")})
    budget = f"train.steps={steps[0]} for every trained recipe" if len(steps) == 1 else "the recipes' own train.steps"
    machines = sorted({(r.get("cpus"), r.get("cpu"), r.get("gpu")) for r in rows if r.get("cpus")}, key=str)
    hardware = "; ".join(
        f"{cpus} CPU cores ({cpu})" + (f", GPU {gpu}" if gpu else ", no GPU") for cpus, cpu, gpu in machines
    )
    dates = sorted({r["date"] for r in rows if r.get("date")})
    when = f"measured {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "") if dates else ""
    return "; ".join(p for p in (budget, "test split", hardware, when) if p)


def tables(rows: list[dict[str, Any]]) -> str:
    """The results table, the comparisons and, when calibrated, the table at the validation threshold."""
    lines = [
        "| dataset | strategy | AP50 | AP75 | mAP | Dice | F1 | train s | eval s |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        cells = [r["dataset"], STRATEGIES[r["strategy"]]["label"], *(_cell(r[k]) for k in METRICS)]
        cells += [f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {s}" for s in comparisons(rows)) + "\n"
    calibrated = [r for r in rows if r.get("cal_AP50") is not None]
    if calibrated:
        lines = [
            "",
            "Mask threshold chosen on each model's validation split (best AP50 of "
            f"{', '.join(str(t) for t in SWEEP)}, `weakseg evaluate --split val --sweep-mask-threshold`), "
            "test split scored again at it:",
            "",
            "| dataset | strategy | mask thr | AP50 | AP75 | mAP | Dice | F1 |",
            "|" + "---|" * 8,
        ]
        for r in calibrated:
            cells = [r["dataset"], STRATEGIES[r["strategy"]]["label"], f"{r['mask_threshold']:g}"]
            cells += [_cell(r["cal_" + k]) for k in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        cal_rows = [{**r, **{k: r.get("cal_" + k, r[k]) for k in METRICS}} for r in rows]
        text += "\n".join(lines) + "\n\n" + "\n".join(f"- {s}" for s in comparisons(cal_rows)) + "\n"
    return text


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    """``accuracy.md|json|csv`` in the output folder; returns the markdown."""
    table = setting(rows) + "\n\n" + tables(rows)
    (out / "accuracy.md").write_text(table)
    (out / "accuracy.json").write_text(json.dumps(rows, indent=2))
    with open(out / "accuracy.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    return table


def stored_commands(stored: dict[str, Any]) -> list[str]:
    """The commands the stored rows came from, oldest first (one for a whole-grid run)."""
    return list(stored.get("commands") or [stored["command"]])


def docs_section(stored: dict[str, Any]) -> str:
    """The generated part of docs/results.md: the command(s), the setting and the tables."""
    rows = stored["rows"]
    commands = stored_commands(stored)
    if len(commands) == 1:
        made_by = f"Command: `{commands[0]}`"
    else:
        made_by = "Commands: `" + commands[0] + "`, then (replacing the rows of the cells it ran) " + ", then ".join(
            f"`{c}`" for c in commands[1:]
        )
    return "\n".join(
        [
            BEGIN,
            "<!-- written by `python benchmarks/accuracy.py` from benchmarks/results/accuracy.json; "
            "regenerate with `python benchmarks/accuracy.py --render-only` -->",
            "",
            f"{made_by}. Setting: {setting(rows)}.",
            "",
            tables(rows).rstrip("\n"),
            END,
        ]
    )


def render_docs(stored: dict[str, Any], doc: Path = RESULTS_DOC) -> str:
    """``doc`` with its generated part replaced (a new page holding only that part if it has none)."""
    section = docs_section(stored)
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        return before + section + rest.split(END, 1)[1]
    return f"# Results\n\n{section}\n{text}"


def merge_rows(stored: dict[str, Any], rows: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """``stored`` with the rows of the same (dataset, strategy) as ``rows`` replaced, in their old order
    (new cells appended), and ``command`` added to the commands the page lists."""
    fresh = {(r["dataset"], r["strategy"]): r for r in rows}
    merged = [fresh.pop((r["dataset"], r["strategy"]), r) for r in stored["rows"]]
    return {"commands": [*stored_commands(stored), command], "rows": merged + list(fresh.values())}


def store_results(
    rows: list[dict[str, Any]], argv: list[str] | None, path: Path, merge: bool = False
) -> dict[str, Any]:
    """The figures and the command that made them, as a results page is rendered from them; with
    ``merge`` the figures already stored at ``path`` keep every row this run did not replace."""
    command = " ".join(["python benchmarks/accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    if merge and path.exists():
        stored = merge_rows(json.loads(path.read_text()), rows, command)
    else:
        stored = {"command": command, "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2) + "\n")
    return stored


def render_only(args: argparse.Namespace) -> int:
    """Rewrite (or with --check, compare) the docs page from stored figures, without training."""
    stored = json.loads(args.results.read_text())
    if isinstance(stored, list):  # an accuracy.json of an output folder: rows without the command
        stored = {"command": "python benchmarks/accuracy.py", "rows": stored}
    text = render_docs(stored, args.docs)
    if args.check:
        if not args.docs.exists() or args.docs.read_text() != text:
            print(f"{args.docs} is stale: run `python benchmarks/accuracy.py --render-only`", file=sys.stderr)
            return 1
        print(f"{args.docs} is up to date with {args.results}")
        return 0
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text(text)
    print(f"wrote {args.docs} from {args.results}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "accuracy")
    parser.add_argument("--experiment", default="weakseg-accuracy")
    parser.add_argument("--datasets", default="kromp,usiigaci")
    parser.add_argument("--strategies", default="cks,supervised,nishimura,watershed")
    parser.add_argument("--steps", type=int, default=None, help="train.steps for every trained recipe")
    parser.add_argument("--split", default="test")
    parser.add_argument("--force", action="store_true", help="re-run cells that already have results")
    parser.add_argument(
        "--no-calibrate", dest="calibrate", action="store_false",
        help="skip choosing each trained model's mask threshold on its validation split",
    )
    parser.add_argument(
        "--docs", type=Path, default=None,
        help=f"results page to update (default {RESULTS_DOC.relative_to(REPO)}, after a run of the whole grid)",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="no training: rewrite the results page from --results"
    )
    parser.add_argument("--results", type=Path, default=STORED_RESULTS, help="figures read by --render-only")
    parser.add_argument("--check", action="store_true", help="with --render-only: exit 1 if the page is stale")
    parser.add_argument(
        "--merge", action="store_true",
        help="replace only this run's cells in the stored figures and rewrite the results page",
    )
    args = parser.parse_args(argv)
    for name in [d for d in args.datasets.split(",") if d] + [s for s in args.strategies.split(",") if s]:
        if name not in DATASETS and name not in STRATEGIES:
            parser.error(
                f"unknown dataset or strategy {name!r} (datasets: {', '.join(DATASETS)}; "
                f"strategies: {', '.join(STRATEGIES)})"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        args.docs = args.docs or RESULTS_DOC
        return render_only(args)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = [d for d in args.datasets.split(",") if d]
    strategies = [s for s in args.strategies.split(",") if s]
    rows = []
    for dataset in datasets:
        ensure_store(dataset, args.data)
        for strategy in strategies:
            rows.append(run_one(dataset, strategy, args))
            print(write_table(rows, args.out), flush=True)
    print(f"table: {args.out / 'accuracy.md'}; MLflow: sqlite:///{args.out / 'mlflow.db'}")
    whole_grid = set(datasets) == set(DATASETS) and set(strategies) == set(STRATEGIES)
    if args.docs is not None or whole_grid or args.merge:
        doc = (args.docs or RESULTS_DOC).resolve()
        figures = STORED_RESULTS if doc == RESULTS_DOC else doc.with_suffix(".json")
        doc.write_text(render_docs(store_results(rows, argv, figures, merge=args.merge), doc))
        print(f"results page: {doc} (figures in {figures})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
