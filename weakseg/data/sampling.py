"""Deterministic, resumable, DDP-aware ordering of training samples.

Training is step-based and endless, so the sampler defines one infinite *global stream* of sample
keys: epoch ``e`` is a permutation of all ``n_items`` dataset indices seeded by ``(seed, e)``, and
the epochs follow each other. At step ``k`` the ``world_size`` ranks together consume the
``world_size * batch_size`` stream positions starting at ``k * world_size * batch_size``; rank ``r``
takes its own contiguous block of ``batch_size`` of them. Hence

- the batch of step ``k`` is a pure function of ``(seed, k, rank, world_size, batch_size)``, so a
  run resumed at ``start_step=k`` sees exactly the batches an uninterrupted run would;
- within an epoch the ranks' shards are disjoint and together cover every index once (a batch
  may straddle two epochs; no index is padded or dropped);
- each key is ``(epoch, index)`` and the per-sample augmentation randomness is derived from
  ``(seed, epoch, index)`` only (:func:`item_rng`), never from the worker or the rank that
  happens to process it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: A sample key: (epoch, dataset index).
Key = tuple[int, int]


def item_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one sample, a pure function of ``(seed, epoch, index, stream)``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, epoch, index, stream]))


def epoch_permutation(n_items: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n_items`` dataset indices in ``epoch`` (int64)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, epoch, 0x5EED]))
    return rng.permutation(n_items).astype(np.int64)


class StreamSampler:
    """Yields, for one rank, the list of ``batch_size`` sample keys of each step from ``start_step`` on.

    Use it as a DataLoader ``batch_sampler``; it is endless. ``batch_at(step)`` gives any step's
    keys directly (what a resumed run will see).
    """

    def __init__(
        self,
        n_items: int,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        if n_items < 1:
            raise ValueError("StreamSampler needs at least one item")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start_step < 0:
            raise ValueError(
                f"bad sampler settings: batch_size={batch_size}, rank={rank}, world_size={world_size}, "
                f"start_step={start_step}"
            )
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start_step = int(start_step)
        self._perm_epoch = -1
        self._perm = np.zeros(0, np.int64)

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = epoch_permutation(self.n_items, self.seed, epoch)
            self._perm_epoch = epoch
        return self._perm

    def key_at(self, position: int) -> Key:
        """The sample key at a global stream position."""
        epoch, offset = divmod(position, self.n_items)
        return epoch, int(self._perm_for(epoch)[offset])

    def positions(self, step: int) -> range:
        """Global stream positions this rank consumes at ``step``."""
        first = (step * self.world_size + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def batch_at(self, step: int) -> list[Key]:
        """The keys of this rank's batch at ``step``."""
        return [self.key_at(p) for p in self.positions(step)]

    def epoch_at(self, step: int) -> int:
        """The epoch the first sample of ``step`` (over all ranks) belongs to."""
        return (step * self.world_size * self.batch_size) // self.n_items

    def __iter__(self) -> Iterator[list[Key]]:
        step = self.start_step
        while True:
            yield self.batch_at(step)
            step += 1
