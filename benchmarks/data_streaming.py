"""Benchmark: stream augmented 544 x 544 training crops from a zarr store.

Two stores are generated into a temporary folder (generation is not timed and runs in a separate
process, so it does not count towards the memory figures):

- ``huge``: one 20000 x 20000 uint8 image with ~390k synthetic cells (instance masks + centroids);
- ``many``: 1000 images of 520 x 704 uint16 (LIVECell-sized) with synthetic cells;
- ``few`` (optional): the first 100 of those, to show that memory does not grow with the store.

For each store, ``make_train_loader`` (2 spawned workers by default, the paper's augmentations,
per-image standardisation, masks and points) is drained for a number of crops after a warm-up; the
script prints crops/s and the peak memory of the main process plus its workers, sampled from /proc
every 50 ms: the sum of RSS (counts shared library pages once per process) and the sum of PSS
(shares them out; closer to what the machine really spends).

Targets: >= 40 crops/s with 2 workers on the 2-core machine; peak memory under 1.5 GB and
not growing with the store size.

    .venv/bin/python benchmarks/data_streaming.py                  # both stores, 600 crops each
    .venv/bin/python benchmarks/data_streaming.py --crops 300 --keep /tmp/bench-stores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PITCH = 32  # grid pitch of the synthetic cells (px); one cell per grid square, never touching


# ------------------------------------------------------------------------------------------
# Synthetic data: procedural, so a 20000 x 20000 image is generated block by block
# ------------------------------------------------------------------------------------------


def _cell_params(gy: np.ndarray, gx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (y, x) and radius of the cell in grid square (gy, gx): a hash of its indices."""
    h = (gy.astype(np.uint64) * np.uint64(73856093)) ^ (gx.astype(np.uint64) * np.uint64(19349663))
    h = (h ^ np.uint64(seed * 83492791 + 1)) * np.uint64(2654435761) % np.uint64(1 << 32)
    u = h.astype(np.float64) / float(1 << 32)
    v = (h * np.uint64(40503) % np.uint64(1 << 32)).astype(np.float64) / float(1 << 32)
    w = (h * np.uint64(9973) % np.uint64(1 << 32)).astype(np.float64) / float(1 << 32)
    cy = gy * PITCH + PITCH / 2 + (u - 0.5) * 6
    cx = gx * PITCH + PITCH / 2 + (v - 0.5) * 6
    r = 8.0 + 4.0 * w
    return cy, cx, r


class ProceduralLabels:
    """A lazy (Y, X) int32 label image: a jittered grid of discs (ids = grid square index + 1)."""

    def __init__(self, shape: tuple[int, int], seed: int = 0) -> None:
        self.shape, self.dtype, self.ndim, self.seed = tuple(shape), np.dtype(np.int32), 2, seed
        self.cols = -(-shape[1] // PITCH)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = (range(*k.indices(n)) for k, n in zip(key, self.shape, strict=True))
        y = np.arange(ys.start, ys.stop, ys.step)[:, None]
        x = np.arange(xs.start, xs.stop, xs.step)[None, :]
        gy, gx = y // PITCH, x // PITCH
        cy, cx, r = _cell_params(gy, gx, self.seed)
        inside = (y + 0.5 - cy) ** 2 + (x + 0.5 - cx) ** 2 < r**2
        return np.where(inside, gy * self.cols + gx + 1, 0).astype(np.int32)

    def centroids(self) -> np.ndarray:
        gy, gx = np.mgrid[0 : self.shape[0] // PITCH, 0 : self.shape[1] // PITCH]
        cy, cx, _ = _cell_params(gy.ravel(), gx.ravel(), self.seed)
        return np.stack([cy, cx], axis=1).astype(np.float32)


class ProceduralImage:
    """A lazy (Y, X) image of the cells of ``labels``: bright cells, a gradient, a little noise."""

    def __init__(self, labels: ProceduralLabels, dtype: type) -> None:
        self.labels, self.shape, self.dtype, self.ndim = labels, labels.shape, np.dtype(dtype), 2
        self.peak = 200.0 if self.dtype == np.uint8 else 3000.0

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        lab = self.labels[key]
        ys, xs = (range(*k.indices(n)) for k, n in zip(key, self.shape, strict=True))
        ramp = (ys.start / max(self.shape[0], 1)) * 0.2
        rng = np.random.default_rng(ys.start * 7919 + xs.start)
        img = self.peak * (0.2 + ramp + 0.6 * (lab > 0)) + rng.normal(0, self.peak * 0.01, lab.shape)
        return np.clip(img, 0, np.iinfo(self.dtype).max).astype(self.dtype)


def generate(kind: str, path: Path) -> None:
    """Write the ``huge`` or ``many`` store at ``path``."""
    from weakseg.components import ImageRecord
    from weakseg.data.store import StoreWriter

    writer = StoreWriter(path)
    if kind == "huge":
        labels = ProceduralLabels((20000, 20000))
        record = ImageRecord(
            image_id="slide",
            source="procedural",
            load_image=lambda: ProceduralImage(labels, np.uint8),
            load_labels=lambda: labels,
        )
        writer.add(record, label_sources=[])
        writer.write_points("slide", "centroids", labels.centroids(), {"label_source": "centroids", "analytic": True})
    else:
        records = []
        for i in range(1000 if kind == "many" else 100):
            labels = ProceduralLabels((520, 704), seed=i)
            records.append(
                ImageRecord(
                    image_id=f"img{i:04d}",
                    source="procedural",
                    load_image=lambda lab=labels: ProceduralImage(lab, np.uint16)[0:520, 0:704],
                    load_labels=lambda lab=labels: lab[0:520, 0:704],
                    group=f"line{i % 8}",
                )
            )
        writer.add_all(records, workers=2)
    writer.close()


# ------------------------------------------------------------------------------------------
# Memory of a process tree, from /proc
# ------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes (those still alive)."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


class MemorySampler(threading.Thread):
    """Samples RSS and PSS summed over this process and its descendants; keeps the peaks.

    The process tree is rescanned every ``rescan`` seconds only (scanning /proc is not free and
    the sampler runs in the measured process).
    """

    def __init__(self, interval: float = 0.1, rescan: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.rescan = interval, rescan
        self.peak_rss, self.peak_pss, self.peak_procs = 0, 0, 0
        self._halt = threading.Event()
        self._pids: list[int] = []
        self._scanned = 0.0
        self.cpu = 0.0

    def sample(self, rescan: bool = False) -> tuple[int, int, int]:
        if rescan or time.monotonic() - self._scanned > self.rescan:
            self._pids, self._scanned = _descendants(os.getpid()), time.monotonic()
        rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in self._pids)
        pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in self._pids)
        return rss * 1024, pss * 1024, len(self._pids)

    def run(self) -> None:
        self.cpu = 0.0  # this thread's own CPU time, not charged to the loader
        while not self._halt.is_set():
            t = time.thread_time()
            rss, pss, n = self.sample()
            self.cpu += time.thread_time() - t
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, n)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ------------------------------------------------------------------------------------------
# Streaming
# ------------------------------------------------------------------------------------------


