"""Rules to numbers for :func:`scoring.selection.engine.select`: each score's goodness per eligible row (larger is
better), which rows a rule excludes, and the drop-reason labels a rule's score gives (points 3 and 4 of the engine's
docstring).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scoring.errors import UserError
from scoring.selection.rules import EXCLUDING_RULES, RULE_EXAMPLES, Rule, parse_rule

EPS = 1e-9  # tolerance on percentile band edges, so 30.000000000000004 is inside [30, 70]
KINDS = ("top", "bottom", "band", "above", "below", "vband")
_HIGH_FIRST = ("top", "above")  # ranked like top: higher value first
_LOW_FIRST = ("bottom", "below")  # ranked like bottom
# What a rule's score says when the rule excludes a row, and when the budget stops a row it admits.
_EXCLUDED = {"above": "below_value", "below": "above_value", "band": "outside_band", "vband": "outside_band"}
_CUT = {"top": "below_cut", "above": "below_cut", "bottom": "above_cut", "below": "above_cut", "band": "below_cut",
        "vband": "below_cut"}  # fmt: skip


def rules_for(rule, scores: list[str]) -> list[Rule]:
    """One Rule per score: a single Rule (or a one-item list) applies to every score."""
    rules = list(rule) if isinstance(rule, (list, tuple)) else [rule]
    rules = [parse_rule(r) if isinstance(r, str) else r for r in rules]
    if len(rules) == 1:
        rules = rules * len(scores)
    if len(rules) != len(scores):
        raise UserError(f"Give one rule for all scores or one per score: {len(rules)} rules for {len(scores)} scores "
                        f"({', '.join(scores)}).")
    for r in rules:
        if r.kind not in KINDS:
            raise UserError(f"Unknown rule kind {r.kind!r}. Valid forms: {RULE_EXAMPLES}.")
    return rules


def allowed_mask(pct: np.ndarray | None, values: Callable[[int], np.ndarray], rules: list[Rule], shape
                 ) -> np.ndarray | None:  # fmt: skip
    """(m, k) bool: False where a rule excludes the row (outside a band, on the wrong side of a value cut); None when
    no rule excludes anything. ``pct``: (m, k) percentiles (needed only for percentile bands); ``values(j)``: the
    score values of column j among the eligible rows (read only for value rules)."""
    if not any(r.kind in EXCLUDING_RULES for r in rules):
        return None
    allowed = np.ones(shape, dtype=bool)
    for j, r in enumerate(rules):
        if r.kind == "band":
            allowed[:, j] = (pct[:, j] >= r.lo - EPS) & (pct[:, j] <= r.hi + EPS)
        elif r.kind == "above":
            allowed[:, j] = values(j) >= r.lo
        elif r.kind == "below":
            allowed[:, j] = values(j) <= r.hi
        elif r.kind == "vband":
            v = values(j)
            allowed[:, j] = (v >= r.lo) & (v <= r.hi)
    return allowed


def goodness(r2: np.ndarray, values: Callable[[int], np.ndarray], rules: list[Rule], m: int
             ) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """(goodness, allowed), (m, k) each: larger goodness is better; ``allowed`` is False where a rule excludes the
    row (None when no rule excludes anything). ``r2``: twice the 1-based average ranks among the m eligible rows.

    Exact integers when every rule ranks the same way: twice the rank for top / above, 2(m+1) minus it for bottom /
    below, minus a scaled distance to the centre for one percentile band, so ties compare exactly. Otherwise one
    scale for all, 0..100: top and above give the percentile, bottom and below 100 - percentile, a percentile band
    100 at its centre falling to 0 at its edges, a value band the same on the value axis (100 at (LO+HI)/2, 0 at LO
    and HI).
    """
    kinds = {r.kind for r in rules}
    same = all((r.kind, r.lo, r.hi) == (rules[0].kind, rules[0].lo, rules[0].hi) for r in rules)
    first = rules[0]
    pct = percentiles(r2, m) if "band" in kinds else None
    allowed = allowed_mask(pct, values, rules, r2.shape)
    if kinds <= set(_HIGH_FIRST):
        return r2, allowed
    if kinds <= set(_LOW_FIRST):
        return 2 * (m + 1) - r2, allowed
    if same and first.kind == "band":  # |pct - centre| * 2(m-1) = |(r2 - 2) * 100 - twice_c|, exact when whole
        twice_c = (first.lo + first.hi) * (m - 1)
        if float(twice_c).is_integer() and abs(twice_c) < 2**52:
            return -np.abs((r2 - 2) * 100 - int(twice_c)), allowed
        return -np.abs(pct - (first.lo + first.hi) / 2.0), allowed
    if pct is None and kinds - {"vband"}:
        pct = percentiles(r2, m)
    return scaled_goodness(pct, values, rules, r2.shape), allowed


def scaled_goodness(pct: np.ndarray | None, values: Callable[[int], np.ndarray], rules: list[Rule], shape
                    ) -> np.ndarray:  # fmt: skip
    """(m, k) each score's goodness on the one 0..100 scale of mixed rules: top and above give the percentile,
    bottom and below 100 - percentile, a percentile band 100 at its centre falling to 0 at its edges, a value band
    the same on the value axis. ``pct``: (m, k) percentiles (None only when every rule is a value band);
    ``values(j)``: the values of column j. What the engine ranks by, and what the app's AUROC of a rule reads."""
    good = np.empty(shape, dtype=float)
    for j, r in enumerate(rules):
        if r.kind in _HIGH_FIRST:
            good[:, j] = pct[:, j]
        elif r.kind in _LOW_FIRST:
            good[:, j] = 100.0 - pct[:, j]
        elif r.kind == "band":
            good[:, j] = 100.0 * (1.0 - 2.0 * np.abs(pct[:, j] - (r.lo + r.hi) / 2.0) / (r.hi - r.lo))
        else:  # vband: by value
            good[:, j] = 100.0 * (1.0 - 2.0 * np.abs(values(j) - (r.lo + r.hi) / 2.0) / (r.hi - r.lo))
    return good


