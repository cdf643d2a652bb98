"""What the Select workbench shows about a rule, beyond the kept ids: the cut as a score value, the rows at each edge
of the cut, how the rule ranks every row (for the labelled-data AUROC), precision and recall against labels, the
two-score scatter, and turning a brushed range into a rule.

Why here and not in the page: these are numbers, and every number the app shows comes from ``scoring`` so tests
can check it without a browser. Everything works on the view's memoised numpy columns (no per-row Python), so a
control change at a million rows stays well under the interaction budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scoring.queries.view import kept_mask
from scoring.scores.reports import defect_labels, mann_whitney_auroc
from scoring.scores.view_reads import column, memo, sample_order, sorted_scores
from scoring.scores.views import View
from scoring.selection.goodness import (
    allowed_mask,
    percentiles,
    rules_for,
    scaled_goodness,
)
from scoring.selection.ranking import twice_avg_ranks
from scoring.selection.rules import Rule, SelectionResult
from scoring.selection.saved import SelectionSpec
from scoring.store.cache import Cache

EDGE_ROWS = 5  # rows shown on each side of each edge of a cut
VALUE_RULES = ("above", "below", "vband")  # rules stated as score values (the rest are percentiles / ends)
BAND_RULES = ("band", "vband")


# ---------------------------------------------------------------- the cut as values


@dataclass(frozen=True)
class Cut:
    """Where the kept rows sit on one score: ``op`` is "≥" (top / above), "≤" (bottom / below) or "between" (a band),
    ``lo`` / ``hi`` the value edges of the kept rows (None when nothing is kept)."""

    score: str
    op: str
    lo: float | None
    hi: float | None

    @property
    def text(self) -> str:
        if self.lo is None or self.hi is None:
            return f"{self.score}: nothing kept"
        if self.op == "≥":
            return f"{self.score} ≥ {self.lo:.4g}"
        if self.op == "≤":
            return f"{self.score} ≤ {self.hi:.4g}"
        return f"{self.lo:.4g} ≤ {self.score} ≤ {self.hi:.4g}"

    def edges(self) -> list[float]:
        """The value edges an analyst would move: one for a cut, two for a band."""
        if self.lo is None or self.hi is None:
            return []
        return [self.lo] if self.op == "≥" else [self.hi] if self.op == "≤" else [self.lo, self.hi]


def _op(rule: Rule) -> str:
    return "≥" if rule.kind in ("top", "above") else "≤" if rule.kind in ("bottom", "below") else "between"


def spec_rules(spec: SelectionSpec) -> list[Rule]:
    """One parsed rule per score of ``spec``."""
    return rules_for(list(spec.rules), list(spec.scores))


def cuts(view: View, spec: SelectionSpec, result: SelectionResult) -> list[Cut]:
    """The cut of ``result`` on each score of ``spec`` as values: the lowest kept value for a top rule ("davir ≥
    0.731"), the highest for a bottom rule, both ends for a band. With several scores combined by OR a row may be
    kept by another score, so the edges are those of the rows each score admits among the kept."""
    kept = np.asarray(result.kept_pos if result.kept_pos is not None else [], dtype=np.int64)
    out = []
    for score, rule in zip(spec.scores, spec_rules(spec)):
        values = column(view, score)[kept]
        values = values[np.isfinite(values)]
        if not len(values):
            out.append(Cut(score, _op(rule), None, None))
            continue
        out.append(Cut(score, _op(rule), float(values.min()), float(values.max())))
    return out


def edge_rows(view: View, score: str, edge: float, kept_pos, n: int = EDGE_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside): table positions of the ``n`` kept rows whose ``score`` is nearest ``edge`` and of the ``n``
    dropped rows (with a value) nearest it, nearest first. What "just above / below the cut" means for any rule:
    for a band it is read at each of its two edges.

    Reads a window of the score's sort order around the edge (memoised per view), widened until it holds ``n`` of
    each, so a million rows cost a binary search and a few thousand comparisons, not a pass over every row."""
    values = column(view, score)
    order = memo(view, ("value_order", score), lambda: _finite_order(values))  # finite rows, by value
    kept = kept_mask(len(values), kept_pos)
    at = int(np.searchsorted(sorted_scores(view, score), edge))  # sorted_scores(...) == values[order]
    width = 4 * n + 64
    while True:
        lo, hi = max(at - width, 0), min(at + width, len(order))
        window = order[lo:hi]
        distance = np.abs(values[window] - edge)
        inside, outside = _nearest(distance, kept[window], n), _nearest(distance, ~kept[window], n)
        if lo == 0 and hi == len(order):
            return window[inside], window[outside]
        # rows beyond the window are at least this far from the edge: the picks are exact when none is farther
        reach = min(edge - values[order[lo - 1]] if lo else np.inf, values[order[hi]] - edge if hi < len(order)
                    else np.inf)  # fmt: skip
        if all(len(p) == n and distance[p[-1]] <= reach for p in (inside, outside)):
            return window[inside], window[outside]
        width *= 4


def _finite_order(values: np.ndarray) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(values))
    return finite[np.argsort(values[finite], kind="stable")]