def stream(path: Path, crops: int, batch_size: int, workers: int, warmup: int) -> dict[str, float]:
    from weakseg.data.dataset import make_train_loader
    from weakseg.recipe import DataConfig

    cfg = DataConfig(store=str(path), crop_size=544, num_workers=workers)
    sampler = MemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    loader = make_train_loader(cfg, batch_size=batch_size, seed=0)
    n_items = len(loader.dataset)
    first = next(loader)
    startup = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        next(loader)
    rss_start = sampler.sample(rescan=True)[0]
    workers = [p for p in _descendants(os.getpid()) if p != os.getpid()]
    cpu0, main0, sampler0 = cpu_seconds(workers), cpu_seconds([os.getpid()]), sampler.cpu
    load0 = os.getloadavg()[0]
    t1 = time.perf_counter()
    n, n_points = 0, 0
    while n < crops:
        batch = next(loader)
        n += batch.image.shape[0]
        n_points += sum(len(p) for p in batch.points)
    elapsed = time.perf_counter() - t1
    cpu_workers = cpu_seconds(workers) - cpu0
    cpu_main = cpu_seconds([os.getpid()]) - main0 - (sampler.cpu - sampler0)
    cpu = cpu_workers + cpu_main
    load1 = os.getloadavg()[0]
    rss_end = sampler.sample()[0]
    loader.close()
    sampler.stop()
    assert first.image.shape[-2:] == (544, 544)
    return {
        "dataset_items": n_items,
        "startup_s": round(startup, 2),
        "crops": n,
        "crops_per_s": round(n / elapsed, 1),
        # CPU spent per crop by the main process and the workers together, and what that allows on
        # two otherwise idle cores (the machine this runs on may be shared: see load_avg)
        "cpu_ms_per_crop": round(1000 * cpu / n, 1),
        "cpu_ms_per_crop_main": round(1000 * cpu_main / n, 1),
        "crops_per_s_on_2_free_cores": round(2 * n / cpu, 1) if cpu > 0 else None,
        "load_avg": round((load0 + load1) / 2, 1),
        "points_per_crop": round(n_points / n, 1),
        "peak_rss_gb": round(sampler.peak_rss / 1e9, 3),
        "peak_pss_gb": round(sampler.peak_pss / 1e9, 3),
        "rss_after_warmup_gb": round(rss_start / 1e9, 3),
        "rss_at_end_gb": round(rss_end / 1e9, 3),
        "processes": sampler.peak_procs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=600, help="crops timed per store (after the warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="batches drawn before timing starts")
    parser.add_argument("--stores", nargs="+", default=["huge", "many"], choices=["huge", "many", "few"])
    parser.add_argument("--keep", type=Path, help="generate (or reuse) the stores in this folder")
    parser.add_argument("--generate", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.generate:
        generate(args.generate[0], Path(args.generate[1]))
        return 0

    tmp = None
    folder = args.keep
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="weakseg-bench-")
        folder = Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        for kind in args.stores:
            path = folder / f"{kind}.zarr"
            if not (path / "zarr.json").is_file():
                t = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--generate", kind, str(path)], check=True)
                print(f"generated {kind} store in {time.perf_counter() - t:.0f} s (not timed)", file=sys.stderr)
            results[kind] = stream(path, args.crops, args.batch_size, args.workers, args.warmup)
            if not args.json:
                print(f"{kind:>5}: {json.dumps(results[kind])}", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
