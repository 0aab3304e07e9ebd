"""A small pool of spawned data workers that render batches into shared memory, without torch.

Why not a torch DataLoader: its workers must import torch, and with a CUDA build of torch that alone
costs ~570 MB of resident memory per process, so two workers plus the trainer would exceed a
1.5 GB memory budget before reading a pixel. These workers import numpy, scipy and zarr only
(~100 MB each). They are started with the ``spawn`` method (safe with threads, such as zarr's I/O
loop, running in the parent) and receive the dataset once, pickled.

Protocol: the parent owns ``slots`` shared buffers (``multiprocessing.RawArray``), each big enough
for one batch of images (float32) and masks (int32). It sends ``(step, slot, keys)`` to worker
``step % n``; the worker renders the samples into the slot and answers ``(step, slot, meta, error)``
where ``meta`` holds the small per-sample things (points, group, id, whether a mask exists, the
annotated mask packed to bits when the image has a region). The
parent copies the batch out of the slot (so a returned Batch never aliases a reused buffer), frees
the slot and submits the step ``slots`` ahead. Batches therefore come back strictly in step order,
whatever the workers' timing.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import queue
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Seconds between liveness checks of the workers while waiting for a batch.
POLL_SECONDS = 1.0


class SlotLayout:
    """Where the images and masks of a batch lie inside one shared buffer."""

    def __init__(self, batch_size: int, channels: int, size: int) -> None:
        self.image_shape = (batch_size, channels, size, size)
        self.mask_shape = (batch_size, size, size)
        self.image_bytes = int(np.prod(self.image_shape)) * 4
        self.nbytes = self.image_bytes + int(np.prod(self.mask_shape)) * 4

    def views(self, buffer: Any) -> tuple[np.ndarray, np.ndarray]:
        """(images float32 (B, C, S, S), masks int32 (B, S, S)) viewing ``buffer``."""
        images = np.frombuffer(buffer, dtype=np.float32, count=int(np.prod(self.image_shape)))
        masks = np.frombuffer(buffer, dtype=np.int32, offset=self.image_bytes, count=int(np.prod(self.mask_shape)))
        return images.reshape(self.image_shape), masks.reshape(self.mask_shape)


def _worker_main(payload: bytes, worker_id: int, tasks: Any, results: Any, buffers: list[Any], layout: Any) -> None:
    """Worker loop: render the samples of each task into its slot until a ``None`` task arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    try:
        from weakseg.data.crops import pack_annotated

        dataset = pickle.loads(payload)
        views = [layout.views(b) for b in buffers]
    except BaseException:  # report start-up failures (e.g. an import error) instead of dying silently
        results.put((-1, -1, None, f"data worker {worker_id} failed to start:\n{traceback.format_exc()}"))
        return
    while True:
        task = tasks.get()
        if task is None:
            break
        step, slot, keys = task
        try:
            images, masks = views[slot]
            meta = []
            for b, key in enumerate(keys):
                sample = dataset[key]
                images[b] = sample.image
                if sample.mask is not None:
                    masks[b] = sample.mask
                annotated = pack_annotated(sample.annotated)
                meta.append((sample.points, sample.mask is not None, sample.group, sample.image_id, annotated))
            results.put((step, slot, meta, None))
        except BaseException:
            results.put((step, slot, None, f"data worker {worker_id}, step {step}:\n{traceback.format_exc()}"))


class WorkerPool:
    """Renders batches of ``dataset`` for steps ``start, start + 1, ...`` in ``num_workers`` processes.

    ``keys_for(step)`` gives the sample keys of a step; :meth:`next` returns
    ``(images (B,C,S,S) float32 copy, masks (B,S,S) int32 copy, meta)`` of the next step in order.
    """

    def __init__(
        self,
        dataset: Any,
        keys_for: Callable[[int], Sequence[Any]],
        *,
        num_workers: int,
        batch_size: int,
        channels: int,
        size: int,
        start_step: int = 0,
        prefetch: int = 2,
    ) -> None:
        if num_workers < 1:
            raise ValueError("WorkerPool needs at least one worker")
        ctx = mp.get_context("spawn")
        self.keys_for = keys_for
        self.layout = SlotLayout(batch_size, channels, size)
        self.n_slots = max(2, num_workers * prefetch)
        self.buffers = [ctx.RawArray("b", self.layout.nbytes) for _ in range(self.n_slots)]
        self.views = [self.layout.views(b) for b in self.buffers]
        self.results = ctx.Queue()
        self.tasks = [ctx.SimpleQueue() for _ in range(num_workers)]
        payload = pickle.dumps(dataset, protocol=pickle.HIGHEST_PROTOCOL)
        self.workers = [
            ctx.Process(
                target=_worker_main,
                args=(payload, i, self.tasks[i], self.results, self.buffers, self.layout),
                name=f"weakseg-data-{i}",
                daemon=True,
            )
            for i in range(num_workers)
        ]
        for w in self.workers:
            w.start()
        self.next_step = start_step
        self._submitted = start_step
        self._ready: dict[int, tuple[int, Any]] = {}
        self._closed = False
        for slot in range(self.n_slots):
            self._submit(slot)

    def _submit(self, slot: int) -> None:
        step = self._submitted
        self.tasks[step % len(self.workers)].put((step, slot, list(self.keys_for(step))))
        self._submitted += 1

    def next(self, convert: Callable[[np.ndarray, np.ndarray, list[Any]], Any] | None = None) -> Any:
        """The next step's batch: ``convert(images, masks, meta)`` of its slot, then the slot is reused.

        ``convert`` must copy what it keeps (the buffers are overwritten afterwards); by default the
        arrays are copied: ``(images (B,C,S,S) float32, masks (B,S,S) int32, meta)``.
        """
        step = self.next_step
        while step not in self._ready:
            try:
                got_step, slot, meta, error = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self._check_alive()
                continue
            if error is not None:
                self.close()
                raise RuntimeError(f"a data worker failed:\n{error}")
            self._ready[got_step] = (slot, meta)
        slot, meta = self._ready.pop(step)
        images, masks = self.views[slot]
        out = (images.copy(), masks.copy(), meta) if convert is None else convert(images, masks, meta)
        self.next_step += 1
        self._submit(slot)
        return out

    def _check_alive(self) -> None:
        dead = [w for w in self.workers if not w.is_alive()]
        if dead:
            codes = ", ".join(f"{w.name} (exit code {w.exitcode})" for w in dead)
            self.close()
            raise RuntimeError(f"data worker(s) stopped unexpectedly: {codes}; out of memory?")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers (politely, then by force) and release the queues."""
        if self._closed:
            return
        self._closed = True
        for t, w in zip(self.tasks, self.workers, strict=True):
            if w.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    t.put(None)
        deadline = time.monotonic() + timeout
        while any(w.is_alive() for w in self.workers) and time.monotonic() < deadline:
            self._drain()  # a worker cannot exit while its last results sit unread in the pipe
            for w in self.workers:
                w.join(0.05)
        for w in self.workers:
            if w.is_alive():
                w.terminate()
                w.join(timeout)
        self._drain()
        self.results.close()
        self.results.join_thread()

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty, OSError, EOFError, ValueError):
            while True:
                self.results.get_nowait()

    @property
    def exitcodes(self) -> list[int | None]:
        return [w.exitcode for w in self.workers]
