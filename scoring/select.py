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
3. **Rules.**

   - ``top``: a row's goodness on a score is its percentile; ``bottom``: 100 - percentile. The combined goodness
     is the MIN over the scores, so the best k rows are the intersection of every score's top set, grown until
     the budget is hit. Rows are sorted by combined goodness descending (ties: idx ascending) and kept while
     within budget. An eligible row not kept is dropped with ``below_cut:<score>``, the score that limited it
     (the one with the lowest goodness; the first requested one on ties).
   - ``band:LO-HI``: a row is a candidate when its percentile lies in [LO, HI] for EVERY score; others are
     dropped with ``outside_band:<first score outside>``. Candidates are ranked by closeness to the band centre
     (the MAX over scores of ``|percentile - centre|``, ascending; ties: idx ascending), then the budget applies
     and the rest are dropped with ``over_budget``.
4. **Budgets.** ``count`` keeps at most N rows; ``fraction`` keeps at most ``round_half_up(fraction * n_total)``
   rows, where n_total counts ALL rows of the table (flagged and unscored included), so "6%" means 6 % of the
   dataset; ``tokens`` walks the ranked rows and keeps them while the running sum of
   ``n_prompt_tokens + n_response_tokens`` stays within the budget, stopping at the first row that would exceed
   it (skip-and-stop, so the kept set is always a prefix of the ranking). Missing token counts count as 0.

Everything is vectorised (numpy sort, rank, cumsum): a million rows with two scores select in a fraction of a
second. The only per-row Python work is building the ``dropped`` dict, done with one ``zip``.

