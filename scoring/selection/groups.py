"""Quotas and the near-duplicate walk of :func:`scoring.selection.engine.select`.

Quotas split a budget over groups in proportion to each group's share of the candidates; the near-duplicate filter
walks the ranking best first and skips a row whose embedding cosine to a row already kept exceeds tau. The exact
semantics are in :mod:`scoring.selection.engine`'s docstring (points 6 and 7).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from scoring.errors import UserError
from scoring.selection.rules import Budget

_BLAS: list = []


def _one_blas_thread():
    """Run small matrix products on one BLAS thread. Why: the walk multiplies (512 x dim) blocks by the kept rows
    thousands of times; OpenBLAS hands such products to its thread pool, and on a busy 2-core machine waking the
    pool costs ~10x the product itself (8 ms instead of 0.7 ms for 512 x 2000 x 32). Same numbers either way."""
    try:
        if not _BLAS:
            _BLAS.append(ThreadpoolController())
        return _BLAS[0].limit(limits=1, user_api="blas")
    except Exception:  # threadpoolctl missing or no BLAS found: run as is
        return contextlib.nullcontext()


def group_codes(groups, n: int) -> tuple[np.ndarray, list[str]]:
    """(n,) int codes and the labels; a missing label becomes the group "(none)". A pd.Categorical is used as is."""
    if isinstance(groups, pd.Categorical):
        if len(groups) != n:
            raise UserError(f"The quota groups have {len(groups)} values for {n} rows.")
        codes = groups.codes.astype(np.int64)
        names = [str(c) for c in groups.categories]
        if (codes < 0).any():
            codes = np.where(codes < 0, len(names), codes)
            names.append("(none)")
        return codes, names
    values = pd.Series(groups if not isinstance(groups, pd.Series) else groups.to_numpy(), dtype=object)
    if len(values) != n:
        raise UserError(f"The quota groups have {len(values)} values for {n} rows.")
    labels = values.where(values.notna() & (values.astype(str) != ""), "(none)").astype(str).to_numpy()
    uniq, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64), [str(u) for u in uniq]


def _largest_remainder(total: int, sizes: np.ndarray) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``sizes`` (integers summing to total; ties to the first group)."""
    if sizes.sum() == 0:
        return np.zeros(len(sizes), dtype=np.int64)
    raw = total * sizes / sizes.sum()
    base = np.floor(raw).astype(np.int64)
    short = int(total - base.sum())
    if short > 0:
        order = np.lexsort((np.arange(len(sizes)), -(raw - base)))
        base[order[:short]] += 1
    return base


def quotas_for(budget: Budget, limit: int, gcodes: np.ndarray, n_groups: int, tokens: np.ndarray) -> np.ndarray:
    """Each group's share of the budget, in proportion to its share of the candidate pool (rows or tokens)."""
    sizes = np.bincount(gcodes, minlength=n_groups)
    if budget.kind != "tokens":
        return _largest_remainder(min(limit, len(gcodes)), sizes).astype(float)
    group_tokens = np.bincount(gcodes, weights=tokens, minlength=n_groups)
    if group_tokens.sum() <= 0:
        return np.full(n_groups, float(budget.value))
    return budget.value * group_tokens / group_tokens.sum()


def walk_dedup(order, gcodes, quotas, tokens, budget_kind, emb, rows_of, tau, block: int = 512):
    """Greedy walk down the ranking: keep a row unless its group's quota is spent or its embedding's cosine to a
    row already kept exceeds ``tau``. Returns (kept positions in order, near-duplicate positions, for each of them
    the position of its kept twin: the first kept row whose cosine exceeded tau, whether every group's quota was
    spent before the ranking ran out).

    ``order`` indexes the pool; ``rows_of`` maps a pool position to its row of ``emb``. Quotas are row counts, or
    token budgets with skip-and-stop (a group stops at its first row that would overflow).
    Similarities are computed a block at a time (block x kept matrix product), so the cost is about
    kept x walked x dim multiply-adds; only the final accept/skip decision is a Python loop.
    """
    with _one_blas_thread():
        return _walk(order, gcodes, quotas, tokens, budget_kind, emb, rows_of, tau, block)


def _walk(order, gcodes, quotas, tokens, budget_kind, emb, rows_of, tau, block):
    left = np.asarray(quotas, dtype=float).copy()
    stopped = left <= 0
    kept: list[int] = []
    dups: list[int] = []
    twins: list[int] = []  # per near duplicate: its index in ``kept``
    kept_vecs = np.empty((0, emb.shape[1]), dtype=np.float32)
    for start in range(0, len(order), block):
        if stopped.all():
            break
        rows = order[start:start + block]
        vecs = _block_vectors(emb, rows_of[rows])  # (B, d)
        prev = _first_close(vecs @ kept_vecs.T, tau) if len(kept_vecs) else np.full(len(rows), -1)  # (B,)
        inner = vecs @ vecs.T  # (B, B)
        # twin[i]: the first row kept earlier in this block with inner[i, j] > tau, as an index in ``kept``. Updated
        # with column j when j is kept, so it reads the very entries inner[i, mine].max() would (that max is
        # NaN-poisoned: keep the row when NaN, so NaN blocks take the exact path).
        exact = bool(np.isnan(inner).any())
        twin = np.full(len(rows), -1, dtype=np.int64)
        mine: list[int] = []
        for i, row in enumerate(rows.tolist()):
            g = gcodes[row]
            if stopped[g]:
                continue
            near = prev[i] if prev[i] >= 0 else (_exact_twin(inner[i], mine, tau, len(kept)) if exact else twin[i])
            if near >= 0:
                dups.append(row)
                twins.append(int(near))
                continue
            cost = tokens[row] if budget_kind == "tokens" else 1.0
            if cost > left[g]:
                stopped[g] = True
                continue
            left[g] -= cost
            if budget_kind != "tokens" and left[g] <= 0:
                stopped[g] = True
            kept.append(row)
            mine.append(i)
            if not exact:
                twin[(inner[:, i] > tau) & (twin < 0)] = len(kept) - 1
        if mine:
            kept_vecs = np.vstack([kept_vecs, vecs[mine]])
    kept_arr = np.asarray(kept, dtype=np.int64)
    return kept_arr, np.asarray(dups, dtype=np.int64), kept_arr[np.asarray(twins, dtype=np.int64)], bool(stopped.all())


def _block_vectors(emb, take: np.ndarray) -> np.ndarray:
    """emb[take] as float32, read in ascending row order (much faster on a memory-mapped matrix)."""
    sort = np.argsort(take)
    vecs = np.empty((len(take), emb.shape[1]), dtype=np.float32)
    vecs[sort] = emb[take[sort]]
    return vecs


def _first_close(sims: np.ndarray, tau: float) -> np.ndarray:
    """(B,) for each row of ``sims`` (B, K), the first column above tau, -1 when none (or when the row's max is NaN,
    as ``sims.max(axis=1) > tau`` reads it)."""
    out = np.full(len(sims), -1, dtype=np.int64)
    close = np.flatnonzero(sims.max(axis=1) > tau)
    if len(close):
        out[close] = (sims[close] > tau).argmax(axis=1)
    return out


def _exact_twin(inner_row: np.ndarray, mine: list[int], tau: float, n_kept: int) -> int:
    """The NaN-aware path: the ``kept`` index of the first of this block's kept rows above tau, -1 when none or when
    one of them compares as NaN (the max is NaN then, and the row is kept)."""
    if not mine:
        return -1
    sims = inner_row[mine]
    if not sims.max() > tau:
        return -1
    return n_kept - len(mine) + int((sims > tau).argmax())
