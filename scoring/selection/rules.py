"""Selection, the vocabulary: budgets, rules, and the result (kept ids and a reason for every dropped one).

Budgets: "6%" / "6.5%" (a share of ALL rows), "3000" (rows), "2M-tokens" (prompt + response tokens), "all" (every
candidate). Rules, one for all scores or one per score: "top", "bottom", "band:LO-HI" (a percentile band), or a cut
set as a score value: "above:V" (value >= V), "below:V" (value <= V), "band-values:LO-HI" (LO <= value <= HI; the
values may be negative or in scientific notation, e.g. "band-values:-0.5--0.1", "band-values:1e-3-2.5e1"). A band
or value rule excludes rows by itself, so its budget may be left out (:func:`default_budget`: "all"). The exact
semantics of applying them are in :mod:`scoring.selection.engine`.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from scoring.errors import UserError

# Columns of a score table that are not scores.
BASE_COLUMNS = ("idx", "id", "flag", "n_prompt_tokens", "n_response_tokens")

BUDGET_EXAMPLES = ('"6%" or "6.5%" (share of all rows), "3000" (row count), "2M-tokens", "500k-tokens", "1200-tokens", '
                   '"all" (every candidate)')
RULE_EXAMPLES = ('"top", "bottom", "band:25-75" (percentile band, 0 <= LO < HI <= 100), "above:0.731" / "below:-2.5" '
                 '(score value at least / at most V), "band-values:-0.5--0.1" or "band-values:1e-3-2.5e1" '
                 '(LO <= score value <= HI, LO < HI)')
# Rules that exclude rows by themselves (a percentile band or a score value): with only these the budget may be "all".
EXCLUDING_RULES = ("band", "vband", "above", "below")
VALUE_RULES = ("vband", "above", "below")
COMBINES = ("and", "or")
NEXT_AFTER_CUT = 5  # candidates just below the cut reported with a result (the app shows them)
SELECTION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")



# --------------------------------------------------------------------------------------------------------------
# Budgets and rules


@dataclass(frozen=True)
class Budget:
    """How much to keep. ``kind`` is "count" (rows), "fraction" (of all rows, 0..1] or "tokens"."""

    kind: str
    value: float
    text: str  # as the user wrote it


_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_TOKEN_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000, "g": 1_000_000_000}


def parse_budget(text: str) -> Budget:
    """Parse "6%" / "6.5%" (fraction), "3000" (count), "2M-tokens" / "500k-tokens" / "1200-tokens" (tokens) or
    "all" (every candidate: the fraction 1.0)."""
    raw = str(text).strip()
    s = raw.lower().replace(" ", "").replace("_", "")
    problem = "is not understood"
    if s == "all":
        return Budget("fraction", 1.0, raw)
    if m := re.fullmatch(_NUM + r"%", s):
        if 0 < float(m.group(1)) <= 100:
            return Budget("fraction", float(m.group(1)) / 100.0, raw)
        problem = "must be a percentage above 0 and at most 100"
    elif re.fullmatch(r"\d+", s):
        if int(s) > 0:
            return Budget("count", float(int(s)), raw)
        problem = "must keep at least 1 row"
    elif m := re.fullmatch(_NUM + r"([kmbg]?)-?tokens?", s):
        if (n := math.floor(float(m.group(1)) * _TOKEN_UNITS[m.group(2)])) >= 1:
            return Budget("tokens", float(n), raw)
        problem = "must allow at least 1 token"
    raise UserError(f"Budget {raw!r} {problem}. Valid forms: {BUDGET_EXAMPLES}.")


@dataclass(frozen=True)
class Rule:
    """Which part of the score distribution to keep.

    ``kind``: "top", "bottom", a percentile "band" [lo, hi] (0..100), or by score value: "above" (value >= lo),
    "below" (value <= hi), "vband" (lo <= value <= hi). A field a kind does not use keeps its default."""

    kind: str
    lo: float = 0.0
    hi: float = 100.0
    text: str = "top"


_VALUE = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?)"  # a score value: sign and exponent allowed


def parse_rule(text: str) -> Rule:
    """Parse "top", "bottom", "band:LO-HI" (percentiles, 0 <= LO < HI <= 100), "above:V", "below:V" or
    "band-values:LO-HI" (score values, LO < HI; e.g. "band-values:-0.5--0.1", "band-values:1e-3-2.5e1")."""
    raw = str(text).strip()
    s = raw.lower().replace(" ", "")
    if s in ("top", "bottom"):
        return Rule(s, text=raw)
    if m := re.fullmatch(r"band:" + _NUM + "-" + _NUM, s):
        lo, hi = float(m.group(1)), float(m.group(2))
        if 0 <= lo < hi <= 100:
            return Rule("band", lo, hi, raw)
        raise UserError(f"Rule {raw!r}: the band needs 0 <= LO < HI <= 100. Valid forms: {RULE_EXAMPLES}.")
    if m := re.fullmatch(r"(above|below):" + _VALUE, s):
        value = float(m.group(2))
        return Rule("above", lo=value, text=raw) if m.group(1) == "above" else Rule("below", hi=value, text=raw)
    if s.startswith("band-values:"):
        m = re.fullmatch(r"band-values:" + _VALUE + "-" + _VALUE, s)
        if m is None:
            raise UserError(f"Rule {raw!r}: expected band-values:LO-HI with two score values, e.g. "
                            f"band-values:0.2-0.8, band-values:-0.5--0.1 or band-values:1e-3-2.5e1.")
        lo, hi = float(m.group(1)), float(m.group(2))
        if not lo < hi:
            raise UserError(f"Rule {raw!r}: the value band needs LO < HI (got LO {lo:g}, HI {hi:g}), e.g. "
                            f"band-values:0.2-0.8 or band-values:-0.5--0.1.")
        return Rule("vband", lo, hi, raw)
    raise UserError(f"Rule {raw!r} is not understood. Valid forms: {RULE_EXAMPLES}.")


def default_budget(rules) -> str | None:
    """"all" when every rule (texts or Rules) is a band or a value rule, which excludes rows by itself; None when
    some rule needs a budget to cut at ("top", "bottom"). A text that is no rule raises its UserError."""
    rules = [rules] if isinstance(rules, (str, Rule)) else list(rules or ["top"])
    kinds = [r.kind if isinstance(r, Rule) else parse_rule(r).kind for r in rules]
    return "all" if kinds and all(k in EXCLUDING_RULES for k in kinds) else None


def missing_budget_error(budget: str = "--budget", rule: str = "--rule") -> UserError:
    """The message when no budget is given and a rule needs one (``budget`` / ``rule``: how the caller spells the
    options)."""
    return UserError(f"{budget} is required unless every {rule} is a band or a value rule (band:, band-values:, "
                     f"above:, below:). Valid forms: {BUDGET_EXAMPLES}.")


# --------------------------------------------------------------------------------------------------------------
# The result


class Taken:
    """``base[positions]``, taken only when first needed (most selections never read the dropped ids)."""

    def __init__(self, base: np.ndarray, positions: np.ndarray, arrow_base: pa.Array | None = None):
        self.base, self.positions, self.arrow_base = base, positions, arrow_base

    def resolve(self) -> np.ndarray:
        return self.base[self.positions]

    def arrow(self) -> pa.Array | None:
        return None if self.arrow_base is None else self.arrow_base.take(pa.array(self.positions))


class DroppedReasons(Mapping):
    """Read-only ``{id: reason}`` for the dropped rows, kept as two parallel arrays.

    Building a million-entry dict costs more than the whole selection, so the dict is only built on the first
    lookup; ``len``, iteration, :meth:`reason_counts` and saving work on the arrays. ``dict(x)`` gives a plain dict.
    """

    def __init__(self, ids, reasons, codes: tuple[np.ndarray, list[str]] | None = None):
        self._ids_src = ids  # numpy array, list or pandas Series (kept as is until needed)
        self._ids: np.ndarray | None = None
        self._reasons = None if codes is not None else np.asarray(reasons, dtype=object)
        self._codes = codes  # (per-row label index, labels): the reasons without a million-string array
        self._dict: dict[str, str] | None = None

    def arrow_reasons(self) -> pa.Array:
        """The reasons as an Arrow string array (from the codes when there are codes: no Python strings)."""
        if self._reasons is None:
            codes, labels = self._codes
            return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(labels + [""], pa.string())
                                                  ).cast(pa.string())  # fmt: skip
        return pa.array(self._reasons, type=pa.string())

    @property
    def reasons(self) -> np.ndarray:
        if self._reasons is None:
            codes, labels = self._codes
            self._reasons = np.asarray(labels, dtype=object)[codes]
        return self._reasons

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            src = self._ids_src
            if isinstance(src, Taken):
                src = src.resolve()
            self._ids = src.to_numpy(dtype=object) if isinstance(src, pd.Series) else np.asarray(src, dtype=object)
        return self._ids

    def arrow_ids(self) -> pa.Array:
        if isinstance(self._ids_src, Taken) and self._ids is None and self._ids_src.arrow_base is not None:
            return self._ids_src.arrow().cast(pa.string())
        src = self._ids_src.resolve() if isinstance(self._ids_src, Taken) and self._ids is None else self._ids_src
        arr = pa.array(src if self._ids is None else self._ids)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        return arr.cast(pa.string())

    def to_dict(self) -> dict[str, str]:
        if self._dict is None:
            self._dict = dict(zip(self.ids.tolist(), self.reasons.tolist()))
        return self._dict

    def __getitem__(self, key: str) -> str:
        return self.to_dict()[key]

    def __contains__(self, key) -> bool:
        return key in self.to_dict()

    def __iter__(self):
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return len(self._codes[0]) if self._reasons is None else len(self._reasons)

    def __repr__(self) -> str:
        return f"DroppedReasons({len(self)} ids)"

    def reason_counts(self) -> dict[str, int]:
        if not len(self):
            return {}
        if self._reasons is None:
            codes, labels = self._codes
            tally = np.bincount(codes, minlength=len(labels))
            merged: dict[str, int] = {}
            for name, count in zip(labels, tally.tolist()):
                if count:
                    merged[name] = merged.get(name, 0) + count
            return dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])))
        counts = pd.Series(self.reasons, dtype=object).value_counts(sort=False)
        return dict(sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0])))


@dataclass
class SelectionResult:
    """Kept ids best first, and a snake_case reason for every dropped id.

    ``dropped`` is a dict or a :class:`DroppedReasons` (a read-only mapping that builds its dict lazily).
    """

    kept_ids: list[str]
    dropped: Mapping[str, str]
    n_total: int
    tokens_kept: int
    kept_pos: np.ndarray | None = None  # table positions of the kept rows, best first (when made by select)
    next_pos: np.ndarray | None = None  # the best few candidates just below the cut, in ranking order
    # (Arrow ids, reason code per table row (-1: kept), labels) when made by select: saving writes them as they are
    by_row: tuple | None = field(default=None, repr=False, compare=False)
    # (n,) int64: for a row the near-duplicate filter skipped, the table position of the kept row whose cosine
    # exceeded tau (the first such kept row); -1 elsewhere. None when the filter was off.
    duplicate_of: np.ndarray | None = field(default=None, compare=False)
    # (ids (n,), reason code per row (-1: kept), labels) in table order, for scoring.selection.explain.reason_of
    rows: tuple | None = field(default=None, repr=False, compare=False)
    # {"scored": k, "rows": n} when the score run had not finished: the scores covered k of the n rows
    partial: dict | None = field(default=None, compare=False)

    def reason_counts(self) -> dict[str, int]:
        """Dropped rows per reason, most common first (ties by name)."""
        if isinstance(self.dropped, DroppedReasons):
            return self.dropped.reason_counts()
        counts = Counter(self.dropped.values())
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def kept_sha256(self) -> str:
        return kept_sha256(self.kept_ids)


def kept_sha256(ids) -> str:
    """sha256 hex of the sorted kept ids joined by newlines: an order-free fingerprint of a kept set."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()
