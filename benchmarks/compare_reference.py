"""weakseg against the reference implementation (lacss 0.8.1, JAX), side by side on this machine, one table.

The same configuration on both sides (the CKS paper's): ConvNeXt-S + FPN 384 with the LACSS head;
inference on a 520 x 704 image segmenting 2560 crops (the reference always segments 2560), and one CKS
training step (principal + collaborator, all losses, AdamW) on a 544 x 544 crop with 200 points. Random
weights: speed does not depend on them once the number of crops is fixed.

What it does, in order:

1. builds the reference's venv with ``../shared/reference-bench/lacss_venv.sh`` (outside the repository,
   ``$LACSS_VENV`` or /tmp/venv_lacss) unless it is already there;
2. measures the machine's fp32 and bf16 matmul peak (2048^3 products, the benchmark's thread count);
3. for each round: reference inference, weakseg inference bf16 and fp32, reference training step,
   weakseg training step bf16 and fp32, alternating so that both sides see the same machine; every
   invocation times 3 repeats after its warm-up (the reference's after JIT compilation, which takes
   about 5 minutes for the training step);
4. prints one table: median seconds, the ratio reference / weakseg, achieved GFLOP/s and its share of
   the matching matmul peak, the system load (1 and 5 min) at the start and at the end; with
   ``--profile`` the top operators of weakseg's bf16 cases.

Speed ratios depend on the CPU: with AMX, weakseg's bf16 matmuls run about 5x faster than with
AVX512-BF16 alone while the reference's fp32 ones do not, so a run stores its figures under the CPU's
kind (``benchmarks/results/compare_reference.json``, one entry per kind, a new run replacing its
kind's entry) and rewrites the table of every kind in docs/results.md.

Usage (from the repository root; 15-25 minutes on 2 cores; run it on a quiet machine)::

    python benchmarks/compare_reference.py [--rounds 1] [--threads 2] [--profile] [--out report.json]
    python benchmarks/compare_reference.py --render-only [--check]   # the docs table from the stored figures
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy import REPO, write_page  # noqa: E402

BENCH = REPO.parent / "shared" / "reference-bench"
VENV = Path(os.environ.get("LACSS_VENV", "/tmp/venv_lacss"))
STORED = HERE / "results" / "compare_reference.json"
DOC = REPO / "docs" / "results.md"
BEGIN, END = "<!-- compare_reference.py:begin -->", "<!-- compare_reference.py:end -->"
LABELS = {"train": "CKS training step, 544^2, 200 points", "infer": "inference 520x704, 2560 crops, end to end"}


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's model name and kind, from /proc/cpuinfo: ``amx`` (AMX-BF16 tiles), ``avx512-bf16``,
    ``avx512`` (no bf16 instructions) or ``other``; the kind decides how fast bf16 matmuls can be."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in cpuinfo.splitlines()) if v
    )
    flags = set(fields.get("flags", "").split())
    kind = ("amx" if "amx_bf16" in flags else "avx512-bf16" if "avx512_bf16" in flags
            else "avx512" if "avx512f" in flags else "other")
    return {"model": fields.get("model name"), "kind": kind}


def ensure_reference() -> Path:
    """The reference venv's python, built with lacss_venv.sh when it cannot import lacss yet."""
    python = VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import lacss"], capture_output=True).returncode == 0:
        return python
    script = BENCH / "lacss_venv.sh"
    if not script.exists():
        sys.exit(f"{script}: not found; the reference benchmark lives in ../shared/reference-bench")
    subprocess.run(["bash", str(script)], check=True, env={**os.environ, "LACSS_VENV": str(VENV)})
    return python


def thread_env(threads: int) -> dict[str, str]:
    """Environment limiting both frameworks to ``threads`` threads."""
    xla = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "XLA_FLAGS": xla, "PYTHONUNBUFFERED": "1"}


def pinned(cmd: list[str], threads: int) -> list[str]:
    """``cmd`` pinned to the first ``threads`` cores when the machine has more (taskset)."""
    if (os.cpu_count() or 1) > threads and Path("/usr/bin/taskset").exists():
        return ["taskset", "-c", f"0-{threads - 1}", *cmd]
    return cmd


