"""Selection rules: from a score table to the kept ids and a reason for every dropped one.

The input is a *score table*, a DataFrame with one row per example::

    idx                int    example row number (ties are broken by it, ascending)
    id                 str    example id
    flag               str    "" when fine, else snake_case reasons joined by ","
    n_prompt_tokens    int    may be NaN for unscored rows
    n_response_tokens  int    may be NaN for unscored rows
    <score>            float  one column per score; NaN when not yet scored

Semantics, in the order they apply:

1. **Eligible rows.** A row is eligible when it is not flagged (unless ``include_flagged``; a flag in
   ``schema.NEVER_SELECTED``, a held-out validation pair, excludes it regardless) and every requested score is a number. Others are dropped with ``flagged:<first reason>`` or ``unscored``. Asking for a score
   column the table does not have at all is a :class:`UserError` naming the columns it does have.
2. **Percentiles.** For each score, a row's percentile is its rank among the *eligible* rows scaled to 0..100:
   ``(rank - 1) * 100 / (m - 1)`` with average ranks for ties (lowest 0, highest 100; 50 when m == 1).
3. **Rules**, one for all scores or one per score. Each gives a row a *goodness* per score (on one 0..100 scale)
   and may exclude it:

   - ``top``: goodness = percentile; ``bottom``: 100 - percentile; neither excludes anything.
   - ``band:LO-HI``: excludes rows whose percentile is outside [LO, HI]; goodness falls with the distance to the
     band centre (100 at the centre, 0 at the edges).
   - ``above:V``: excludes rows whose score value is below V (value >= V is kept, V itself included); ranks like
     ``top`` (goodness = percentile among the eligible rows, so higher values first).
   - ``below:V``: excludes rows whose value is above V (value <= V kept); ranks like ``bottom`` (100 - percentile).
   - ``band-values:LO-HI``: excludes rows whose value is outside [LO, HI] (edges included; no tolerance, the
     values are the user's); goodness falls with the distance to the band centre ON THE VALUE AXIS:
     100 * (1 - 2|value - (LO+HI)/2| / (HI - LO)), 100 at the centre and 0 at the edges, like a percentile band.

   Value cuts compare the score values themselves; the percentiles that rank rows are still among all eligible rows.
   When every rule ranks the same way (all top / above, or all bottom / below, or one percentile band for all) the
   goodness is computed in exact integers (ties compare exactly).
4. **Combining scores.** ``and`` (intersection, the default): a row is a candidate when no score's rule excludes
   it; its combined goodness is the MIN over the scores, so the best k rows are the intersection of every score's
   top set, grown until the budget is hit. ``or`` (union): a candidate when at least one rule admits it; the
   combined goodness is the MAX over the admitting scores. Non-candidates are dropped, with ``and``, by the first
   score whose rule excludes them: ``outside_band:<score>`` (band: and band-values:), ``below_value:<score>``
   (above:), ``above_value:<score>`` (below:); with ``or`` (every rule excludes them) by the rules' shared reason
   with ``:all`` (``outside_band:all``, ``below_value:all``, ``above_value:all``), ``outside_rules:all`` when the
   rules differ. Candidates are ranked by combined goodness descending (ties: idx ascending) and kept while within
   budget; the rest are dropped by the score that limited the row (and: the lowest goodness, or: the highest; the
   first requested one on ties), whose rule names the side: ``below_cut:<score>`` for top and above: (the row ranks
   below the cut), ``above_cut:<score>`` for bottom and below: (it lies above the cut), ``below_cut:<score>`` for a
   band among other rules; ``over_budget`` when every rule is a band (band: or band-values:).
5. **Budgets.** ``count`` keeps at most N rows; ``fraction`` keeps at most ``round_half_up(fraction * n_total)``
   rows, where n_total counts ALL rows of the table (flagged and unscored included), so "6%" means 6 % of the
   dataset (``all`` is the fraction 1: every candidate); ``tokens`` walks the ranked rows and keeps them while
   the running sum of ``n_prompt_tokens + n_response_tokens`` stays within the budget, stopping at the first row
   that would exceed it (skip-and-stop, so the kept set is always a prefix of the ranking). Missing token counts
   count as 0.
6. **Quotas** (optional, ``groups``: one label per row, e.g. a category column or a map cluster). The budget is
   split over the groups in proportion to each group's share of the candidates (rows; for a token budget, tokens;
   largest remainder for counts), and each group keeps its own best rows within its share (skip-and-stop for
   tokens), so the kept set has the candidates' group mix. Rows a quota stops: ``over_quota:<group>``.
7. **Near-duplicate filter** (optional, ``dedup`` = tau with unit ``embeddings``): walking the ranking best first, a
   row whose cosine to a row already kept exceeds tau is skipped with ``near_duplicate`` and the walk goes on, so
   the budget is still filled with distinct rows. ``SelectionResult.duplicate_of`` names, per skipped row, the
   table position of its kept twin: the first kept row (in kept order) whose cosine exceeded tau. It costs about
   kept x walked x dim multiply-adds.

Without quotas or the filter everything is vectorised (numpy sort, rank, cumsum): a million rows with two scores
select in a fraction of a second. The only per-row Python work is the filter's accept / skip loop.

Budgets, rules and the result type are in :mod:`scoring.selection.rules`; rules turned into goodness, exclusions
and reason labels in :mod:`scoring.selection.goodness`; reading a result back (a row's reason in words, kept rows
per quota group) in :mod:`scoring.selection.explain`; the prepared score table
(:class:`~scoring.selection.table.SelectTable`) in :mod:`scoring.selection.table`; the rank and partial-sort helpers
in :mod:`scoring.selection.ranking`; quotas and the near-duplicate walk in :mod:`scoring.selection.groups`; saved
selections, the rule spec shared by the CLI and the app, and comparisons in :mod:`scoring.selection.saved` (the
files themselves: :mod:`scoring.selection.files`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scoring.errors import UserError
from scoring.selection.goodness import cut_labels, excluded_by_all_label, excluded_labels, goodness, rules_for
from scoring.selection.groups import group_codes, quotas_for, walk_dedup
from scoring.selection.ranking import ordered_prefix, prefix_within_tokens
from scoring.selection.rules import (
    BASE_COLUMNS,
    BUDGET_EXAMPLES,
    COMBINES,
    NEXT_AFTER_CUT,
    Budget,
    DroppedReasons,
    Rule,
    SelectionResult,
    Taken,
)
from scoring.selection.table import SelectTable

def _rows_all(mask: np.ndarray) -> np.ndarray:
    """mask.all(axis=1) for a few columns, a column at a time (much faster than an axis-1 reduction at 1M rows)."""
    out = mask[:, 0].copy()
    for j in range(1, mask.shape[1]):
        out &= mask[:, j]
    return out


def _rows_any(mask: np.ndarray) -> np.ndarray:
    out = mask[:, 0].copy()
    for j in range(1, mask.shape[1]):
        out |= mask[:, j]
    return out


def _rows_best(values: np.ndarray, better) -> tuple[np.ndarray, np.ndarray | None]:
    """(best value per row, column it came from; the first on ties), ``better`` = np.less (min) or np.greater (max).

    None for the column when there is one column. A column at a time, like :func:`_rows_all`."""
    if values.shape[1] == 1:
        return values[:, 0], None
    best = values[:, 0].copy()
    which = np.zeros(len(best), dtype=np.int64)
    for j in range(1, values.shape[1]):
        wins = better(values[:, j], best)
        best = np.where(wins, values[:, j], best)
        which[wins] = j
    return best, which


# --------------------------------------------------------------------------------------------------------------
# The steps of select


class _Reasons:
    """The drop reasons found so far: a code per table row (-1: not dropped) indexing ``labels``.

    Each step adds its labels when it runs, so the labels come in the order of the steps."""

    def __init__(self, n: int):
        self.labels: list[str] = []
        self.codes = np.full(n, -1, dtype=np.int32)  # (n,)

    def label(self, text: str) -> int:
        self.labels.append(text)
        return len(self.labels) - 1

    def labels_for(self, texts) -> np.ndarray:
        """One new label per text, as an int32 code array (indexed by the caller, e.g. by score)."""
        return np.asarray([self.label(t) for t in texts], dtype=np.int32)

    def extend(self, texts) -> int:
        """Add the labels; returns the code of the first (codes of the rest follow on)."""
        base = len(self.labels)
        self.labels.extend(texts)
        return base

    def set_candidates(self, pool: _Pool, cut_codes: np.ndarray) -> None:
        """Write each candidate's code (-1: kept) into the table's codes."""
        if pool.rel is None and pool.all_eligible:  # the candidates are the table's rows: take their codes as is
            self.codes = cut_codes
        else:
            self.codes[pool.positions()] = cut_codes


@dataclass
class _Pool:
    """The candidates, eligible rows no rule excludes, in table order: the rows the budget cuts from.

    A candidate position indexes the candidates; an eligible position indexes the eligible rows."""

    elig: np.ndarray  # (m,) table positions of the eligible rows
    rel: np.ndarray | None  # eligible positions of the candidates; None: every eligible row is a candidate
    all_eligible: bool  # m == n: elig is 0..n-1 and gathers through it are skipped

    def take(self, per_eligible: np.ndarray) -> np.ndarray:
        """Values per eligible row -> values per candidate."""
        return per_eligible if self.rel is None else per_eligible[self.rel]

    def take_rows(self, per_row: np.ndarray) -> np.ndarray:
        """Values per table row -> values per candidate."""
        return self.take(per_row if self.all_eligible else per_row[self.elig])

    def table_pos(self, rel: np.ndarray) -> np.ndarray:
        """Candidate positions -> table positions."""
        rel = rel if self.rel is None else self.rel[rel]
        return rel if self.all_eligible else self.elig[rel]

    def positions(self) -> np.ndarray:
        """The table position of every candidate."""
        if self.rel is None:
            return self.elig
        return self.rel if self.all_eligible else self.elig[self.rel]


def _checked_request(prepared: SelectTable, scores, rule, budget: Budget, combine: str, embeddings, dedup
                     ) -> tuple[list[str], list[Rule], str]:  # fmt: skip
    """(the scores without repeats, one Rule per score, the combine word), or a UserError saying what is wrong."""
    scores = list(dict.fromkeys([scores] if isinstance(scores, str) else scores))  # dedupe, keep order
    if not scores:
        raise UserError("Select at least one score.")
    available = [c for c in prepared.columns if c not in BASE_COLUMNS]
    missing = [s for s in scores if s not in prepared.columns or s in BASE_COLUMNS]
    if missing:
        raise UserError(f"missing_score:{missing[0]} -- the score table has no column {missing[0]!r}. "
                        f"Available scores: {', '.join(available) or 'none'}.")
    rules = rules_for(rule, scores)
    combine = str(combine).strip().lower()
    if combine not in COMBINES:
        raise UserError(f"Combine must be 'and' (intersection) or 'or' (union), not {combine!r}.")
    if budget.kind not in ("count", "fraction", "tokens"):
        raise UserError(f"Unknown budget kind {budget.kind!r}. Valid forms: {BUDGET_EXAMPLES}.")
    if dedup is not None and not 0.0 < float(dedup) <= 1.0:
        raise UserError(f"The near-duplicate threshold must be a cosine in (0, 1], not {dedup!r}.")
    if dedup is not None and embeddings is None:
        raise UserError("The near-duplicate filter needs embeddings (score with a base pass that keeps them).")
    return scores, rules, combine


def _eligible(prepared: SelectTable, scores: list[str], include_flagged: bool, reasons: _Reasons) -> np.ndarray:
    """(n,) bool: not flagged (unless ``include_flagged``; a validation pair never) and every score a number. The
    other rows are dropped with ``flagged:<first reason>`` or ``unscored``."""
    flagged, flag_codes, flag_names = prepared.flags()
    unscored = np.zeros(prepared.n, dtype=bool)
    for name in scores:
        unscored |= np.isnan(prepared.values(name))
    eligible = ~unscored
    if include_flagged:
        flagged = prepared.never_selected()
    if flagged.any():
        eligible &= ~flagged
        where = np.flatnonzero(flagged)
        reasons.codes[where] = reasons.extend(f"flagged:{u}" for u in flag_names) + flag_codes[where]
    reasons.codes[unscored & (reasons.codes < 0)] = reasons.label("unscored")
    return eligible


def _candidates(prepared: SelectTable, scores: list[str], rules: list[Rule], combine: str, eligible: np.ndarray,
                reasons: _Reasons) -> tuple[_Pool, np.ndarray, np.ndarray | None]:  # fmt: skip
    """Percentiles among the eligible rows, each score's goodness, and the combine step (points 2 to 4).

    Returns (the candidates, the combined goodness of each eligible row, the score that set it: an index into
    ``scores`` per eligible row, or None for one score). Eligible rows that are not candidates get ``outside_band``.
    """
    elig = np.flatnonzero(eligible)  # (m,) table positions
    m, k = len(elig), len(scores)
    r2 = np.column_stack([prepared.ranks(s, eligible) for s in scores]) if m else np.empty((0, k), np.int64)
    read: dict[int, np.ndarray] = {}

    def values(j: int) -> np.ndarray:  # score j's values among the eligible rows (value rules only)
        if j not in read:
            v = prepared.values(scores[j])
            read[j] = v if m == prepared.n else v[elig]
        return read[j]

    good, allowed = goodness(r2, values, rules, m)  # (m, k) each; allowed is None when no rule excludes a row
    if combine == "and":
        ok, best, limiting = _combine_and(good, allowed, excluded_labels(rules, scores), elig, reasons)
    else:
        ok, best, limiting = _combine_or(good, allowed, excluded_by_all_label(rules), elig, reasons)
    pool = None if ok is None or ok.all() else np.flatnonzero(ok)  # None: every eligible row is a candidate
    return _Pool(elig, pool, m == prepared.n), best, limiting


def _combine_and(good, allowed, labels: list[str], elig, reasons: _Reasons):
    """Intersection: (candidate mask or None when all are, MIN goodness, its score). A row some rule excludes is
    dropped with the first excluding score's label (``labels``: one per score, e.g. ``outside_band:<score>``)."""
    ok = None if allowed is None else _rows_all(allowed)
    best, limiting = _rows_best(good, np.less)
    if ok is not None:
        out = np.flatnonzero(~ok)
        out_labels = reasons.labels_for(labels)
        reasons.codes[elig[out]] = out_labels[(~allowed[out]).argmax(axis=1)]
    return ok, best, limiting