Saved selections live under ``cache.selections_dir(dataset)``: ``<name>.json`` (the caller's spec plus counts
and ``kept_sha256``) and ``<name>.parquet`` (id, kept, order, reason for every row).
"""
from __future__ import annotations

import hashlib
import math
import re
import shlex
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scoring.errors import UserError
from scoring.store import Cache, atomic_write_json, atomic_write_parquet, read_json

# Columns of a score table that are not scores.
BASE_COLUMNS = ("idx", "id", "flag", "n_prompt_tokens", "n_response_tokens")

BUDGET_EXAMPLES = '"6%" or "6.5%" (share of all rows), "3000" (row count), "2M-tokens", "500k-tokens", "1200-tokens"'
RULE_EXAMPLES = '"top", "bottom" or "band:25-75" (percentile band, 0 <= LO < HI <= 100)'
SELECTION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_EPS = 1e-9  # tolerance on band edges, so 30.000000000000004 is inside [30, 70]


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
    """Parse "6%" / "6.5%" (fraction), "3000" (count) or "2M-tokens" / "500k-tokens" / "1200-tokens" (tokens)."""
    raw = str(text).strip()
    s = raw.lower().replace(" ", "").replace("_", "")
    problem = "is not understood"
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
    """Which end of the score distribution to keep: "top", "bottom", or a percentile "band" [lo, hi]."""

    kind: str
    lo: float = 0.0
    hi: float = 100.0
    text: str = "top"


def parse_rule(text: str) -> Rule:
    """Parse "top", "bottom" or "band:LO-HI" (percentiles, 0 <= LO < HI <= 100)."""
    raw = str(text).strip()
    s = raw.lower().replace(" ", "")
    if s in ("top", "bottom"):
        return Rule(s, text=raw)
    if m := re.fullmatch(r"band:" + _NUM + "-" + _NUM, s):
        lo, hi = float(m.group(1)), float(m.group(2))
        if 0 <= lo < hi <= 100:
            return Rule("band", lo, hi, raw)
        raise UserError(f"Rule {raw!r}: the band needs 0 <= LO < HI <= 100. Valid forms: {RULE_EXAMPLES}.")
    raise UserError(f"Rule {raw!r} is not understood. Valid forms: {RULE_EXAMPLES}.")


# --------------------------------------------------------------------------------------------------------------
# Selection


class DroppedReasons(Mapping):
    """Read-only ``{id: reason}`` for the dropped rows, kept as two parallel arrays.

    Building a million-entry dict costs more than the whole selection, so the dict is only built on the first
    lookup; ``len``, iteration, :meth:`reason_counts` and saving work on the arrays. ``dict(x)`` gives a plain dict.
    """

    def __init__(self, ids, reasons):
        self._ids_src = ids  # numpy array, list or pandas Series (kept as is until needed)
        self._ids: np.ndarray | None = None
        self.reasons = np.asarray(reasons, dtype=object)
        self._dict: dict[str, str] | None = None

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            src = self._ids_src
            self._ids = src.to_numpy(dtype=object) if isinstance(src, pd.Series) else np.asarray(src, dtype=object)
        return self._ids

    def arrow_ids(self) -> pa.Array:
        arr = pa.array(self._ids_src if self._ids is None else self._ids)
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
        return len(self.reasons)

    def __repr__(self) -> str:
        return f"DroppedReasons({len(self)} ids)"

    def reason_counts(self) -> dict[str, int]:
        if not len(self):
            return {}
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


def _float_column(table: pd.DataFrame, name: str) -> np.ndarray:
    col = table[name]
    try:
        return pd.to_numeric(col).to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise UserError(f"Column {name!r} of the score table is not numeric ({col.dtype}).") from exc


def _twice_avg_ranks(v: np.ndarray) -> np.ndarray:
    """2 x the 1-based average rank of each value (an integer, so ties compare exactly). v: (m,) without NaN."""
    m = len(v)
    order = np.argsort(v)  # (m,)
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


def select(
    table: pd.DataFrame,
    scores: list[str],
    rule: Rule,
    budget: Budget,
    include_flagged: bool = False,
) -> SelectionResult:
    """Apply ``rule`` over ``scores`` within ``budget`` (see the module docstring for the exact semantics)."""
    scores = list(dict.fromkeys([scores] if isinstance(scores, str) else scores))  # dedupe, keep order
    if not scores:
        raise UserError("Select at least one score.")
    available = [str(c) for c in table.columns if c not in BASE_COLUMNS]
    missing = [s for s in scores if s not in table.columns or s in BASE_COLUMNS]
    if missing:
        raise UserError(f"missing_score:{missing[0]} -- the score table has no column {missing[0]!r}. "
                        f"Available scores: {', '.join(available) or 'none'}.")
    if rule.kind not in ("top", "bottom", "band"):
        raise UserError(f"Unknown rule kind {rule.kind!r}. Valid forms: {RULE_EXAMPLES}.")
    if budget.kind not in ("count", "fraction", "tokens"):
        raise UserError(f"Unknown budget kind {budget.kind!r}. Valid forms: {BUDGET_EXAMPLES}.")

    n = len(table)
    ids = table["id"].astype(str).reset_index(drop=True)  # (n,)
    idx = table["idx"].to_numpy(dtype="int64") if "idx" in table.columns else np.arange(n, dtype="int64")
    token_cols = [c for c in ("n_prompt_tokens", "n_response_tokens") if c in table.columns]
    if budget.kind == "tokens" and not token_cols:
        raise UserError("A token budget needs n_prompt_tokens / n_response_tokens in the score table.")
    tokens = np.zeros(n)  # (n,) missing counts as 0
    for col in token_cols:
        tokens += np.nan_to_num(_float_column(table, col), nan=0.0)
    values = np.column_stack([_float_column(table, s) for s in scores]) if n else np.empty((0, len(scores)))  # (n, k)

    # Reason codes: -1 kept, else an index into labels.
    labels: list[str] = []
    codes = np.full(n, -1, dtype=np.int32)

    def label(text: str) -> int:
        labels.append(text)
        return len(labels) - 1

    flag = table["flag"].fillna("").astype(str) if "flag" in table.columns else pd.Series([""] * n, dtype=object)
    flagged = (flag != "").to_numpy(dtype=bool)  # (n,)
    unscored = np.isnan(values).any(axis=1)  # (n,)
    eligible = ~unscored
    if not include_flagged and flagged.any():
        eligible &= ~flagged
        where = np.flatnonzero(flagged)
        first = flag.iloc[where].str.strip(", ").str.split(",", n=1).str[0].str.strip().to_numpy(dtype=object)
        uniq, inverse = np.unique(first.astype(str), return_inverse=True)
        base = len(labels)
        labels.extend(f"flagged:{u}" for u in uniq.tolist())
        codes[where] = base + inverse
    codes[unscored & (codes < 0)] = label("unscored")

    elig = np.flatnonzero(eligible)  # (m,) table positions
    m, k = len(elig), len(scores)
    tie = idx[elig]
    r2 = np.column_stack([_twice_avg_ranks(values[elig, j]) for j in range(k)]) if m else np.empty((0, k), np.int64)

    if rule.kind in ("top", "bottom"):
        good = r2 if rule.kind == "top" else 2 * (m + 1) - r2  # (m, k) monotone in (100 - ) percentile
        key = -good.min(axis=1)  # smaller is better
        cut_codes = np.asarray([label(f"below_cut:{s}") for s in scores], dtype=np.int32)[good.argmin(axis=1)]
        pool = np.arange(m)
    else:
        pct = (r2 - 2) * 50.0 / (m - 1) if m > 1 else np.full(r2.shape, 50.0)  # (m, k) percentiles 0..100
        inside = (pct >= rule.lo - _EPS) & (pct <= rule.hi + _EPS)  # (m, k)
        ok = inside.all(axis=1)
        out = np.flatnonzero(~ok)
        out_labels = np.asarray([label(f"outside_band:{s}") for s in scores], dtype=np.int32)
        codes[elig[out]] = out_labels[(~inside[out]).argmax(axis=1)]
        pool = np.flatnonzero(ok)
        centre = (rule.lo + rule.hi) / 2.0
        twice_c = (rule.lo + rule.hi) * (m - 1)  # |pct - centre| * 2(m-1) = |(r2 - 2) * 100 - twice_c|: exact ints
        if float(twice_c).is_integer() and abs(twice_c) < 2**52 and len(pool):
            key = np.abs((r2[pool] - 2) * 100 - int(twice_c)).max(axis=1)
        else:
            key = np.abs(pct[pool] - centre).max(axis=1) if len(pool) else np.empty(0)
        tie = tie[pool]
        cut_codes = np.full(len(pool), label("over_budget"), dtype=np.int32)

    if budget.kind == "tokens":
        order, n_keep = _prefix_within_tokens(key, tie, tokens[elig[pool]], budget.value)
    else:
        limit = budget.value if budget.kind == "count" else math.floor(budget.value * n + 0.5)
        n_keep = min(int(limit), len(pool))
        order = _ordered_prefix(key, tie, n_keep)
    kept_pos = elig[pool[order[:n_keep]]]  # table positions, best first
    not_kept = np.ones(len(pool), dtype=bool)
    not_kept[order[:n_keep]] = False
    codes[elig[pool[not_kept]]] = cut_codes[not_kept]

    drop = codes >= 0
    reasons = np.asarray(labels + [""], dtype=object)[codes[drop]]
    dropped = DroppedReasons(ids.take(np.flatnonzero(drop)), reasons)
    kept_ids = ids.take(kept_pos).tolist()
    return SelectionResult(kept_ids, dropped, n, int(tokens[kept_pos].sum()))


# --------------------------------------------------------------------------------------------------------------
# Saved selections


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise UserError(
            f"Selection name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit (e.g. top6 or davir-band.v2)."
        )
    return name


def _paths(cache: Cache, dataset: str, name: str) -> tuple[Path, Path]:
    folder = cache.selections_dir(dataset)
    return folder / f"{name}.json", folder / f"{name}.parquet"


def save_selection(cache: Cache, dataset: str, name: str, result: SelectionResult, spec: dict) -> Path:
    """Save ``result`` as ``<name>.parquet`` + ``<name>.json`` (spec + counts); return the JSON path.

    The Parquet file is written first, so a reader that finds the JSON always finds its rows.
    """
    _check_name(name)
    json_path, parquet_path = _paths(cache, dataset, name)
    n_kept = len(result.kept_ids)
    dropped = result.dropped if isinstance(result.dropped, DroppedReasons) else DroppedReasons(
        list(result.dropped.keys()), list(result.dropped.values()))
    n_dropped = len(dropped)
    table = pa.table(
        {
            "id": pa.concat_arrays([pa.array(list(result.kept_ids), type=pa.string()),
                                    dropped.arrow_ids()]),
            "kept": pa.array(np.arange(n_kept + n_dropped) < n_kept, type=pa.bool_()),
            "order": pa.array(np.concatenate([np.arange(n_kept), np.full(n_dropped, -1)]).astype(np.int64)),
            "reason": pa.concat_arrays([pa.array([""] * n_kept, type=pa.string()),
                                        pa.array(dropped.reasons, type=pa.string())]),
        }
    )
    atomic_write_parquet(parquet_path, table)
    record = dict(spec)
    record.update(
        name=name,
        dataset=dataset,
        n_total=int(result.n_total),
        n_kept=n_kept,
        n_dropped=n_dropped,
        tokens_kept=int(result.tokens_kept),
        reason_counts=result.reason_counts(),
        kept_sha256=result.kept_sha256,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_json(json_path, record)
    return json_path


def _saved_names(cache: Cache, dataset: str) -> list[str]:
    folder = cache.selections_dir(dataset)
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []


def _not_found(cache: Cache, dataset: str, name: str) -> UserError:
    names = _saved_names(cache, dataset)
    have = ", ".join(names) if names else "none yet (save one with: python -m scoring select ... --save NAME)"
    return UserError(f"No saved selection {name!r} for dataset {dataset!r}. Saved selections: {have}.")


def load_selection(cache: Cache, dataset: str, name: str) -> tuple[dict, SelectionResult]:
    """The saved record (spec + counts) and the :class:`SelectionResult` it describes."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise _not_found(cache, dataset, name)
    json_path, parquet_path = _paths(cache, dataset, name)
    for attempt in range(3):  # a concurrent re-save may swap the parquet between our two reads: retry
        if attempt:
            time.sleep(0.05)
        record = read_json(json_path)
        if record is None or not parquet_path.exists():
            raise _not_found(cache, dataset, name)
        df = pq.read_table(parquet_path).to_pandas()
        kept = df[df["kept"]].sort_values("order", kind="stable")
        dropped_rows = df[~df["kept"]]
        result = SelectionResult(
            kept_ids=kept["id"].astype(str).tolist(),
            dropped=DroppedReasons(dropped_rows["id"].astype(str).to_numpy(dtype=object),
                                   dropped_rows["reason"].astype(str).to_numpy(dtype=object)),
            n_total=int(record.get("n_total", len(df))),
            tokens_kept=int(record.get("tokens_kept", 0)),
        )
        if record.get("kept_sha256") in (None, result.kept_sha256):
            return record, result
    raise UserError(f"Saved selection {name!r} of dataset {dataset!r} is inconsistent (its rows do not match its "
                    "kept_sha256); save it again.")


