"""Benchmark: `weakseg data import` wall time and memory, and synthetic demo data generation.

Each measurement runs in a fresh subprocess (so imports and caches are counted, and peak RSS is the
import's own, from ``ru_maxrss`` of the child):

- ``usiigaci``: ``weakseg data import folder ../shared/data/usiigaci`` (40 images 1022 x 1024 uint16,
  centroid points), when the shared data folder exists;
- ``kromp``: the same for ``../shared/data/kromp`` (42 images, up to 1024 x 1280 uint8);
- ``synthetic``: ``write_synthetic_store`` of 8 images 256 x 256 (the README demo's data);
- ``large`` (``--large N``): one N x N uint16 tiled TIFF with its label TIFF, imported lazily; the peak
  RSS shows that the image is never held whole (an N = 12000 image is 288 MB raw, its labels 576 MB
  as int32).

    .venv/bin/python benchmarks/data_import.py                 # usiigaci, kromp, synthetic
    .venv/bin/python benchmarks/data_import.py --large 12000   # plus the large-TIFF import
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def run_child(code: str) -> dict:
    """Run python code in a subprocess; returns its JSON result plus process wall time and its peak RSS (MiB)."""
    code += """
import resource as _r, json as _j
print(_j.dumps({"peak_rss_mib": round(_r.getrusage(_r.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr}")
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-2])
    result.update(json.loads(lines[-1]))
    result["process_wall_s"] = round(wall, 2)
    return result


def bench_import(name: str, source: Path, store: Path, workers: int | None) -> dict:
    code = f"""
import json, time
from weakseg.data.ingest import run_import
t = time.perf_counter()
r = run_import("folder", {str(source)!r}, {str(store)!r}, overwrite=True, workers={workers!r})
s = r.summary
print(json.dumps({{"images": r.images, "instances": s["instances"], "points": s["points"],
                  "import_s": round(time.perf_counter() - t, 2)}}))
"""
    res = run_child(code)
    res["images_per_s"] = round(res["images"] / res["import_s"], 2)
    return {name: res}


def bench_synthetic(store: Path) -> dict:
    code = f"""
import json, time
from weakseg.recipe import SyntheticData
from weakseg.data.synthetic import synthetic_image, write_synthetic_store
cfg = SyntheticData(n_images=8, size=256)
t = time.perf_counter()
for i in range(cfg.n_images):
    synthetic_image(cfg, i)
gen = time.perf_counter() - t
t = time.perf_counter()
s = write_synthetic_store({str(store)!r}, cfg, overwrite=True)
print(json.dumps({{"images": len(s.images), "instances": s.summary()["instances"], "generate_s": round(gen, 2),
                  "generate_and_store_s": round(time.perf_counter() - t, 2)}}))
"""
    return {"synthetic_8x256": run_child(code)}


def write_large_tiffs(folder: Path, n: int) -> None:
    """An N x N uint16 image of a grid of discs and its instance labels, written tile by tile."""
    import tifffile

    tile = 512
    pitch = 32

    def labels_tile(y0: int, x0: int) -> np.ndarray:
        y = np.arange(y0, y0 + tile)[:, None]
        x = np.arange(x0, x0 + tile)[None, :]
        gy, gx = y // pitch, x // pitch
        inside = ((y % pitch) - pitch / 2 + 0.5) ** 2 + ((x % pitch) - pitch / 2 + 0.5) ** 2 < 10**2
        ids = (gy * (-(-n // pitch)) + gx + 1).astype(np.int32)
        out = np.where(inside & (y < n) & (x < n), ids, 0)
        return out.astype(np.int32)

    def tiles(kind: str):
        for y0 in range(0, n, tile):
            for x0 in range(0, n, tile):
                lab = labels_tile(y0, x0)
                yield lab if kind == "labels" else (200 + 2000 * (lab > 0)).astype(np.uint16)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    tifffile.imwrite(folder / "images/slide.tif", tiles("image"), shape=(n, n), dtype=np.uint16, tile=(tile, tile),
                     compression="zlib")
    tifffile.imwrite(folder / "labels/slide.tif", tiles("labels"), shape=(n, n), dtype=np.int32, tile=(tile, tile),
                     compression="zlib")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=0, help="also import one N x N tiled TIFF (e.g. 12000)")
    parser.add_argument("--workers", type=int, default=None, help="import threads (default: CPU count)")
    parser.add_argument("--skip-real", action="store_true", help="skip the shared real data sets")
    args = parser.parse_args()
    results: dict = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_real:
            for name in ("usiigaci", "kromp"):
                if (SHARED / name).is_dir():
                    results.update(bench_import(name, SHARED / name, tmp / f"{name}.zarr", args.workers))
                else:
                    results[name] = f"skipped: {SHARED / name} is absent"
        results.update(bench_synthetic(tmp / "synthetic.zarr"))
        if args.large:
            write_large_tiffs(tmp / "large", args.large)
            res = bench_import("large", tmp / "large", tmp / "large.zarr", args.workers)
            raw = args.large * args.large * (2 + 4) / 2**20
            res["large"]["raw_image_plus_labels_mib"] = round(raw, 1)
            results[f"large_{args.large}"] = res.pop("large")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