def _combine_or(good, allowed, label: str, elig, reasons: _Reasons):
    """Union: (candidate mask or None when all are, MAX goodness over the admitting scores, its score). A row every
    rule excludes is dropped with ``label`` (e.g. ``outside_band:all``)."""
    if allowed is None:
        ok, masked = None, good
    else:
        floor = -np.inf if good.dtype.kind == "f" else np.iinfo(np.int64).min
        masked = np.where(allowed, good, floor)
        ok = _rows_any(allowed)
        reasons.codes[elig[np.flatnonzero(~ok)]] = reasons.label(label)
    best, limiting = _rows_best(masked, np.greater)
    return ok, best, limiting


def _cut_reasons(rules: list[Rule], scores: list[str], limiting, p: int, reasons: _Reasons) -> np.ndarray:
    """(p,) the reason of each candidate should the budget stop it: ``over_budget`` when every rule is a band, else
    the limiting score's ``below_cut:<score>`` / ``above_cut:<score>`` (``limiting``: the index of the limiting
    score per candidate, None for one score)."""
    texts = cut_labels(rules, scores)
    if texts is None:
        return np.full(p, reasons.label("over_budget"), dtype=np.int32)
    codes = reasons.labels_for(texts)
    return np.full(p, codes[0], dtype=np.int32) if limiting is None else codes[limiting]


