"""Why each row went, for tables and summaries: the reason of any row of a selection in words ("kept",
"below_cut:davir", "near_duplicate of ex-0042", ...) and the kept rows per quota group.

The reasons themselves are made by :func:`scoring.selection.engine.select` (its docstring lists them); this module
only reads a :class:`~scoring.selection.rules.SelectionResult` back.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.scores.view_reads import group_values
from scoring.scores.views import View
from scoring.selection.groups import group_codes
from scoring.selection.rules import SelectionResult
from scoring.store.cache import Cache

KEPT = "kept"
# Reasons of rows that passed every rule and were stopped only by the budget, a quota or the near-duplicate filter.
CANDIDATE_REASONS = ("below_cut", "above_cut", "over_budget", "over_quota", "near_duplicate")


def reason_of(result: SelectionResult, positions) -> list[str]:
    """The reason of each row at ``positions`` (table positions: rows of the score table the selection ran on, or
    rows of a loaded selection's file, which a selection saved by save_spec writes in score-table order): "kept",
    or its drop reason ("below_cut:davir", "flagged:too_long", ...); a near duplicate reads "near_duplicate of <id>"
    with the id of the kept row it duplicates. Vectorised but for the near duplicates among ``positions``."""
    if result.rows is None:
        raise ValueError("reason_of needs a result made by select or load_selection (it has no reason per row)")
    ids, codes, labels = result.rows
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    row_codes = codes[pos]
    names = np.asarray([*labels, KEPT], dtype=object)
    out = names[np.where(row_codes < 0, len(labels), row_codes)]
    if result.duplicate_of is not None and len(pos):
        twins = result.duplicate_of[pos]
        for i in np.flatnonzero(twins >= 0).tolist():
            out[i] = f"near_duplicate of {ids[twins[i]]}"
    return out.tolist()


def candidate_mask(result: SelectionResult) -> np.ndarray:
    """(n,) bool: the rows that passed every rule (kept, or stopped by the budget, a quota or the filter)."""
    _, codes, labels = result.rows
    is_candidate = np.asarray([str(label).split(":", 1)[0] in CANDIDATE_REASONS for label in labels] + [True])
    return is_candidate[np.where(codes < 0, len(labels), codes)]


def group_counts(cache: Cache, view: View, spec, result: SelectionResult) -> dict[str, dict[str, int]]:
    """For a spec with a quota: {group: {"kept": rows kept, "candidates": rows that passed every rule}} in the
    groups' order; {} without a quota. ``result``: :func:`scoring.selection.saved.run_selection`'s for ``spec``
    on ``view``."""
    if not getattr(spec, "quota", None):
        return {}
    codes, names = group_codes(group_values(cache, view, spec.quota), view.n_rows)
    kept_pos = result.kept_pos
    if kept_pos is None:  # a result without positions: find the kept ids among the view's rows
        ids = result.rows[0] if result.rows is not None else None
        if ids is None:
            raise ValueError("group_counts needs a result made by select")
        kept_pos = pd.Index(ids).get_indexer(result.kept_ids)
    kept = np.bincount(codes[kept_pos], minlength=len(names))
    if result.rows is not None:
        candidates = np.bincount(codes[candidate_mask(result)], minlength=len(names))
    else:
        candidates = np.full(len(names), -1)
    return {name: {"kept": int(k), "candidates": int(c)} for name, k, c in zip(names, kept, candidates)}


def kept_per_group(cache: Cache, view: View, spec, result: SelectionResult) -> dict[str, int]:
    """For a spec with a quota: the kept rows per group ({} without a quota); :func:`group_counts` adds the
    candidates per group."""
    return {name: counts["kept"] for name, counts in group_counts(cache, view, spec, result).items()}