def list_selections(cache: Cache, dataset: str) -> list[dict]:
    """Every saved selection record of ``dataset``, sorted by name."""
    out = []
    for name in _saved_names(cache, dataset):
        record = read_json(_paths(cache, dataset, name)[0])
        if isinstance(record, dict):
            record.setdefault("name", name)
            out.append(record)
    return out


def delete_selection(cache: Cache, dataset: str, name: str) -> None:
    """Remove a saved selection (JSON first, so listings never show a half-deleted one)."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise _not_found(cache, dataset, name)
    json_path, parquet_path = _paths(cache, dataset, name)
    if not json_path.exists():
        raise _not_found(cache, dataset, name)
    json_path.unlink(missing_ok=True)
    parquet_path.unlink(missing_ok=True)


def reproduce_command(spec: dict) -> str:
    """The CLI line that rebuilds and saves the selection described by ``spec``."""
    q = shlex.quote
    parts = ["python -m scoring select", q(str(spec.get("dataset", "DATASET")))]
    for score in spec.get("scores") or []:
        parts += ["--score", q(str(score))]
    budget, rule = spec.get("budget", ""), spec.get("rule") or "top"
    budget, rule = getattr(budget, "text", budget), getattr(rule, "text", rule)  # Budget / Rule objects too
    parts += ["--budget", q(str(budget)), "--rule", q(str(rule))]
    if spec.get("include_flagged"):
        parts.append("--include-flagged")
    runs = spec.get("runs") or []
    if runs:  # a selection reads one score job; the CLI names it with --job
        parts += ["--job", q(str(runs[0]))]
    if spec.get("name"):
        parts += ["--save", q(str(spec["name"]))]
    return " ".join(parts)
