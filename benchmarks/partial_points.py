"""Points as people make them: missed cells, half-annotated images, off-centre points, a few masks.

For each dataset of ``../shared/data`` (Kromp nuclei, Usiigaci phase contrast) this script trains the
shipped CPU recipe ``cks_<dataset>_cpu.yaml`` from degraded point sets, each with the partial-label
handling off (every unclicked cell is background, as for complete points) and on, and scores the
held-out test split at the model's own mask threshold (no choice made on masks):

=================  ===================================================================================
row                training labels
=================  ===================================================================================
complete           one point per cell, at its centroid
drop20             20 % of the points dropped at random
drop20_jitter      20 % dropped, half of the rest moved by up to 5 px
half               points on the left half of each image only (``half_st+``, ``half_out+``: see below)
mixed4             masks on 4 training images, points on the rest (``strategy: {type: mixed}``); half of
                   the training crops come from the masked images (``data.mask_share: 0.5``)
mixed4_area        the same, each image giving crops in proportion to its area (no ``mask_share``)
supervised         masks on every training image (``supervised_<dataset>_cpu.yaml``), the reference
=================  ===================================================================================

"Handling on" (rows ending in ``+``) is ``strategy.unlabelled: {type: pu, prior: 0.2}`` with
``strategy.pseudo_points: {after: 0.3, threshold: 0.5, limit: 0.5}`` and, for ``half``, the stored
annotated region too (``data.use_regions: true``, the default); "off" leaves them out
(``data.use_regions: false`` for ``half``: its unclicked right half is taught as background).
``half_st+`` keeps the region and the pseudo points but drops the positive-unlabelled weighting (the
points inside the region are complete, so its unlabelled share is 0); ``half_out+`` also keeps the
pseudo points out of the region (``in_regions: false``).

Each finished row is kept in ``<out>/results/<dataset>-<row>.json`` and merged into
``benchmarks/results/partial_points.json``, from which ``docs/partial_points.md`` is written; a later
call adds rows to it (``--rows``), and ``--render-only`` rewrites the page from the stored figures (the text
below the generated tables is kept as written).

Usage (from the repository root)::

    python benchmarks/partial_points.py --datasets kromp --rows complete,drop20+,half+     # ~1 h on 2 cores
    python benchmarks/partial_points.py                           # every row on both sets (~7 h on 2 cores)
    python benchmarks/partial_points.py --render-only [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import DATASETS, REPO, ensure_store, final_metrics, machine_info, weakseg_cmd, write_page  # noqa: E402

STORED = REPO / "benchmarks" / "results" / "partial_points.json"
DOC = REPO / "docs" / "partial_points.md"
BEGIN, END = "<!-- partial_points.py:begin -->", "<!-- partial_points.py:end -->"
METRICS = ("AP50", "dice", "F1")
#: Datasets in the order of the page.
ORDER = ("kromp", "usiigaci")

#: The partial-label handling for missed cells (a 20 % guess of the unlabelled share).
HANDLING = {
    "strategy.unlabelled": "{type: pu, prior: 0.2}",
    "strategy.pseudo_points": "{after: 0.3, threshold: 0.5, limit: 0.5}",
}
DROP = "{type: jitter, move: 0.0, distance: 0.0, drop: 0.2}"
DROP_JITTER = "{type: jitter, move: 0.5, distance: 5.0, drop: 0.2}"
HALF = "{type: region, base: {type: centroids}, region: {type: left_half, fraction: 0.5}}"

#: row -> (label, recipe pattern, recipe overrides)
ROWS: dict[str, tuple[str, str, dict[str, str]]] = {
    "complete": ("complete points", "cks_{}_cpu.yaml", {}),
    "complete+": ("complete points, handling on", "cks_{}_cpu.yaml", HANDLING),
    "drop20": ("20 % dropped", "cks_{}_cpu.yaml", {"data.label_source": DROP}),
    "drop20+": ("20 % dropped, handling on", "cks_{}_cpu.yaml", {"data.label_source": DROP, **HANDLING}),
    "drop20_jitter": ("20 % dropped + 5 px jitter on half", "cks_{}_cpu.yaml", {"data.label_source": DROP_JITTER}),
    "drop20_jitter+": (
        "20 % dropped + 5 px jitter on half, handling on",
        "cks_{}_cpu.yaml",
        {"data.label_source": DROP_JITTER, **HANDLING},
    ),
    "half": ("left half of each image, region ignored", "cks_{}_cpu.yaml", {"data.label_source": HALF,
                                                                          "data.use_regions": "false"}),
    "half+": ("left half of each image, region given, handling on", "cks_{}_cpu.yaml",
              {"data.label_source": HALF, **HANDLING}),
    "half_st+": ("left half of each image, region given, pseudo points (no PU weighting)", "cks_{}_cpu.yaml",
                 {"data.label_source": HALF, "strategy.pseudo_points": HANDLING["strategy.pseudo_points"]}),
    "half_out+": ("left half of each image, region given, pseudo points outside it only", "cks_{}_cpu.yaml",
                  {"data.label_source": HALF,
                   "strategy.pseudo_points": "{after: 0.3, threshold: 0.5, limit: 0.5, in_regions: false}"}),
    "mixed4": ("masks on 4 images (half of the crops), points on the rest", "cks_{}_cpu.yaml",
               {"strategy.type": "mixed", "data.mask_images": "4", "data.mask_share": "0.5"}),
    "mixed4_area": ("masks on 4 images (crops by area), points on the rest", "cks_{}_cpu.yaml",
                    {"strategy.type": "mixed", "data.mask_images": "4"}),
    "supervised": ("masks on every image (supervised)", "supervised_{}_cpu.yaml", {}),
}


def run_row(dataset: str, row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one row (resuming an unfinished run) and score its test split; cached in ``<out>/results``."""
    label, pattern, overrides = ROWS[row]
    name = f"{dataset}-{row.replace('+', '-on')}"
    cached = args.out / "results" / f"{name}.json"
    if cached.exists() and not args.force:
        return json.loads(cached.read_text())
    cmd = [*weakseg_cmd(), "run", str(REPO / "recipes" / pattern.format(dataset)), "--output", str(args.out),
           "--fresh" if args.force else "--resume",
           "--set", f"name={name}", "--set", f"eval.split={args.split}", "--set", "eval.max_images=null",
           "--set", "train.eval_every=0", "--set", f"train.steps={args.steps}"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: weakseg run failed with exit code {proc.returncode}")
    overall = final_metrics(args.out / name)["overall"]
    run_id = re.search(r"MLflow run (\w+)", proc.stdout)
    result = {
        "dataset": dataset,
        "row": row,
        "label": label,
        "steps": args.steps,
        "overrides": overrides,
        **{k: overall.get(k) for k in METRICS},
        "n_pred": overall.get("n_pred_above"),
        "n_gt": overall.get("n_gt"),
        "seconds": round(time.perf_counter() - t0, 1),
        "mlflow_run_id": run_id.group(1) if run_id else None,
        **machine_info(),
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2))
    return result


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(stored: dict[str, Any]) -> str:
    """docs/partial_points.md from the stored rows: one table per dataset, AP50 as a share of complete."""
    rows = stored["rows"]
    lines = [
        "# Partial and noisy point labels",
        "",
        BEGIN,
        "<!-- written by `python benchmarks/partial_points.py` from benchmarks/results/partial_points.json -->",
        "",
        "CKS trained with the shipped CPU recipes from degraded point sets, with the partial-label handling "
        "off and on (see `benchmarks/partial_points.py` for what each row means), scored on the test split "
        "at the model's own mask threshold. `share` is the AP50 as a share of the complete-points row of the "
        "same table.",
        "",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = {r["row"]: r for r in rows if r["dataset"] == dataset}
        ref = (mine.get("complete") or {}).get("AP50")
        sup = (mine.get("supervised") or {}).get("AP50")
        steps = sorted({r["steps"] for r in mine.values()})
        dates = sorted({r["date"] for r in mine.values()})
        lines += [f"## {DATASETS[dataset]['title']}", "",
                  f"{', '.join(map(str, steps))} steps; measured {dates[0]}"
                  + (f" to {dates[-1]}" if len(dates) > 1 else "") + f" on {mine[next(iter(mine))]['cpus']} "
                  "CPU cores.", "",
                  "| training labels | AP50 | Dice | F1 | detections (score >= 0.5) / cells | share of complete AP50 |",
                  "|---|---|---|---|---|---|"]
        for key in ROWS:
            r = mine.get(key)
            if r is None:
                continue
            share = f"{r['AP50'] / ref:.2f}" if ref and r["AP50"] is not None else "-"
            if key == "mixed4" and sup:
                share += f" ({r['AP50'] / sup:.2f} of supervised)"
            ratio = f"{r['n_pred'] / r['n_gt']:.2f}" if r.get("n_gt") and r.get("n_pred") is not None else "-"
            lines.append(f"| {ROWS[key][0]} | {_f(r['AP50'])} | {_f(r['dice'])} | {_f(r['F1'])} | {ratio} | {share} |")
        lines.append("")
    lines.append(
        "Reproduce a row: `python benchmarks/partial_points.py --datasets DATASET --rows ROW`; "
        "`--render-only` rewrites this page from `benchmarks/results/partial_points.json`."
    )
    lines.append(END)
    return "\n".join(lines) + "\n"


def page(stored: dict[str, Any]) -> str:
    """The docs page: the generated tables, then whatever was written below them by hand (kept)."""
    text = DOC.read_text() if DOC.exists() else ""
    notes = text.split(END, 1)[1].lstrip("\n") if END in text else ""
    return render(stored) + ("\n" + notes if notes else "")


def merge(new: list[dict[str, Any]]) -> dict[str, Any]:
    """The stored figures with ``new`` rows replacing those of the same dataset and row."""
    stored = json.loads(STORED.read_text()) if STORED.exists() else {"rows": []}
    keep = {(r["dataset"], r["row"]): r for r in stored["rows"]}
    keep.update({(r["dataset"], r["row"]): r for r in new})
    order = {k: i for i, k in enumerate(ROWS)}
    rows = sorted(keep.values(), key=lambda r: (ORDER.index(r["dataset"]), order[r["row"]]))
    return {"rows": rows}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "partial_points")
    parser.add_argument("--datasets", default=",".join(ORDER))
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--split", default="test")
    parser.add_argument("--force", action="store_true", help="re-run rows that already have results")
    parser.add_argument("--render-only", action="store_true", help="rewrite the page from the stored figures")
    parser.add_argument("--check", action="store_true", help="with --render-only: exit 1 when the page is stale")
    args = parser.parse_args(argv)
    for name in args.rows.split(","):
        if name not in ROWS:
            parser.error(f"unknown row {name!r} (rows: {', '.join(ROWS)})")
    for name in args.datasets.split(","):
        if name not in DATASETS:
            parser.error(f"unknown dataset {name!r} (datasets: {', '.join(DATASETS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return write_page(DOC, page(json.loads(STORED.read_text())), args.check)
    args.out = args.out.resolve()
    for dataset in args.datasets.split(","):
        ensure_store(dataset, args.data)
        for row in args.rows.split(","):
            result = run_row(dataset, row, args)
            stored = merge([result])
            STORED.parent.mkdir(parents=True, exist_ok=True)
            STORED.write_text(json.dumps(stored, indent=2) + "\n")
            DOC.write_text(page(stored))
            print(f"{dataset} {row}: AP50 {_f(result['AP50'])}, Dice {_f(result['dice'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
