"""Automatic sizing of new images against each image's true cell diameter, on the real test splits.

For each dataset of ``../shared/data`` and each of the CKS and supervised CPU recipes this script trains
a model (``train.steps``, 1600 by default; an existing run folder with its final checkpoint is reused),
then scores the held-out test split twice with ``weakseg evaluate``:

- **automatic**: as ``weakseg predict`` sizes a new image (the checkpoint's size model, fitted at the end
  of training, estimates each image's diameter);
- **true diameter**: each image resized by its own cell diameter measured on its masks
  (``--true-diameters``, what ``--diameter`` does when the user knows it).

It reports F1 / AP50 / detections per cell of both, their F1 ratio, and how many test images got an
estimate within 20 % of the true diameter; and, as an ablation, F1 and detections per cell at the true
diameters without mask NMS (``--max-overlap 1``). The Usiigaci recipes are run as the magnification-mixing set
asks: each training image resized by its own cell size (``data.rescale: image``) and the resampling
augmentation on (``data.augment.resample: 2``).

Figures go to ``benchmarks/results/sizing.json`` and the table part of ``docs/sizing.md``
(``--render-only [--check]`` rewrites it from them).

Usage (from the repository root)::

    python benchmarks/sizing.py                           # both sets, both strategies (~1 h on 2 cores)
    python benchmarks/sizing.py --datasets kromp --strategies supervised
    python benchmarks/sizing.py --datasets usiigaci --seeds 0,1   # a second training run of each recipe
    python benchmarks/sizing.py --render-only [--check]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import DATASETS, REPO, ensure_store, machine_info, weakseg_cmd, write_page  # noqa: E402

STORED = REPO / "benchmarks" / "results" / "sizing.json"
DOC = REPO / "docs" / "sizing.md"
BEGIN, END = "<!-- sizing.py:begin -->", "<!-- sizing.py:end -->"
ORDER = ("kromp", "usiigaci")
STRATEGIES = {"cks": "cks_{}_cpu.yaml", "supervised": "supervised_{}_cpu.yaml"}
#: Recipe overrides per dataset (Usiigaci mixes two magnifications in its training split).
OVERRIDES = {"kromp": {}, "usiigaci": {"data.rescale": "image", "data.augment.resample": "2.0"}}


def run_name(dataset: str, strategy: str, seed: int) -> str:
    """Run folder and result key: ``kromp-cks``, ``kromp-cks-seed1`` for another ``train.seed``."""
    return f"{dataset}-{strategy}" + (f"-seed{seed}" if seed else "")


def train(dataset: str, strategy: str, seed: int, args: argparse.Namespace) -> Path:
    """The run folder of one recipe, trained unless its final checkpoint is already there."""
    name = run_name(dataset, strategy, seed)
    run_dir = args.out / name
    final = run_dir / "checkpoints" / f"step-{args.steps:08d}.ckpt"
    if final.exists():
        return run_dir
    cmd = [*weakseg_cmd(), "run", str(REPO / "recipes" / STRATEGIES[strategy].format(dataset)),
           "--output", str(args.out), "--resume", "--set", f"name={name}", "--set", "train.eval_every=0",
           "--set", f"train.steps={args.steps}", "--set", "eval.split=test", "--set", "eval.max_images=null",
           "--set", f"train.seed={seed}"]
    for key, value in OVERRIDES[dataset].items():
        cmd += ["--set", f"{key}={value}"]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    return run_dir


def evaluate(run_dir: Path, dataset: str, extra: list[str]) -> dict[str, Any]:
    cmd = [*weakseg_cmd(), "evaluate", str(run_dir), str(REPO / DATASETS[dataset]["store"]), "--json",
           "--no-progress", "--device", "cpu", *extra]
    proc = subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.PIPE, text=True)
    return json.loads(proc.stdout)


def measure(dataset: str, strategy: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = train(dataset, strategy, seed, args)
    auto, true = evaluate(run_dir, dataset, []), evaluate(run_dir, dataset, ["--true-diameters"])
    plain = evaluate(run_dir, dataset, ["--true-diameters", "--max-overlap", "1"])
    images = {
        image_id: {"true": t["diameter"], "estimated": auto.get("images", {}).get(image_id, {}).get("diameter"),
                   "sizing": auto.get("images", {}).get(image_id, {}).get("sizing", "training factor")}
        for image_id, t in true["images"].items()
    }
    within = [abs(v["estimated"] / v["true"] - 1) <= 0.2 for v in images.values() if v["estimated"]]
    def pick(r: dict[str, Any]) -> dict[str, Any]:
        o = r["overall"]
        return {"F1": o["F1"], "AP50": o["AP50"], "dice": o["dice"], "det_per_cell": o["n_pred_above"] / o["n_gt"]}
    return {
        "dataset": dataset, "strategy": strategy, "seed": seed, "steps": args.steps, "overrides": OVERRIDES[dataset],
        "automatic": pick(auto), "true_diameter": pick(true), "true_diameter_no_mask_nms": pick(plain),
        "within_20": sum(within) / len(images) if images else None, "images": images, **machine_info(),
    }


def render(stored: dict[str, Any]) -> str:
    def order(key: str) -> tuple[int, str, int]:
        r = stored[key]
        return ORDER.index(r["dataset"]), r["strategy"], r.get("seed", 0)

    lines = [BEGIN, "<!-- written by `python benchmarks/sizing.py` from benchmarks/results/sizing.json; "
             "regenerate with `python benchmarks/sizing.py --render-only` -->", "",
             "| dataset | strategy | seed | F1 automatic | F1 true diameter | ratio | AP50 auto / true | "
             "detections per cell auto / true | estimate within 20 % | "
             "without mask NMS: F1 / detections per cell (true) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(stored, key=order):
        r = stored[key]
        a, t = r["automatic"], r["true_diameter"]
        p = r.get("true_diameter_no_mask_nms")
        plain = f"{p['F1']:.3f} / {p['det_per_cell']:.2f}" if p else "-"
        lines.append(
            f"| {r['dataset']} | {r['strategy']} | {r.get('seed', 0)} | {a['F1']:.3f} | {t['F1']:.3f} | "
            f"{a['F1'] / t['F1']:.2f} | "
            f"{a['AP50']:.3f} / {t['AP50']:.3f} | {a['det_per_cell']:.2f} / {t['det_per_cell']:.2f} | "
            f"{100 * r['within_20']:.0f} % | {plain} |"
        )
    lines += ["", "Estimated / true diameter per test image (pixels):", ""]
    for key in sorted(stored, key=order):
        r = stored[key]
        cells = ", ".join(f"{i} {v['estimated']:.0f}/{v['true']:.0f}" for i, v in r["images"].items())
        seed = f" (seed {r['seed']})" if r.get("seed") else ""
        lines.append(f"- {r['dataset']} {r['strategy']}{seed}: {cells}")
    return "\n".join([*lines, END])


def page(stored: dict[str, Any]) -> str:
    old = DOC.read_text() if DOC.exists() else ""
    head, _, rest = old.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return (head if BEGIN in old else "# Automatic sizing\n\n") + render(stored) + (tail if BEGIN in old else "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "sizing")
    parser.add_argument("--datasets", default=",".join(ORDER))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values, one run each")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--check", action="store_true", help="with --render-only: exit 1 when the page is stale")
    args = parser.parse_args(argv)
    stored = json.loads(STORED.read_text()) if STORED.exists() else {}
    if args.render_only:
        return write_page(DOC, page(stored), args.check)
    args.out = args.out.resolve()
    for dataset in args.datasets.split(","):
        ensure_store(dataset, args.data)
        for strategy in args.strategies.split(","):
            for seed in (int(x) for x in args.seeds.split(",")):
                stored[run_name(dataset, strategy, seed)] = measure(dataset, strategy, seed, args)
                STORED.parent.mkdir(parents=True, exist_ok=True)
                STORED.write_text(json.dumps(stored, indent=2) + "\n")
                DOC.write_text(page(stored))
    return 0


if __name__ == "__main__":
    sys.exit(main())
