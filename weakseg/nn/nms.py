"""Distance-based non-maximum suppression of point detections.

Greedy NMS on points (CKS paper, Sec. III-A; reference: a point is dropped when it lies within
``distance`` of a higher-scoring point that was kept). The greedy result is computed without a
Python loop over points: candidate pairs closer than ``distance`` come from a hash grid with cells
of that size, and the greedy decisions are settled in rounds (a point is kept once all its
higher-ranked neighbours are suppressed, and suppressed as soon as one of them is kept), which
gives exactly the sequential greedy answer.
"""

from __future__ import annotations

import torch

# Same cell plus four of the eight neighbour cells: every unordered pair of adjacent cells once.
_HALF_NEIGHBOURHOOD = ((0, 0), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_pairs(locations: torch.Tensor, distance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs ``(i, j)``, ``j < i``, of points with ``|p_i - p_j| <= distance``.

    ``locations`` (K, 2) float. Returns two int64 tensors (E,) of indices ``i`` and ``j``. Points
    are binned into square cells of side ``distance``; only points in the same or adjacent cells
    are compared.
    """
    k = locations.shape[0]
    device = locations.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if k < 2:
        return empty, empty
    cell = torch.floor(locations.double() / max(float(distance), 1e-6)).long()
    cell = cell - cell.min(0).values + 1  # >= 1, so the -1 neighbours stay >= 0
    ncols = int(cell[:, 1].max()) + 2
    key = cell[:, 0] * ncols + cell[:, 1]
    sorted_key, perm = torch.sort(key)
    offsets = torch.tensor([dy * ncols + dx for dy, dx in _HALF_NEIGHBOURHOOD], device=device)
    target = sorted_key[:, None] + offsets[None, :]  # (K, 5), queries from the sorted points
    lo = torch.searchsorted(sorted_key, target, right=False)
    hi = torch.searchsorted(sorted_key, target, right=True)
    lo[:, 0] = torch.arange(1, k + 1, device=device).clamp_max(hi[:, 0])  # same cell: only later points
    counts = (hi - lo).clamp_min(0).reshape(-1)
    total = int(counts.sum())
    if total == 0:
        return empty, empty
    src = torch.arange(k, device=device).repeat_interleave(len(_HALF_NEIGHBOURHOOD))
    a = torch.repeat_interleave(src, counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts - lo.reshape(-1), counts)
    b = torch.arange(total, device=device) - first  # positions in sorted order
    d2 = ((locations[perm[a]].double() - locations[perm[b]].double()) ** 2).sum(-1)
    close = d2 <= float(distance) ** 2
    a, b = perm[a[close]], perm[b[close]]
    return torch.maximum(a, b), torch.minimum(a, b)


def distance_nms(
    locations: torch.Tensor, scores: torch.Tensor, distance: float, max_output: int | None = None
) -> torch.Tensor:
    """Indices of the points greedy distance-NMS keeps, in order of decreasing score.

    A point is suppressed when it lies within ``distance`` (inclusive) of a higher-scoring kept
    point; ties in score are broken by position in the input (earlier wins). At most
    ``max_output`` indices are returned (the highest-scoring survivors).
    """
    k = scores.shape[0]
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    locs = locations.detach()[order]
    i, j = neighbour_pairs(locs, distance)  # j is ranked above i
    undecided, kept, suppressed = 0, 1, 2
    state = torch.zeros(k, dtype=torch.int8, device=scores.device)
    limit = k if max_output is None else int(max_output)
    while True:
        open_ = state == undecided
        if not bool(open_.any()):
            break
        # stop early once max_output points are kept above every undecided one
        first_open = int(torch.nonzero(open_)[0])
        if int((state[:first_open] == kept).sum()) >= limit:
            break
        state_j = state[j]
        kept_above = torch.zeros(k, dtype=torch.int32, device=state.device)
        kept_above.index_add_(0, i, (state_j == kept).int())
        open_above = torch.zeros(k, dtype=torch.int32, device=state.device)
        open_above.index_add_(0, i, (state_j == undecided).int())
        state[open_ & (kept_above > 0)] = suppressed
        state[open_ & (kept_above == 0) & (open_above == 0)] = kept
        live = state[i] == undecided  # decided points need their edges no more
        i, j = i[live], j[live]
    survivors = torch.nonzero(state == kept).squeeze(1)[:limit]
    return order[survivors]
