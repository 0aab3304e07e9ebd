"""Real-data results table (issue 8): every strategy on every dataset of ``../shared/data``.

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
   and dataset, training seconds and evaluation seconds, and checks the issue-8 bar: points-only CKS
   reaches >= 90 % of the supervised AP50 and beats Nishimura-1 by >= 0.05 Dice;
4. calibrates each trained model's mask threshold on its *validation* split (``weakseg evaluate
   --split val --sweep-mask-threshold ...``, best AP50) and scores the test split again at that
   threshold: a second table, since masks trained for a short budget are often binarised better below
   0.5 (``--no-calibrate`` skips it; the test split plays no part in the choice).

Each finished cell is recorded in ``<out>/results/<recipe>.json``; a killed benchmark started again
skips those and resumes an unfinished run from its last checkpoint (``weakseg run --resume``).

Usage (from the repository root, after ``pip install -e .``)::

    python benchmarks/accuracy.py                            # the recipes as shipped
    python benchmarks/accuracy.py --steps 800                # a shorter budget for every trained run
    python benchmarks/accuracy.py --datasets kromp --strategies cks,supervised
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
        "load_average_1min": round(os.getloadavg()[0], 2),
        "mlflow_run_id": run_id.group(1) if run_id else None,
    }
    if args.calibrate and STRATEGIES[strategy]["trained"]:
        result.update(calibrate(dataset, name, args))
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=2))
    return result


def evaluate_json(run_dir: Path, store: Path, *extra: str) -> dict[str, Any]:
    """``weakseg evaluate RUN STORE --json ...`` as a dict."""
    cmd = [*weakseg_cmd(), "evaluate", str(run_dir), str(store), "--json", "--no-progress", *extra]
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


def bar_checks(rows: list[dict[str, Any]]) -> list[str]:
    """The issue-8 bar per dataset, as sentences with the figures."""
    lines = []
    by = {(r["dataset"], r["strategy"]): r for r in rows}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        cks, sup, nis = (by.get((dataset, s)) for s in ("cks", "supervised", "nishimura"))
        if cks and sup and sup["AP50"]:
            ratio = cks["AP50"] / sup["AP50"]
            verdict = "meets" if ratio >= 0.9 else "MISSES"
            lines.append(
                f"{dataset}: CKS AP50 {cks['AP50']:.3f} = {100 * ratio:.0f} % of supervised "
                f"{sup['AP50']:.3f} ({verdict} the >= 90 % bar)"
            )
        if cks and nis:
            gap = cks["dice"] - nis["dice"]
            verdict = "meets" if gap >= 0.05 else "MISSES"
            lines.append(
                f"{dataset}: CKS Dice {cks['dice']:.3f} vs Nishimura-1 {nis['dice']:.3f} "
                f"({gap:+.3f}; {verdict} the +0.05 bar)"
            )
    return lines


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    import platform

    steps = sorted({r["steps"] for r in rows if r.get("steps")})
    budget = f"train.steps={steps[0]} for every trained recipe" if len(steps) == 1 else "the recipes' own train.steps"
    setting = (
        f"{budget}; test split; {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); "
        f"load average at the end of each run: {', '.join(str(r['load_average_1min']) for r in rows)}"
    )
    header = "| dataset | strategy | AP50 | AP75 | mAP | Dice | F1 | train s | eval s |"
    lines = [setting, "", header, "|" + "---|" * 9]
    for r in rows:
        cells = [r["dataset"], STRATEGIES[r["strategy"]]["label"]]
        cells += [f"{r[k]:.3f}" if r[k] is not None else "-" for k in METRICS]
        cells += [f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n\n" + "\n".join(f"- {s}" for s in bar_checks(rows)) + "\n"
    calibrated = [r for r in rows if r.get("cal_AP50") is not None]
    if calibrated:
        lines = [
            "",
            "Mask threshold chosen on each model's validation split (best AP50 of "
            f"{', '.join(str(t) for t in SWEEP)}), test split scored again at it:",
            "",
            "| dataset | strategy | mask thr | AP50 | AP75 | mAP | Dice | F1 |",
            "|" + "---|" * 8,
        ]
        for r in calibrated:
            cells = [r["dataset"], STRATEGIES[r["strategy"]]["label"], f"{r['mask_threshold']:g}"]
            cells += [f"{r['cal_' + k]:.3f}" if r["cal_" + k] is not None else "-" for k in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        cal_rows = [{**r, **{k: r.get("cal_" + k, r[k]) for k in METRICS}} for r in rows]
        table += "\n".join(lines) + "\n\n" + "\n".join(f"- {s}" for s in bar_checks(cal_rows)) + "\n"
    (out / "accuracy.md").write_text(table)
    (out / "accuracy.json").write_text(json.dumps(rows, indent=2))
    with open(out / "accuracy.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    return table


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = [d for d in args.datasets.split(",") if d]
    strategies = [s for s in args.strategies.split(",") if s]
    for name in datasets + strategies:
        if name not in DATASETS and name not in STRATEGIES:
            parser.error(
                f"unknown dataset or strategy {name!r} (datasets: {', '.join(DATASETS)}; "
                f"strategies: {', '.join(STRATEGIES)})"
            )
    rows = []
    for dataset in datasets:
        ensure_store(dataset, args.data)
        for strategy in strategies:
            rows.append(run_one(dataset, strategy, args))
            print(write_table(rows, args.out), flush=True)
    print(f"table: {args.out / 'accuracy.md'}; MLflow: sqlite:///{args.out / 'mlflow.db'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
