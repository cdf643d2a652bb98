"""Ranks and partial sorts on numpy arrays, shared by :mod:`scoring.selection.table` (a score's ranks among the
eligible rows) and :mod:`scoring.selection.engine` (the best rows of a ranking, for a row or a token budget).
"""
from __future__ import annotations

import numpy as np


def twice_avg_ranks(v: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """2 x the 1-based average rank of each value (an integer, so ties compare exactly). v: (m,) without NaN.

    ``order`` (an argsort of v) may be given when the caller derived it from a sort it keeps (SelectTable)."""
    m = len(v)
    order = np.argsort(v) if order is None else order  # (m,)
    sv = v[order]
    new = np.empty(m, dtype=bool)
    new[:1] = True
    np.not_equal(sv[1:], sv[:-1], out=new[1:])
    starts = np.flatnonzero(new)  # first sorted position of each tie group
    out = np.empty(m, dtype=np.int64)
    if len(starts) == m:  # no ties (the usual case for float scores)
        out[order] = np.arange(2, 2 * m + 1, 2)
    else:  # ranks start+1..end of a tie group -> average (start+1+end)/2
        ends = np.append(starts[1:], m)  # one past the last sorted position of each group
        out[order] = (starts + ends + 1)[np.cumsum(new) - 1]
    return out


def ordered_prefix(key: np.ndarray, tie: np.ndarray, k: int) -> np.ndarray:
    """Positions of the first ``k`` rows when sorted by (key, tie) ascending, without sorting all of them."""
    n = len(key)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        kth = np.partition(key, k - 1)[k - 1]
        cand = np.flatnonzero(key <= kth)  # every row that can be in the first k (ties at the edge included)
    else:
        cand = np.arange(n)
    sub_key, sub_tie, span = key[cand], tie[cand], len(cand)
    if key.dtype.kind == "i" and (span < 2 or bool(np.all(sub_tie[1:] > sub_tie[:-1]))):
        # Integer key and ties already in position order: one plain sort of key * span + position (unique
        # values) is several times faster than lexsort, and the position comes back as the remainder.
        shifted = sub_key - sub_key.min()
        if int(shifted.max()) < (1 << 62) // max(span, 1):
            return cand[(np.sort(shifted * span + np.arange(span)) % span)[:k]]
    return cand[np.lexsort((sub_tie, sub_key))[:k]]


def prefix_within_tokens(key, tie, tokens, budget: float) -> tuple[np.ndarray, int]:
    """Ordered positions covering the token budget, and how many of them fit (skip-and-stop)."""
    n = len(key)
    mean = float(tokens.mean()) if n else 1.0
    k = int(budget / max(mean, 1.0) * 1.5) + 64
    while True:  # few rounds: k grows 4x until the prefix overflows the budget or covers every row
        order = ordered_prefix(key, tie, k)
        running = np.cumsum(tokens[order])
        if len(order) >= n or (len(running) and running[-1] > budget):
            return order, int(np.searchsorted(running, budget, side="right"))
        k *= 4
