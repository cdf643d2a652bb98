"""Selection rules: from a score table to the kept ids and a reason for every dropped one.

The input is a *score table*, a DataFrame with one row per example::

    idx                int    example row number (ties are broken by it, ascending)
    id                 str    example id
    flag               str    "" when fine, else snake_case reasons joined by ","
    n_prompt_tokens    int    may be NaN for unscored rows
    n_response_tokens  int    may be NaN for unscored rows
    <score>            float  one column per score; NaN when not yet scored

Semantics, in the order they apply:

1. **Eligible rows.** A row is eligible when it is not flagged (unless ``include_flagged``) and every requested
   score is a number. Others are dropped with ``flagged:<first reason>`` or ``unscored``. Asking for a score
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

Budgets, rules and the result type are in :mod:`scoring.selection.rules`; quotas and the near-duplicate walk in
:mod:`scoring.selection.groups`; saved selections, the rule spec shared by the CLI and the app, and comparisons in
:mod:`scoring.selection.saved`.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pyarrow as pa

from scoring.errors import UserError
from scoring.selection.groups import group_codes, quotas_for, walk_dedup
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

_EPS = 1e-9  # tolerance on band edges, so 30.000000000000004 is inside [30, 70]


def _float_column(table: pd.DataFrame, name: str) -> np.ndarray:
    col = table[name]
    try:
        return pd.to_numeric(col).to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise UserError(f"Column {name!r} of the score table is not numeric ({col.dtype}).") from exc


def _twice_avg_ranks(v: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
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


def _ordered_prefix(key: np.ndarray, tie: np.ndarray, k: int) -> np.ndarray:
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


def _prefix_within_tokens(key, tie, tokens, budget: float) -> tuple[np.ndarray, int]:
    """Ordered positions covering the token budget, and how many of them fit (skip-and-stop)."""
    n = len(key)
    mean = float(tokens.mean()) if n else 1.0
    k = int(budget / max(mean, 1.0) * 1.5) + 64
    while True:  # few rounds: k grows 4x until the prefix overflows the budget or covers every row
        order = _ordered_prefix(key, tie, k)
        running = np.cumsum(tokens[order])
        if len(order) >= n or (len(running) and running[-1] > budget):
            return order, int(np.searchsorted(running, budget, side="right"))
        k *= 4


class SelectTable:
    """A score table prepared for repeated selections: the arrays :func:`select` needs, computed once.

    Why: at a million rows, converting the id and flag columns and sorting each score cost more than the selection
    itself. The app and :func:`scoring.selections.run_selection` keep one SelectTable per (immutable) score view, so
    moving a slider only re-runs the cheap part. Each score's full sort order is kept like a database index: the
    ranks among the eligible rows of any selection are read off it in linear time. Passing a plain DataFrame to
    :func:`select` wraps it in a fresh SelectTable, so results are identical either way.
    """

    def __init__(self, table: pd.DataFrame):
        self.table = table
        self.n = len(table)
        self._memo: dict = {}

    def _get(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.table.columns]

    def ids(self) -> np.ndarray:
        return self._get("ids", lambda: self.table["id"].astype(str).to_numpy(dtype=object))

    def arrow_ids(self) -> pa.Array:
        """The ids as an Arrow string array (saving a selection takes from it without Python strings)."""
        return self._get("arrow_ids", lambda: pa.array(self.ids(), type=pa.string()))

    def idx(self) -> np.ndarray:
        return self._get("idx", lambda: self.table["idx"].to_numpy(dtype="int64") if "idx" in self.table.columns
                         else np.arange(self.n, dtype="int64"))  # fmt: skip

    def token_columns(self) -> list[str]:
        return [c for c in ("n_prompt_tokens", "n_response_tokens") if c in self.table.columns]

    def tokens(self) -> np.ndarray:
        def make():
            tokens = np.zeros(self.n)  # (n,) missing counts as 0
            for col in self.token_columns():
                tokens += np.nan_to_num(_float_column(self.table, col), nan=0.0)
            return tokens

        return self._get("tokens", make)

    def values(self, score: str) -> np.ndarray:
        return self._get(("values", score), lambda: _float_column(self.table, score))

    def sort_order(self, score: str) -> np.ndarray:
        """argsort of the score over all rows (NaN last), stable: the index ranks are read from."""
        return self._get(("order", score), lambda: np.argsort(self.values(score), kind="stable"))

    def flags(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(flagged (n,) bool, first reason code per row (-1 when clean), the reason names)."""

        def make():
            if "flag" not in self.table.columns:
                return np.zeros(self.n, dtype=bool), np.full(self.n, -1, dtype=np.int64), []
            flag = self.table["flag"].fillna("").astype(str)
            flagged = (flag != "").to_numpy(dtype=bool)
            codes = np.full(self.n, -1, dtype=np.int64)
            where = np.flatnonzero(flagged)
            if not len(where):
                return flagged, codes, []
            first = flag.iloc[where].str.strip(", ").str.split(",", n=1).str[0].str.strip().to_numpy(dtype=object)
            uniq, inverse = np.unique(first.astype(str), return_inverse=True)
            codes[where] = inverse
            return flagged, codes, uniq.tolist()

        return self._get("flags", make)

    def ranks(self, score: str, eligible: np.ndarray) -> np.ndarray:
        """2 x average ranks of the score among the eligible rows, in table order of those rows.

        The last few results are kept per (score, set of eligible rows): moving the budget or a band reuses them."""
        digest = hashlib.blake2b(np.packbits(eligible).tobytes(), digest_size=16).digest()
        cache = self._memo.setdefault("ranks", {})
        hit = cache.get((score, digest))
        if hit is not None:
            return hit
        order = self.sort_order(score)
        ordered = order[eligible[order]]  # eligible table positions, by value
        position = np.cumsum(eligible) - 1  # table position -> index among eligible rows
        ranks = _twice_avg_ranks(self.values(score)[eligible], position[ordered])
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[(score, digest)] = ranks
        return ranks


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

    n = prepared.n
    ids = prepared.ids()  # (n,)
    idx = prepared.idx()
    if budget.kind == "tokens" and not prepared.token_columns():
        raise UserError("A token budget needs n_prompt_tokens / n_response_tokens in the score table.")
    tokens = prepared.tokens()

    # Reason codes: -1 kept, else an index into labels.
    labels: list[str] = []
    codes = np.full(n, -1, dtype=np.int32)

    def label(text: str) -> int:
        labels.append(text)
        return len(labels) - 1

    flagged, flag_codes, flag_names = prepared.flags()
    unscored = np.zeros(n, dtype=bool)
    for name in scores:
        unscored |= np.isnan(prepared.values(name))
    eligible = ~unscored
    if not include_flagged and flagged.any():
        eligible &= ~flagged
        where = np.flatnonzero(flagged)
        base = len(labels)
        labels.extend(f"flagged:{u}" for u in flag_names)
        codes[where] = base + flag_codes[where]
    codes[unscored & (codes < 0)] = label("unscored")

    elig = np.flatnonzero(eligible)  # (m,) table positions
    m, k = len(elig), len(scores)
    all_eligible = m == n  # then elig is 0..n-1 and gathers through it are skipped
    r2 = np.column_stack([prepared.ranks(s, eligible) for s in scores]) if m else np.empty((0, k), np.int64)
    good, allowed = _goodness(r2, rules, m)  # (m, k) each; allowed is None when no rule is a band

    if combine == "and":
        ok = None if allowed is None else _rows_all(allowed)
        best, limiting = _rows_best(good, np.less)
        if ok is not None:
            out = np.flatnonzero(~ok)
            out_labels = np.asarray([label(f"outside_band:{s}") for s in scores], dtype=np.int32)
            codes[elig[out]] = out_labels[(~allowed[out]).argmax(axis=1)]
    else:
        if allowed is None:
            ok, masked = None, good
        else:
            floor = -np.inf if good.dtype.kind == "f" else np.iinfo(np.int64).min
            masked = np.where(allowed, good, floor)
            ok = _rows_any(allowed)
            codes[elig[np.flatnonzero(~ok)]] = label("outside_band:all")
        best, limiting = _rows_best(masked, np.greater)
    pool = None if ok is None or ok.all() else np.flatnonzero(ok)  # None: every eligible row is a candidate

    def in_pool(values: np.ndarray) -> np.ndarray:  # values per eligible row -> per pool row
        return values if pool is None else values[pool]

    def table_pos(rel: np.ndarray) -> np.ndarray:  # pool positions -> table positions
        rel = rel if pool is None else pool[rel]
        return rel if all_eligible else elig[rel]

    key = -in_pool(best)  # smaller is better
    tie = in_pool(idx if all_eligible else idx[elig])
    p = len(key)
    if all(r.kind == "band" for r in rules):
        cut_codes = np.full(p, label("over_budget"), dtype=np.int32)
    else:
        cut_labels = np.asarray([label(f"below_cut:{s}") for s in scores], dtype=np.int32)
        cut_codes = np.full(p, cut_labels[0], dtype=np.int32) if limiting is None else cut_labels[in_pool(limiting)]
    pool_tokens = in_pool(tokens if all_eligible else tokens[elig])
    limit = int(budget.value) if budget.kind == "count" else math.floor(budget.value * n + 0.5)

    next_rel = ranked = None
    if groups is None and dedup is None:
        if budget.kind == "tokens":
            order, n_keep = _prefix_within_tokens(key, tie, pool_tokens, budget.value)
        else:
            n_keep = min(limit, p)
            order = _ordered_prefix(key, tie, n_keep + NEXT_AFTER_CUT)
        kept_rel = order[:n_keep]
        if len(order) >= min(p, n_keep + NEXT_AFTER_CUT):  # the ranking just below the cut is already known
            next_rel = order[n_keep:n_keep + NEXT_AFTER_CUT]
    else:
        kept_rel, cut_codes, ranked = _select_constrained(
            key, tie, pool_tokens, budget, limit, cut_codes, label,
            None if groups is None else group_codes(groups, n), table_pos(np.arange(p)),
            None if dedup is None else (embeddings, float(dedup)),
        )  # fmt: skip
    kept_pos = table_pos(kept_rel)  # table positions, best first
    cut_codes = np.array(cut_codes, dtype=np.int32)  # (p,) own copy: the reason of each pool row, -1 when kept
    cut_codes[kept_rel] = -1
    if next_rel is None and ranked is not None:  # the filter walked a prefix of the ranking: look there first
        below = ranked[cut_codes[ranked] >= 0]
        if len(below) >= NEXT_AFTER_CUT or len(ranked) >= p:
            next_rel = below[:NEXT_AFTER_CUT]
    if next_rel is None:
        below = np.flatnonzero(cut_codes >= 0)
        next_rel = below[_ordered_prefix(key[below], tie[below], NEXT_AFTER_CUT)]
    next_pos = table_pos(next_rel)
    if pool is None and all_eligible:  # one scatter of the pool's codes (kept rows: -1) into the table's
        codes = cut_codes
    else:
        codes[elig if pool is None else (pool if all_eligible else elig[pool])] = cut_codes

    drop = np.flatnonzero(codes >= 0)
    arrow_ids = prepared.arrow_ids() if isinstance(table, SelectTable) else None  # reused: worth building once
    dropped = DroppedReasons(Taken(ids, drop, arrow_ids), None, codes=(codes[drop], labels))
    kept_ids = ids[kept_pos].tolist()
    return SelectionResult(kept_ids, dropped, n, int(tokens[kept_pos].sum()), kept_pos=kept_pos, next_pos=next_pos,
                           by_row=None if arrow_ids is None else (arrow_ids, codes, labels))  # fmt: skip


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
                order, n_keep = _prefix_within_tokens(key[members], tie[members], pool_tokens[members], quotas[g])
            else:
                n_keep = int(quotas[g])
                order = _ordered_prefix(key[members], tie[members], n_keep)
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
        order = _ordered_prefix(key, tie, k) if k < p else np.lexsort((tie, key))
        kept, dups, done = walk_dedup(order, gcodes, quotas, pool_tokens, budget.kind, emb, pool_pos, tau)
        if done or len(order) >= p:
            break
        k *= 4
    if len(dups):
        cut_codes = cut_codes.copy()
        cut_codes[dups] = label("near_duplicate")
    return kept, cut_codes, order