def matmul_peak(threads: int) -> dict[str, float]:
    """GFLOP/s of a 2048^3 matmul in fp32 and bf16 (best of 5 after a warm-up), in a fresh process."""
    code = (
        "import json,time,torch\n"
        f"torch.set_num_threads({threads})\n"
        "out={}\n"
        "for name,dt in (('fp32',torch.float32),('bf16',torch.bfloat16)):\n"
        "    a=torch.randn(2048,2048).to(dt); b=torch.randn(2048,2048).to(dt); a@b\n"
        "    ts=[]\n"
        "    for _ in range(5):\n"
        "        t=time.perf_counter(); a@b; ts.append(time.perf_counter()-t)\n"
        "    out[name]=2*2048**3/min(ts)/1e9\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(pinned([sys.executable, "-c", code], threads), capture_output=True, text=True,
                          env=thread_env(threads), check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reference(python: Path, what: str, threads: int) -> list[float]:
    """Seconds of each timed repeat of ``lacss_bench.py default infer|train``."""
    cmd = pinned([str(python), str(BENCH / "lacss_bench.py"), "default", what], threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads))
    if proc.returncode:
        raise RuntimeError(f"reference {what} failed: {proc.stderr[-2000:]}")
    key = "infer 520x704 per image" if what == "infer" else "train step 544x544 per step"
    line = next(ln for ln in proc.stdout.splitlines() if key in ln)
    return [float(t) for t in re.findall(r"'(\d+\.\d+)'", line.split("runs", 1)[1])]