def percentiles(r2: np.ndarray, m: int) -> np.ndarray:
    """(m, k) percentiles 0..100 from twice the 1-based ranks among m rows (50 when there is one row)."""
    return (r2 - 2) * 50.0 / (m - 1) if m > 1 else np.full(r2.shape, 50.0)


def excluded_labels(rules: list[Rule], scores: list[str]) -> list[str]:
    """Per score, the reason of a row its rule excludes: ``below_value:<score>`` (above:), ``above_value:<score>``
    (below:), ``outside_band:<score>`` (band: and band-values:)."""
    return [f"{_EXCLUDED.get(r.kind, 'outside_band')}:{s}" for r, s in zip(rules, scores)]


def excluded_by_all_label(rules: list[Rule]) -> str:
    """The reason of a row every rule excludes (combine "or"): the rules' shared reason with ``:all``
    (``outside_band:all`` for bands), else ``outside_rules:all``."""
    names = {_EXCLUDED.get(r.kind, "outside_band") for r in rules}
    return f"{names.pop()}:all" if len(names) == 1 else "outside_rules:all"


def cut_labels(rules: list[Rule], scores: list[str]) -> list[str] | None:
    """Per score, the reason of a row the budget stops when that score limits it: ``below_cut:<score>`` for top and
    above: (it ranks below the cut), ``above_cut:<score>`` for bottom and below:, ``below_cut:<score>`` for a band
    among other rules. None when every rule is a band (band: or band-values:): such rows are ``over_budget``."""
    if all(r.kind in ("band", "vband") for r in rules):
        return None
    return [f"{_CUT[r.kind]}:{s}" for r, s in zip(rules, scores)]
