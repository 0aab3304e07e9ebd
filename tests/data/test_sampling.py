"""The training stream: deterministic, resumable, disjoint per rank."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.data.sampling import StreamSampler, epoch_permutation, item_rng


def take(sampler: StreamSampler, n: int) -> list[list[tuple[int, int]]]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_resume_gives_the_same_batches():
    full = take(StreamSampler(37, batch_size=4, seed=3), 30)
    for k in (0, 1, 9, 17):
        resumed = take(StreamSampler(37, batch_size=4, seed=3, start_step=k), 30 - k)
        assert resumed == full[k:]


def test_every_index_once_per_epoch_and_epochs_differ():
    n, b = 10, 3
    sampler = StreamSampler(n, batch_size=b, seed=1)
    keys = [key for batch in take(sampler, 10) for key in batch]  # 30 keys = 3 epochs
    for epoch in range(3):
        indices = sorted(i for e, i in keys if e == epoch)
        assert indices == list(range(n))
    orders = [[i for e, i in keys if e == epoch] for epoch in range(3)]
    assert orders[0] != orders[1] or orders[1] != orders[2]


@pytest.mark.parametrize("n_items", [24, 25])
def test_two_ranks_have_disjoint_shards_covering_the_epoch(n_items):
    b, w = 3, 2
    per_rank = []
    for rank in range(w):
        sampler = StreamSampler(n_items, batch_size=b, seed=5, rank=rank, world_size=w)
        keys = [key for batch in take(sampler, 8) for key in batch]  # 8 steps x 2 ranks x 3 >= 25 items
        per_rank.append({i for e, i in keys if e == 0})
    assert not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == set(range(n_items))
    # a rank sees the same keys whatever the world's other ranks do; world size 1 differs in layout
    single = StreamSampler(n_items, batch_size=b * w, seed=5)
    assert sorted(take(single, 1)[0]) == sorted(
        take(StreamSampler(n_items, batch_size=b, seed=5, rank=0, world_size=w), 1)[0]
        + take(StreamSampler(n_items, batch_size=b, seed=5, rank=1, world_size=w), 1)[0]
    )


def test_seed_changes_order_and_rng_is_a_function_of_key():
    assert not np.array_equal(epoch_permutation(50, 0, 0), epoch_permutation(50, 1, 0))
    assert np.array_equal(epoch_permutation(50, 2, 4), epoch_permutation(50, 2, 4))
    a = item_rng(7, 2, 11).random(4)
    assert np.array_equal(a, item_rng(7, 2, 11).random(4))
    assert not np.array_equal(a, item_rng(7, 3, 11).random(4))
    assert not np.array_equal(a, item_rng(7, 2, 12).random(4))


def test_batch_at_matches_iteration_and_bad_settings_fail():
    sampler = StreamSampler(9, batch_size=2, seed=0, rank=1, world_size=3)
    assert take(sampler, 5)[4] == sampler.batch_at(4)
    with pytest.raises(ValueError):
        StreamSampler(9, batch_size=2, seed=0, rank=3, world_size=3)
    with pytest.raises(ValueError):
        StreamSampler(0, batch_size=2, seed=0)