def weakseg_infer(precision: str, threads: int) -> dict[str, Any]:
    """weakseg inference at 520 x 704, 2560 crops: seconds of 3 end-to-end repeats and the model's GFLOP."""
    cmd = [sys.executable, str(HERE / "inference.py"), "--one", "paper", "2560", precision,
           "--repeats", "3", "--threads", str(threads)]
    proc = subprocess.run(pinned(cmd, threads), capture_output=True, text=True, env=thread_env(threads))
    if proc.returncode:
        raise RuntimeError(f"weakseg inference {precision} failed: {proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"times": r["seconds_all"]["end_to_end"], "gflop": r["gflops"]}


def weakseg_train(precision: str, threads: int, profile: bool = False) -> dict[str, Any]:
    """weakseg CKS training step at 544 x 544, 200 points: seconds of 3 repeats and GFLOP per step."""
    cmd = [sys.executable, str(HERE / "train_step.py"), "--one", precision, "--repeats", "3",
           "--threads", str(threads)] + (["--profile"] if profile else [])
    proc = subprocess.run(pinned(cmd, threads), capture_output=True, text=True, env=thread_env(threads))
    if proc.returncode:
        raise RuntimeError(f"weakseg train step {precision} failed: {proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"times": r["step_times_s"], "gflop": r["gflop_per_step"], "profile": proc.stderr if profile else ""}


def inference_profile(threads: int, rows: int = 25) -> str:
    """Top operators (self CPU time) of one bf16 weakseg inference at 520 x 704 with 2560 crops."""
    code = (
        "import sys,torch\n"
        f"sys.path.insert(0,{str(HERE)!r})\n"
        f"torch.set_num_threads({threads})\n"
        "from inference import build_principal, test_image\n"
        "from weakseg.inference.predictor import Predictor\n"
        "from torch.profiler import profile, ProfilerActivity\n"
        "m=build_principal('convnext_small',{'max_detections':2560,'min_score':0.0})\n"
        "p=Predictor(m,precision='bf16',tile_size=1024,score_threshold=0.0); im=test_image((520,704))\n"
        "p.predict_instances(im)\n"
        "with profile(activities=[ProfilerActivity.CPU]) as prof: p.predict_instances(im)\n"
        f"print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit={rows}))\n"
    )
    proc = subprocess.run(pinned([sys.executable, "-c", code], threads), capture_output=True, text=True,
                          env=thread_env(threads))
    return proc.stdout if proc.returncode == 0 else proc.stderr[-2000:]


def summarise(times: dict[str, list[float]], gflop: dict[str, float], peak: dict[str, float]) -> dict[str, Any]:
    """Per case: median seconds of each side, the ratios, achieved GFLOP/s and its share of the peak."""
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {}
    for case in LABELS:
        ref, b16, f32 = med[f"{case}/reference"], med[f"{case}/bf16"], med[f"{case}/fp32"]
        rb, rf = gflop[case] / b16, gflop[case] / f32
        rows[case] = {"reference_s": ref, "bf16_s": b16, "fp32_s": f32, "ratio_bf16": ref / b16,
                      "ratio_fp32": ref / f32, "gflop": gflop[case], "bf16_gflop_s": rb, "fp32_gflop_s": rf,
                      "bf16_peak_share": rb / peak["bf16"], "fp32_peak_share": rf / peak["fp32"]}
    return rows


def table(reports: list[dict[str, Any]]) -> list[str]:
    """One markdown table, a row per case of each report."""
    lines = [
        "| CPU (kind) | matmul peak bf16 / fp32 (GFLOP/s) | case | reference (s) | weakseg bf16 (s) "
        "| weakseg fp32 (s) | ratio bf16 | ratio fp32 | bf16 GFLOP/s (share of bf16 peak) "
        "| fp32 GFLOP/s (share of fp32 peak) | date, load at start / end |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rep in reports:
        cpu, peak = rep.get("cpu", {}), rep["peak_gflop_s"]
        for case in LABELS:
            r = rep["cases"][case]
            lines.append(
                f"| {cpu.get('model') or 'not recorded'} ({cpu.get('kind', '?')}) "
                f"| {peak['bf16']:.0f} / {peak['fp32']:.0f} | {LABELS[case]} | {r['reference_s']:.2f} "
                f"| {r['bf16_s']:.2f} | {r['fp32_s']:.2f} | {r['ratio_bf16']:.1f}x | {r['ratio_fp32']:.1f}x "
                f"| {r['bf16_gflop_s']:.0f} ({r['bf16_peak_share']:.0%}) "
                f"| {r['fp32_gflop_s']:.0f} ({r['fp32_peak_share']:.0%}) "
                f"| {rep['date']}, {rep['load_before'][0]:.1f} / {rep['load_after'][0]:.1f} |"
            )
    return lines


def render(stored: dict[str, dict[str, Any]]) -> str:
    """The generated block of docs/results.md: every stored CPU kind's table rows."""
    order = ["amx", "avx512-bf16", "avx512", "other"]
    reports = [stored[k] for k in sorted(stored, key=lambda k: order.index(k) if k in order else len(order))]
    return "\n".join([
        BEGIN,
        "<!-- written by `python benchmarks/compare_reference.py` from benchmarks/results/compare_reference.json; "
        "regenerate with `python benchmarks/compare_reference.py --render-only` -->",
        "",
        *table(reports),
        "",
        "Seconds: median of every timed repeat (3 per side, alternating); GFLOP counted on weakseg's side "
        "(matmuls and convolutions, forward and backward); load: 1-minute system load. A share above 100 % means "
        "the machine's convolutions run faster than its 2048^3 matmul.",
        END,
    ])


def page(stored: dict[str, dict[str, Any]], doc: Path = DOC) -> str:
    """``doc`` with its generated block replaced by :func:`render` (appended when it has none)."""
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        return head + render(stored) + rest.partition(END)[2]
    return text + "\n" + render(stored) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (each times 3 repeats per side)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print the top operators of weakseg's bf16 cases")
    parser.add_argument("--out", help="also write this run's figures as JSON here")
    parser.add_argument("--stored", type=Path, default=STORED, help="figures per CPU kind")
    parser.add_argument("--docs", type=Path, default=DOC, help="page holding the generated table")
    parser.add_argument("--render-only", action="store_true", help="no timing: rewrite the table from --stored")
    parser.add_argument("--check", action="store_true", help="with --render-only: exit 1 when the page is stale")
    args = parser.parse_args(argv)
    stored = json.loads(args.stored.read_text()) if args.stored.exists() else {}
    if args.render_only:
        return write_page(args.docs, page(stored, args.docs), args.check)
    python = ensure_reference()
    load_before = os.getloadavg()
    peak = matmul_peak(args.threads)
    times: dict[str, list[float]] = {}
    gflop: dict[str, float] = {}
    profiles: dict[str, str] = {}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        times.setdefault("infer/reference", []).extend(reference(python, "infer", args.threads))
        for precision in ("bf16", "fp32"):
            res = weakseg_infer(precision, args.threads)
            times.setdefault(f"infer/{precision}", []).extend(res["times"])
            gflop["infer"] = res["gflop"]
        times.setdefault("train/reference", []).extend(reference(python, "train", args.threads))
        for precision in ("bf16", "fp32"):
            res = weakseg_train(precision, args.threads, profile=args.profile and precision == "bf16" and r == 0)
            times.setdefault(f"train/{precision}", []).extend(res["times"])
            gflop["train"] = res["gflop"]
            if res["profile"]:
                profiles["train"] = res["profile"]
    if args.profile:
        profiles["infer"] = inference_profile(args.threads)
    load_after = os.getloadavg()
    report = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_info(), "threads": args.threads, "peak_gflop_s": peak,
              "load_before": load_before, "load_after": load_after, "times": times,
              "cases": summarise(times, gflop, peak)}
    print(f"threads {args.threads}; {report['cpu']['model']} ({report['cpu']['kind']}); system load at the start "
          f"{load_before[0]:.2f} / {load_before[1]:.2f}, at the end {load_after[0]:.2f} / {load_after[1]:.2f} "
          "(1 / 5 min)\n")
    print("\n".join(table([report])))
    for case, text in profiles.items():
        print(f"\ntop operators, weakseg bf16 {case}:\n{text}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    stored[report["cpu"]["kind"]] = report
    args.stored.parent.mkdir(parents=True, exist_ok=True)
    args.stored.write_text(json.dumps(stored, indent=2) + "\n")
    return write_page(args.docs, page(stored, args.docs), check=False)


if __name__ == "__main__":
    sys.exit(main())
