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
3. **Rules**, one for all scores or one per score. Each gives a row a *goodness* per score and may exclude it:

   - ``top``: goodness = percentile; ``bottom``: 100 - percentile; neither excludes anything.
   - ``band:LO-HI``: excludes rows whose percentile is outside [LO, HI]; goodness falls with the distance to the
     band centre (100 at the centre, 0 at the edges).

   When every score has the same rule the goodness is computed in exact integers (ties compare exactly).
4. **Combining scores.** ``and`` (intersection, the default): a row is a candidate when no score's rule excludes
   it; its combined goodness is the MIN over the scores, so the best k rows are the intersection of every score's
   top set, grown until the budget is hit. ``or`` (union): a candidate when at least one rule admits it; the
   combined goodness is the MAX over the admitting scores. Non-candidates are dropped with
   ``outside_band:<first score outside>`` (and) or ``outside_band:all`` (or). Candidates are ranked by combined
   goodness descending (ties: idx ascending) and kept while within budget; the rest are dropped with
   ``below_cut:<score>``, the score that limited the row (and: the lowest goodness, or: the highest; the first
   requested one on ties), or ``over_budget`` when every rule is a band.
5. **Budgets.** ``count`` keeps at most N rows; ``fraction`` keeps at most ``round_half_up(fraction * n_total)``
   rows, where n_total counts ALL rows of the table (flagged and unscored included), so "6%" means 6 % of the
   dataset; ``tokens`` walks the ranked rows and keeps them while the running sum of
   ``n_prompt_tokens + n_response_tokens`` stays within the budget, stopping at the first row that would exceed
   it (skip-and-stop, so the kept set is always a prefix of the ranking). Missing token counts count as 0.
6. **Quotas** (optional, ``groups``: one label per row, e.g. a category column or a map cluster). The budget is
   split over the groups in proportion to each group's share of the candidates (rows; for a token budget, tokens;
   largest remainder for counts), and each group keeps its own best rows within its share (skip-and-stop for
   tokens), so the kept set has the candidates' group mix. Rows a quota stops: ``over_quota:<group>``.
7. **Near-duplicate filter** (optional, ``dedup`` = tau with unit ``embeddings``): walking the ranking best first, a
   row whose cosine to a row already kept exceeds tau is skipped with ``near_duplicate`` and the walk goes on, so
   the budget is still filled with distinct rows. It costs about kept x walked x dim multiply-adds.

Without quotas or the filter everything is vectorised (numpy sort, rank, cumsum): a million rows with two scores
select in a fraction of a second. The only per-row Python work is the filter's accept / skip loop.

Budgets, rules and the result type are in :mod:`scoring.selection.rules`; the prepared score table
(:class:`~scoring.selection.table.SelectTable`) in :mod:`scoring.selection.table`; the rank and partial-sort helpers
in :mod:`scoring.selection.ranking`; quotas and the near-duplicate walk in :mod:`scoring.selection.groups`; saved
selections, the rule spec shared by the CLI and the app, and comparisons in :mod:`scoring.selection.saved`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scoring.errors import UserError
from scoring.selection.groups import group_codes, quotas_for, walk_dedup
from scoring.selection.ranking import ordered_prefix, prefix_within_tokens
from scoring.selection.rules import (
    BASE_COLUMNS,
    BUDGET_EXAMPLES,
    COMBINES,
    NEXT_AFTER_CUT,
    RULE_EXAMPLES,
    Budget,
    DroppedReasons,
    Rule,
    SelectionResult,
    Taken,
    parse_rule,
)
from scoring.selection.table import SelectTable

_EPS = 1e-9  # tolerance on band edges, so 30.000000000000004 is inside [30, 70]


def _rules_for(rule, scores: list[str]) -> list[Rule]:
    """One Rule per score: a single Rule (or a one-item list) applies to every score."""
    rules = list(rule) if isinstance(rule, (list, tuple)) else [rule]
    rules = [parse_rule(r) if isinstance(r, str) else r for r in rules]
    if len(rules) == 1:
        rules = rules * len(scores)
    if len(rules) != len(scores):
        raise UserError(f"Give one rule for all scores or one per score: {len(rules)} rules for {len(scores)} scores "
                        f"({', '.join(scores)}).")
    for r in rules:
        if r.kind not in ("top", "bottom", "band"):
            raise UserError(f"Unknown rule kind {r.kind!r}. Valid forms: {RULE_EXAMPLES}.")
    return rules