def _budget_cut(key, tie, pool_tokens, cut_codes, pool: _Pool, reasons: _Reasons, budget: Budget, n: int, groups,
                embeddings, dedup) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple | None]:  # fmt: skip
    """The budget (point 5), with the quotas and the near-duplicate filter when asked for (points 6 and 7).

    ``key`` then ``tie`` ascending ranks the candidates best first. Returns (the kept candidate positions best first,
    the reason code of every candidate with -1 for a kept one, the best few candidates just below the cut, and with
    the filter (the near duplicates, the kept twin of each) as candidate positions, else None)."""
    limit = int(budget.value) if budget.kind == "count" else math.floor(budget.value * n + 0.5)
    next_rel = ranked = twins = None
    if groups is None and dedup is None:
        kept_rel, next_rel = _plain_cut(key, tie, pool_tokens, budget, limit)
    else:
        kept_rel, cut_codes, ranked, twins = _select_constrained(
            key, tie, pool_tokens, budget, limit, cut_codes, reasons.label,
            None if groups is None else group_codes(groups, n), pool.positions(),
            None if dedup is None else (embeddings, float(dedup)),
        )  # fmt: skip
    cut_codes = np.array(cut_codes, dtype=np.int32)  # (p,) own copy: the reason of each pool row, -1 when kept
    cut_codes[kept_rel] = -1
    if next_rel is None:
        next_rel = _next_after_cut(key, tie, cut_codes, ranked)
    return kept_rel, cut_codes, next_rel, twins