def _nearest(distance: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Indexes (into ``distance``) of the ``n`` smallest distances where ``mask``, smallest first."""
    where = np.flatnonzero(mask & np.isfinite(distance))
    if len(where) > n:
        where = where[np.argpartition(distance[where], n)[:n]]
    return where[np.argsort(distance[where], kind="stable")]


# ---------------------------------------------------------------- the rule as a ranking, and labels


def goodness(view: View, spec: SelectionSpec) -> np.ndarray:
    """(n_rows,) how well the rule likes every row: each score's goodness on the engine's 0..100 scale of mixed
    rules (:func:`scoring.selection.goodness.scaled_goodness`, the engine's own code), combined like the engine (AND:
    the minimum over the scores, OR: the maximum); -inf for a row a rule excludes, NaN for a row without every score.

    The engine ranks only eligible rows; this ranks every row with every score (flags aside), which is what an
    AUROC against labels needs, so percentiles can differ from the engine's by the flagged rows: the kept set
    always comes from the engine, this only orders rows for the AUROC."""
    rules = spec_rules(spec)
    columns = [column(view, s) for s in spec.scores]
    rows = np.flatnonzero(np.logical_and.reduce([np.isfinite(c) for c in columns]))  # (m,) rows with every score
    out = np.full(view.n_rows, np.nan)
    if not len(rows):
        return out
    r2 = np.column_stack([twice_avg_ranks(c[rows]) for c in columns])  # (m, k)
    pct = percentiles(r2, len(rows))

    def values(j: int) -> np.ndarray:
        return columns[j][rows]

    good = scaled_goodness(pct, values, rules, r2.shape)
    allowed = allowed_mask(pct, values, rules, r2.shape)
    if allowed is not None:
        good = np.where(allowed, good, -np.inf)
    out[rows] = good.min(axis=1) if spec.combine == "and" else good.max(axis=1)
    return out


def labels(cache: Cache, view: View) -> np.ndarray | None:
    """(n_rows,) the defect label of every view row ("" = clean) when the dataset has labels (the demo), else None."""
    def make():
        by_idx = defect_labels(cache, view.dataset)
        if by_idx is None:
            return None
        return by_idx.reindex(column(view, "idx")).fillna("").to_numpy(dtype=object)

    return memo(view, "defect_labels", make)


@dataclass(frozen=True)
class Quality:
    """The current rule against the labels: clean rows are the positives (the rows a curator wants to keep)."""

    precision: float | None  # clean share of the kept rows
    recall: float  # share of all clean rows the rule keeps
    auroc: float | None  # how well the rule's ranking puts clean rows above defects (0.5 = chance)
    base_rate: float  # clean share of the labelled rows: the precision a random subset would have
    n_kept: int
    n_clean: int
    n_labelled: int


def quality(cache: Cache, view: View, spec: SelectionSpec, result: SelectionResult) -> Quality | None:
    """Precision, recall and AUROC of the rule against the dataset's defect labels; None without labels."""
    lab = labels(cache, view)
    if lab is None:
        return None
    clean = lab == ""
    kept = kept_mask(len(lab), result.kept_pos)
    n_kept, n_clean = int(kept.sum()), int(clean.sum())
    good = goodness(view, spec)
    scored = ~np.isnan(good)
    finite = np.where(np.isfinite(good), good, -1e9)  # excluded rows rank below every admitted one, tied
    auc = mann_whitney_auroc(finite[scored & clean], finite[scored & ~clean])
    return Quality(
        precision=float((kept & clean).sum() / n_kept) if n_kept else None,
        recall=float((kept & clean).sum() / n_clean) if n_clean else 0.0,
        auroc=auc, base_rate=float(clean.mean()) if len(lab) else 0.0,
        n_kept=n_kept, n_clean=n_clean, n_labelled=len(lab),
    )  # fmt: skip


# ---------------------------------------------------------------- linked views


def scatter_points(view: View, x: str, y: str, n: int, kept_pos=None, highlight=None) -> pd.DataFrame:
    """A fixed-seed sample of up to ``n`` rows with both scores: pos, id, x value, y value, ``rows`` (kept /
    dropped), ``marked`` (True for positions in ``highlight``, the rows chosen on another view)."""
    xs, ys = column(view, x), column(view, y)

    def both() -> np.ndarray:  # the sample order of the rows with both scores (memoised per view and pair)
        order = sample_order(view, scored_only=True)
        return order[np.isfinite(xs[order]) & np.isfinite(ys[order])]

    pos = np.sort(memo(view, ("scatter_order", x, y), both)[: int(n)])
    kept, marked = kept_mask(view.n_rows, kept_pos), kept_mask(view.n_rows, highlight)
    return pd.DataFrame({"pos": pos, "id": column(view, "id")[pos], x: xs[pos], y: ys[pos],
                         "rows": np.where(kept[pos], "kept", "dropped"), "marked": marked[pos]})  # fmt: skip


def in_box(view: View, x: str, y: str, x_range, y_range) -> np.ndarray:
    """Table positions of every row (not just the drawn sample) whose (x, y) scores fall inside the box."""
    xs, ys = column(view, x), column(view, y)
    (x0, x1), (y0, y1) = sorted(x_range), sorted(y_range)
    with np.errstate(invalid="ignore"):
        return np.flatnonzero((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1))


def brush_rule(x0: float, x1: float, lo: float, hi: float, as_band: bool = False) -> str:
    """The rule a brushed range [x0, x1] on a histogram spanning [lo, hi] stands for: a range touching the right end
    is "above:x0", touching the left end "below:x1", else a value band (or always a band with ``as_band``)."""
    x0, x1 = sorted((float(x0), float(x1)))
    span = (hi - lo) or 1.0
    touches_right, touches_left = x1 >= hi - 0.03 * span, x0 <= lo + 0.03 * span  # within 3 % of an end
    if not as_band and touches_right and not touches_left:
        return f"above:{value_text(x0)}"
    if not as_band and touches_left and not touches_right:
        return f"below:{value_text(x1)}"
    return f"band-values:{value_text(x0)}-{value_text(x1)}"


def value_text(x: float) -> str:
    """A score value as a short exact-enough text for a rule, from the brush or the Select controls (6 significant
    digits, no exponent for ordinary values)."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    text = f"{x:.6g}"
    return text if "e" not in text else f"{x:.6e}"


def kept_bins(view: View, score: str, kept_pos, log: bool = False, marked=None, bins: int = 40) -> pd.DataFrame:
    """One score's histogram split into kept and dropped rows, plus the rows marked on another view: lo, hi (bin
    edges, in log10 units when ``log``), kept, dropped, marked. With ``log`` the bins are equal-width in log10 of the
    positive values (rows at or below 0 are left out and counted in ``attrs["left_out"]``)."""
    def binned():
        values = column(view, score)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log10(values) if log else values
        ok = np.isfinite(x)
        lo, hi = (float(x[ok].min()), float(x[ok].max())) if ok.any() else (0.0, 1.0)
        width = (hi - lo) or 1.0
        which = np.where(ok, np.minimum(np.floor((np.where(ok, x, lo) - lo) / width * bins), bins - 1), -1)
        left_out = int((np.isfinite(values) & ~ok).sum())
        return which.astype(np.int16), lo, hi, np.bincount(which[which >= 0].astype(np.int64), minlength=bins), left_out

    which, lo, hi, total, left_out = memo(view, ("kept_bins", score, bool(log), bins), binned)

    def count(positions) -> np.ndarray:
        got = which[np.asarray(positions if positions is not None else [], dtype=np.int64)]
        return np.bincount(got[got >= 0].astype(np.int64), minlength=bins)[:bins]

    edges = np.linspace(lo, hi, bins + 1) if hi > lo else lo + np.arange(bins + 1) * 1e-9
    kept = count(kept_pos)
    out = pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "kept": kept, "dropped": total - kept,
                        "marked": count(marked)})  # fmt: skip
    out.attrs["left_out"] = left_out
    return out