def _goodness(r2: np.ndarray, rules: list[Rule], m: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(goodness, allowed), (m, k) each: larger goodness is better; ``allowed`` is False outside a band (None when
    no rule is a band, so nothing is excluded).

    When every score has the same rule the goodness is an exact integer (twice the rank, or minus a scaled
    distance to the band centre), so ties compare exactly. Mixed rules need one scale for all: 0..100, where a
    top score's goodness is its percentile, a bottom score's 100 - percentile, and a band score's 100 at the band
    centre falling to 0 at its edges.
    """
    same = all((r.kind, r.lo, r.hi) == (rules[0].kind, rules[0].lo, rules[0].hi) for r in rules)
    first = rules[0]
    if same and first.kind == "top":
        return r2, None
    if same and first.kind == "bottom":
        return 2 * (m + 1) - r2, None
    pct = (r2 - 2) * 50.0 / (m - 1) if m > 1 else np.full(r2.shape, 50.0)  # (m, k) percentiles 0..100
    allowed = np.ones(r2.shape, dtype=bool)
    for j, r in enumerate(rules):
        if r.kind == "band":
            allowed[:, j] = (pct[:, j] >= r.lo - _EPS) & (pct[:, j] <= r.hi + _EPS)
    if same:  # one band for all: |pct - centre| * 2(m-1) = |(r2 - 2) * 100 - twice_c|, exact when twice_c is whole
        twice_c = (first.lo + first.hi) * (m - 1)
        if float(twice_c).is_integer() and abs(twice_c) < 2**52:
            return -np.abs((r2 - 2) * 100 - int(twice_c)), allowed
        return -np.abs(pct - (first.lo + first.hi) / 2.0), allowed
    good = np.empty(r2.shape, dtype=float)
    for j, r in enumerate(rules):
        if r.kind == "top":
            good[:, j] = pct[:, j]
        elif r.kind == "bottom":
            good[:, j] = 100.0 - pct[:, j]
        else:
            good[:, j] = 100.0 * (1.0 - 2.0 * np.abs(pct[:, j] - (r.lo + r.hi) / 2.0) / (r.hi - r.lo))
    return good, allowed if any(r.kind == "band" for r in rules) else None


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
    rules = _rules_for(rule, scores)
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
    good, allowed = _goodness(r2, rules, m)  # (m, k) each; allowed is None when no rule is a band
    if combine == "and":
        ok, best, limiting = _combine_and(good, allowed, scores, elig, reasons)
    else:
        ok, best, limiting = _combine_or(good, allowed, elig, reasons)
    pool = None if ok is None or ok.all() else np.flatnonzero(ok)  # None: every eligible row is a candidate
    return _Pool(elig, pool, m == prepared.n), best, limiting


def _combine_and(good, allowed, scores, elig, reasons: _Reasons):
    """Intersection: (candidate mask or None when all are, MIN goodness, its score). A row some rule excludes is
    dropped with ``outside_band:<first score outside>``."""
    ok = None if allowed is None else _rows_all(allowed)
    best, limiting = _rows_best(good, np.less)
    if ok is not None:
        out = np.flatnonzero(~ok)
        out_labels = reasons.labels_for(f"outside_band:{s}" for s in scores)
        reasons.codes[elig[out]] = out_labels[(~allowed[out]).argmax(axis=1)]
    return ok, best, limiting


def _combine_or(good, allowed, elig, reasons: _Reasons):
    """Union: (candidate mask or None when all are, MAX goodness over the admitting scores, its score). A row every
    rule excludes is dropped with ``outside_band:all``."""
    if allowed is None:
        ok, masked = None, good
    else:
        floor = -np.inf if good.dtype.kind == "f" else np.iinfo(np.int64).min
        masked = np.where(allowed, good, floor)
        ok = _rows_any(allowed)
        reasons.codes[elig[np.flatnonzero(~ok)]] = reasons.label("outside_band:all")
    best, limiting = _rows_best(masked, np.greater)
    return ok, best, limiting


def _cut_reasons(rules: list[Rule], scores: list[str], limiting, p: int, reasons: _Reasons) -> np.ndarray:
    """(p,) the reason of each candidate should the budget stop it: ``over_budget`` when every rule is a band, else
    ``below_cut:<score>`` (``limiting``: the index of the limiting score per candidate, None for one score)."""
    if all(r.kind == "band" for r in rules):
        return np.full(p, reasons.label("over_budget"), dtype=np.int32)
    cut_labels = reasons.labels_for(f"below_cut:{s}" for s in scores)
    return np.full(p, cut_labels[0], dtype=np.int32) if limiting is None else cut_labels[limiting]


def _budget_cut(key, tie, pool_tokens, cut_codes, pool: _Pool, reasons: _Reasons, budget: Budget, n: int, groups,
                embeddings, dedup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The budget (point 5), with the quotas and the near-duplicate filter when asked for (points 6 and 7).

    ``key`` then ``tie`` ascending ranks the candidates best first. Returns (the kept candidate positions best first,
    the reason code of every candidate with -1 for a kept one, the best few candidates just below the cut)."""
    limit = int(budget.value) if budget.kind == "count" else math.floor(budget.value * n + 0.5)
    next_rel = ranked = None
    if groups is None and dedup is None:
        kept_rel, next_rel = _plain_cut(key, tie, pool_tokens, budget, limit)
    else:
        kept_rel, cut_codes, ranked = _select_constrained(
            key, tie, pool_tokens, budget, limit, cut_codes, reasons.label,
            None if groups is None else group_codes(groups, n), pool.positions(),
            None if dedup is None else (embeddings, float(dedup)),
        )  # fmt: skip
    cut_codes = np.array(cut_codes, dtype=np.int32)  # (p,) own copy: the reason of each pool row, -1 when kept
    cut_codes[kept_rel] = -1
    if next_rel is None:
        next_rel = _next_after_cut(key, tie, cut_codes, ranked)
    return kept_rel, cut_codes, next_rel


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
            reasons: _Reasons, by_row: bool) -> SelectionResult:  # fmt: skip
    """The SelectionResult; ``by_row``: the caller keeps the SelectTable, so the Arrow ids are worth building once
    and the result carries the reason code of every row for saving."""
    codes, labels = reasons.codes, reasons.labels
    drop = np.flatnonzero(codes >= 0)
    arrow_ids = prepared.arrow_ids() if by_row else None
    dropped = DroppedReasons(Taken(ids, drop, arrow_ids), None, codes=(codes[drop], labels))
    kept_ids = ids[kept_pos].tolist()
    return SelectionResult(kept_ids, dropped, prepared.n, int(tokens[kept_pos].sum()), kept_pos=kept_pos,
                           next_pos=next_pos, by_row=None if arrow_ids is None else (arrow_ids, codes, labels))


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
    kept_rel, cut_codes, next_rel = _budget_cut(key, tie, pool_tokens, cut_codes, pool, reasons, budget, prepared.n,
                                                groups, embeddings, dedup)  # fmt: skip
    reasons.set_candidates(pool, cut_codes)
    return _result(prepared, ids, tokens, pool.table_pos(kept_rel), pool.table_pos(next_rel), reasons,
                   by_row=isinstance(table, SelectTable))