def _plain_cut(key, tie, pool_tokens, budget: Budget, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The budget alone: (the kept candidate positions best first, always a prefix of the ranking; the next few
    below the cut when the partial sort already ranked them, else None)."""
    p = len(key)
    if budget.kind == "tokens":
        order, n_keep = prefix_within_tokens(key, tie, pool_tokens, budget.value)
    else:
        n_keep = min(limit, p)
        order = ordered_prefix(key, tie, n_keep + NEXT_AFTER_CUT)
    known = len(order) >= min(p, n_keep + NEXT_AFTER_CUT)  # the ranking just below the cut is already known
    return order[:n_keep], order[n_keep:n_keep + NEXT_AFTER_CUT] if known else None


def _next_after_cut(key, tie, cut_codes: np.ndarray, ranked: np.ndarray | None) -> np.ndarray:
    """The best few dropped candidates in ranking order. ``ranked``: the prefix of the ranking the near-duplicate
    filter walked (None without the filter), read first."""
    if ranked is not None:  # the filter walked a prefix of the ranking: look there first
        below = ranked[cut_codes[ranked] >= 0]
        if len(below) >= NEXT_AFTER_CUT or len(ranked) >= len(key):
            return below[:NEXT_AFTER_CUT]
    below = np.flatnonzero(cut_codes >= 0)
    return below[ordered_prefix(key[below], tie[below], NEXT_AFTER_CUT)]


def _result(prepared: SelectTable, ids: np.ndarray, tokens: np.ndarray, kept_pos: np.ndarray, next_pos: np.ndarray,
            reasons: _Reasons, by_row: bool, duplicate_of: np.ndarray | None) -> SelectionResult:  # fmt: skip
    """The SelectionResult; ``by_row``: the caller keeps the SelectTable, so the Arrow ids are worth building once
    and the result carries the reason code of every row for saving."""
    codes, labels = reasons.codes, reasons.labels
    drop = np.flatnonzero(codes >= 0)
    arrow_ids = prepared.arrow_ids() if by_row else None
    dropped = DroppedReasons(Taken(ids, drop, arrow_ids), None, codes=(codes[drop], labels))
    kept_ids = ids[kept_pos].tolist()
    return SelectionResult(kept_ids, dropped, prepared.n, int(tokens[kept_pos].sum()), kept_pos=kept_pos,
                           next_pos=next_pos, by_row=None if arrow_ids is None else (arrow_ids, codes, labels),
                           duplicate_of=duplicate_of, rows=(ids, codes, labels))  # fmt: skip


def _duplicate_of(pool: _Pool, n: int, twins: tuple | None) -> np.ndarray | None:
    """(n,) the table position of each near duplicate's kept twin, -1 elsewhere; None without the filter."""
    if twins is None:
        return None
    out = np.full(n, -1, dtype=np.int64)
    dups, kept = twins
    if len(dups):
        out[pool.table_pos(dups)] = pool.table_pos(kept)
    return out


# --------------------------------------------------------------------------------------------------------------
# Selection


def select(
    table: pd.DataFrame | SelectTable,
    scores: list[str],
    rule: Rule | list[Rule],
    budget: Budget,
    include_flagged: bool = False,
    *,
    combine: str = "and",
    groups=None,
    embeddings=None,
    dedup: float | None = None,
) -> SelectionResult:
    """Apply ``rule`` (one for all scores, or one per score) over ``scores`` within ``budget``.

    ``combine`` joins the scores: "and" (intersection) or "or" (union). ``groups`` (one label per table row) turns
    on quotas; ``embeddings`` (n, d) unit vectors aligned with the rows and ``dedup`` (a cosine threshold) turn on
    the near-duplicate filter. See the module docstring for the exact semantics.
    """
    prepared = table if isinstance(table, SelectTable) else SelectTable(table)
    scores, rules, combine = _checked_request(prepared, scores, rule, budget, combine, embeddings, dedup)
    ids, idx = prepared.ids(), prepared.idx()  # (n,) each
    if budget.kind == "tokens" and not prepared.token_columns():
        raise UserError("A token budget needs n_prompt_tokens / n_response_tokens in the score table.")
    tokens = prepared.tokens()  # (n,) missing counts as 0

    reasons = _Reasons(prepared.n)
    eligible = _eligible(prepared, scores, include_flagged, reasons)
    pool, best, limiting = _candidates(prepared, scores, rules, combine, eligible, reasons)
    key, tie, pool_tokens = -pool.take(best), pool.take_rows(idx), pool.take_rows(tokens)  # key: smaller is better
    cut_codes = _cut_reasons(rules, scores, None if limiting is None else pool.take(limiting), len(key), reasons)
    kept_rel, cut_codes, next_rel, twins = _budget_cut(key, tie, pool_tokens, cut_codes, pool, reasons, budget,
                                                       prepared.n, groups, embeddings, dedup)  # fmt: skip
    reasons.set_candidates(pool, cut_codes)
    return _result(prepared, ids, tokens, pool.table_pos(kept_rel), pool.table_pos(next_rel), reasons,
                   by_row=isinstance(table, SelectTable), duplicate_of=_duplicate_of(pool, prepared.n, twins))


def _select_constrained(key, tie, pool_tokens, budget, limit, cut_codes, label, grouping, pool_pos, dedup):
    """Budget with quotas and / or the near-duplicate filter. Returns (kept pool positions in order, cut codes, the
    ranked prefix the filter walked or None, (near duplicates, their kept twins) as pool positions or None).

    Rows a quota stops are dropped with ``over_quota:<group>``; rows the filter skips with ``near_duplicate``.
    """
    p = len(key)
    if grouping is None:
        gcodes, names = np.zeros(p, dtype=np.int64), ["all"]
    else:
        all_codes, names = grouping
        gcodes = all_codes[pool_pos]  # (p,) group of each pool row
    n_groups = len(names)
    if grouping is None:
        quotas = np.asarray([float(budget.value) if budget.kind == "tokens" else float(min(limit, p))])
    else:
        quotas = quotas_for(budget, limit, gcodes, n_groups, pool_tokens)
        cut_codes = np.asarray([label(f"over_quota:{g}") for g in names], dtype=np.int32)[gcodes]
    if dedup is None:  # quotas only: each group keeps its own best prefix
        parts = []
        for g in range(n_groups):
            members = np.flatnonzero(gcodes == g)
            if budget.kind == "tokens":
                order, n_keep = prefix_within_tokens(key[members], tie[members], pool_tokens[members], quotas[g])
            else:
                n_keep = int(quotas[g])
                order = ordered_prefix(key[members], tie[members], n_keep)
            parts.append(members[order[:n_keep]])
        kept = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return kept[np.lexsort((tie[kept], key[kept]))], cut_codes, None, None
    kept, dups, twins, order = _dedup_walk(key, tie, pool_tokens, budget, gcodes, quotas, pool_pos, dedup)
    if len(dups):
        cut_codes = cut_codes.copy()
        cut_codes[dups] = label("near_duplicate")
    return kept, cut_codes, order, (dups, twins)


def _dedup_walk(key, tie, pool_tokens, budget: Budget, gcodes, quotas, pool_pos, dedup):
    """The near-duplicate walk over a long enough prefix of the ranking: (kept, near duplicates, their kept twins,
    the ranked prefix walked), pool positions."""
    emb, tau = dedup
    if getattr(emb, "ndim", 0) != 2:
        raise UserError("The embeddings for the near-duplicate filter must be a (rows, dim) matrix.")
    # Walk a prefix of the ranking long enough for the budget plus some duplicates; when the walk runs off its end
    # before every quota is spent, take a 4x longer prefix and walk again (the result is the same as walking the
    # whole ranking, which would need a full sort).
    p = len(key)
    per_row = max(float(pool_tokens.mean()), 1.0) if budget.kind == "tokens" and p else 1.0
    k = int(quotas.sum() / per_row * 2) + 1024
    while True:
        order = ordered_prefix(key, tie, k) if k < p else np.lexsort((tie, key))
        kept, dups, twins, done = walk_dedup(order, gcodes, quotas, pool_tokens, budget.kind, emb, pool_pos, tau)
        if done or len(order) >= p:
            return kept, dups, twins, order
        k *= 4
