"""A score table prepared for repeated selections: the arrays :func:`scoring.selection.engine.select` reads
(ids, row numbers, token counts, flag reasons, score values), each computed once, and each score's sort order, from
which the ranks among any set of eligible rows are read in linear time.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa

from scoring.errors import UserError
from scoring.schema import NEVER_SELECTED
from scoring.selection.ranking import twice_avg_ranks


def _float_column(table: pd.DataFrame, name: str) -> np.ndarray:
    col = table[name]
    try:
        return pd.to_numeric(col).to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise UserError(f"Column {name!r} of the score table is not numeric ({col.dtype}).") from exc


class SelectTable:
    """A score table prepared for repeated selections: the arrays :func:`~scoring.selection.engine.select` needs,
    computed once.

    Why: at a million rows, converting the id and flag columns and sorting each score cost more than the selection
    itself. The app and :func:`scoring.selection.saved.run_selection` keep one SelectTable per (immutable) score
    view, so moving a slider only re-runs the cheap part. Each score's full sort order is kept like a database
    index: the ranks among the eligible rows of any selection are read off it in linear time. Passing a plain
    DataFrame to ``select`` wraps it in a fresh SelectTable, so results are identical either way.
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

    def never_selected(self) -> np.ndarray:
        """(n,) bool: rows carrying a flag reason no selection keeps (schema.NEVER_SELECTED: validation pairs)."""

        def make():
            if "flag" not in self.table.columns:
                return np.zeros(self.n, dtype=bool)
            reasons = self.table["flag"].fillna("").astype(str).str.split(",")
            return np.array([any(r in NEVER_SELECTED for r in row) for row in reasons], dtype=bool)

        return self._get("never_selected", make)

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
        ranks = twice_avg_ranks(self.values(score)[eligible], position[ordered])
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[(score, digest)] = ranks
        return ranks