def _select_constrained(key, tie, pool_tokens, budget, limit, cut_codes, label, grouping, pool_pos, dedup):
    """Budget with quotas and / or the near-duplicate filter. Returns (kept pool positions in order, cut codes, the
    ranked prefix the filter walked or None).

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
        return kept[np.lexsort((tie[kept], key[kept]))], cut_codes, None
    emb, tau = dedup
    if getattr(emb, "ndim", 0) != 2:
        raise UserError("The embeddings for the near-duplicate filter must be a (rows, dim) matrix.")
    # Walk a prefix of the ranking long enough for the budget plus some duplicates; when the walk runs off its end
    # before every quota is spent, take a 4x longer prefix and walk again (the result is the same as walking the
    # whole ranking, which would need a full sort).
    per_row = max(float(pool_tokens.mean()), 1.0) if budget.kind == "tokens" and p else 1.0
    k = int(quotas.sum() / per_row * 2) + 1024
    while True:
        order = ordered_prefix(key, tie, k) if k < p else np.lexsort((tie, key))
        kept, dups, done = walk_dedup(order, gcodes, quotas, pool_tokens, budget.kind, emb, pool_pos, tau)
        if done or len(order) >= p:
            break
        k *= 4
    if len(dups):
        cut_codes = cut_codes.copy()
        cut_codes[dups] = label("near_duplicate")
    return kept, cut_codes, order
