"""App-facing queries over a materialised score view of either kind (:mod:`scoring.scores.views`).

Why a module of its own: every page is a thin renderer, and the numbers it shows must come from one place that
tests can call without a browser. Each function does its aggregation in DuckDB or numpy next to the data and
returns a small DataFrame or dict -- histogram bins, quantiles, a fixed-seed sample, one page of the table -- so
nothing proportional to the dataset ever reaches the browser.

DuckDB runs in memory (one connection per thread: Streamlit serves sessions from several threads and a
connection is not safe to share); it only reads Parquet files, so it never holds a lock a writer needs.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from scoring.errors import UserError
from scoring.scores.view_reads import (
    arrow,
    column,
    embedding_matrix,
    examples_text,
    memo,
    sample_order,
    search_text,
    sorted_scores,
)
from scoring.scores.views import HIST_BINS, View
from scoring.store.cache import Cache

_LOCAL = threading.local()
PREVIEW_CHARS = 120


_BASE: list = []  # one in-memory DuckDB per process; each thread queries through its own cursor
_BASE_LOCK = threading.Lock()


def _con() -> duckdb.DuckDBPyConnection:
    """This thread's DuckDB cursor. Why a shared database: Streamlit runs every rerun in a new thread, and opening
    a database costs 20-30 ms where a cursor on an open one costs microseconds (registrations stay per cursor)."""
    con = getattr(_LOCAL, "con", None)
    if con is None:
        with _BASE_LOCK:
            if not _BASE:
                _BASE.append(duckdb.connect(":memory:"))
            con = _LOCAL.con = _BASE[0].cursor()
    return con


def query(sql: str, params: list | None = None) -> pd.DataFrame:
    return _con().execute(sql, params or []).df()


def _ident(name: str, allowed: list[str]) -> str:
    """A column name as a quoted identifier, only if the view has it (names never come from free text)."""
    if name not in allowed:
        raise UserError(f"unknown column {name!r}; columns are {', '.join(allowed)}")
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------- distributions (Overview)


LOG_NAMES = ("ppl", "perplexity")  # a score whose name contains one of these is drawn on a log axis by default
LOG_SPREAD = 100.0  # ...and so is any all-positive score whose max is over 100 times its median (heavy-tailed)


def log_default(view: View, name: str) -> bool:
    """Whether ``name`` is ppl-like, so its charts start on a log scale: its name says perplexity (ppl, perplexity),
    or its values say heavy tail (every value > 0 and max / median > LOG_SPREAD, read off the view's ECDF)."""
    if any(word in name.lower() for word in LOG_NAMES):
        return True
    values = (view.stats.get("ecdf") or {}).get(name)
    if not values:
        return False
    low, median, high = values[0], values[len(values) // 2], values[-1]
    return low > 0 and median > 0 and high / median > LOG_SPREAD


def log_label(name: str) -> str:
    """The panel title of a score drawn on log10 values."""
    return f"{name} (log10)"


def _log_bins(view: View, name: str) -> dict | None:
    """HIST_BINS equal-width bins of log10(value) over the positive values of one score, counted in DuckDB:
    {lo, hi (log10 units), counts, non_positive (finite values <= 0, left out)}; None when no value is positive."""
    bins = HIST_BINS
    con = _con()
    con.register("v_all", arrow(view))
    col = "v." + _ident(name, view.score_columns)
    positive = f"isfinite({col}) AND {col} > 0"
    lo, hi, skipped = con.execute(
        f"SELECT min(log10({col})) FILTER (WHERE {positive}), max(log10({col})) FILTER (WHERE {positive}), "
        f"count(*) FILTER (WHERE isfinite({col}) AND {col} <= 0) FROM v_all v").fetchone()  # fmt: skip
    if lo is None:
        return None
    rows = con.execute(
        f"SELECT least(floor((log10({col}) - ?) / ? * {bins}), {bins - 1})::INT AS b, count(*) FROM v_all v "
        f"WHERE {positive} GROUP BY b", [lo, (hi - lo) or 1.0]).fetchall()  # fmt: skip
    counts = np.zeros(bins, dtype=np.int64)
    for b, c in rows:
        counts[int(b or 0)] = c
    return {"lo": float(lo), "hi": float(hi), "counts": counts.tolist(), "non_positive": int(skipped)}


def histograms(view: View, scores: list[str], log: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """Equal-width bins per score (binned in DuckDB when the view was built): columns score, lo, hi, count.

    Scores named in ``log`` are binned on log10 of their positive values instead (in DuckDB, once per view): their
    ``score`` is ``"NAME (log10)"``, lo / hi are log10 units, and ``frame.attrs["non_positive"]`` maps NAME to the
    number of values <= 0 left out (say so next to the chart)."""
    frames, skipped = [], {}
    for name in scores:
        h = memo(view, ("log_bins", name), lambda n=name: _log_bins(view, n)) if name in log else \
            (view.stats.get("histograms") or {}).get(name)  # fmt: skip
        if not h:
            continue
        if name in log:
            skipped[name] = h["non_positive"]
        counts = np.asarray(h["counts"])
        edges = np.linspace(h["lo"], h["hi"], len(counts) + 1) if h["hi"] > h["lo"] else \
            h["lo"] + np.arange(len(counts) + 1) * 1e-9
        label = log_label(name) if name in log else name
        frames.append(pd.DataFrame({"score": label, "lo": edges[:-1], "hi": edges[1:], "count": counts}))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["score", "lo", "hi", "count"])
    out.attrs["non_positive"] = skipped
    return out


def ecdf(view: View, scores: list[str], log: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """The empirical CDF of each score as (score, value, fraction) at evenly spaced fractions. Scores named in
    ``log`` give log10(value) at the fractions whose value is positive, under ``"NAME (log10)"``."""
    frames = []
    for name in scores:
        values = (view.stats.get("ecdf") or {}).get(name)
        if not values:
            continue
        frame = pd.DataFrame({"score": name, "value": values, "fraction": np.linspace(0, 1, len(values))})
        if name in log:
            frame = frame[frame["value"] > 0].assign(score=log_label(name))
            frame["value"] = np.log10(frame["value"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["score", "value", "fraction"])


def sample(view: View, n: int, columns: list[str], scored_only: bool = True) -> pd.DataFrame:
    """A fixed-seed sample of up to ``n`` rows (always the same rows; a smaller n is a subset of a larger one)."""
    allowed = list(dict.fromkeys(["idx", "id", "flag", *view.score_columns, "x", "y", "cluster"]))
    positions = sample_order(view, scored_only)[: int(n)]
    return pd.DataFrame({c: column(view, c)[positions] for c in dict.fromkeys(["idx", "id", *columns])
                         if _ident(c, allowed)})  # fmt: skip


def spearman(view: View) -> pd.DataFrame:
    """The Spearman matrix between scores (computed once, over every scored row, when the view was built)."""
    matrix = view.stats.get("spearman") or {}
    names = [n for n in view.score_columns if n in matrix]
    return pd.DataFrame([[matrix[a].get(b) for b in names] for a in names], index=names, columns=names, dtype=float)


def flag_counts(view: View) -> dict[str, int]:
    """Rows per flag reason (a row flagged for two reasons counts under both)."""
    return dict(view.stats.get("flag_counts") or {})


def flagged_rows(view: View) -> int:
    """Rows with any flag (each row once, however many reasons it has)."""
    return int(memo(view, "flagged_rows", lambda: int(pd.Series(column(view, "flag")).fillna("").ne("").sum())))


def auroc(view: View) -> pd.DataFrame | None:
    """AUROC per score (rows) and defect kind (columns) when the dataset has defect labels, else None."""
    report = view.stats.get("auroc")
    if not report:
        return None
    return pd.DataFrame(report).T


# ---------------------------------------------------------------- the table (Inspect)


@dataclass(frozen=True)
class TableFilter:
    """What the Inspect table shows: flag state, an optional score range, and text in the id / prompt / response."""

    flag: str = "any"  # "any" | "clean" | "flagged" | a reason such as "too_long"
    score: str | None = None
    lo: float | None = None
    hi: float | None = None
    text: str = ""
    scored_only: bool = False


def _where(view: View, f: TableFilter) -> tuple[str, list]:
    """(SQL condition over the view aliased v, parameters)."""
    conds, params = ["true"], []
    if f.flag == "clean":
        conds.append("v.flag = ''")
    elif f.flag == "flagged":
        conds.append("v.flag <> ''")
    elif f.flag and f.flag != "any":
        conds.append("v.flag <> '' AND contains(',' || v.flag || ',', ',' || ? || ',')")
        params.append(f.flag)
    if f.score:
        col = "v." + _ident(f.score, view.score_columns)
        if f.lo is not None:
            conds.append(f"{col} >= ?")
            params.append(float(f.lo))
        if f.hi is not None:
            conds.append(f"{col} <= ?")
            params.append(float(f.hi))
    if f.scored_only:
        conds.append("v.scored")
    return " AND ".join(conds), params


def text_matches(cache: Cache, view: View, text: str) -> np.ndarray:
    """Row positions whose id, prompt or response contains ``text`` (case-insensitive, plain substring)."""
    con = _con()
    con.register("haystack", search_text(cache, view))
    hits = con.execute("SELECT pos FROM haystack WHERE contains(t, ?)", [text.strip().lower()]).fetchnumpy()
    return np.sort(hits["pos"])


def table_page(cache: Cache, view: View, f: TableFilter = TableFilter(), sort: str | None = None,
               descending: bool = True, page: int = 0, page_size: int = 50) -> tuple[pd.DataFrame, int]:
    """One page of the filtered, sorted table, paged in SQL: (rows with a prompt / response preview, total).

    DuckDB runs over the view's Arrow table in memory (no copy); a text filter is a substring match over the
    lower-cased id / prompt / response, joined in as the set of matching idx.
    """
    where, params = _where(view, f)
    con = _con()
    con.register("v_all", arrow(view))
    source = "v_all v"
    if f.text.strip():
        con.register("matches", pa.table({"idx": column(view, "idx")[text_matches(cache, view, f.text)]}))
        source += " SEMI JOIN matches m ON v.idx = m.idx"
    total = int(con.execute(f"SELECT count(*) FROM {source} WHERE {where}", params).fetchall()[0][0])
    order = "v.idx"
    if sort:
        col = "v." + _ident(sort, ["idx", "id", "flag", *view.score_columns])
        order = f"{col} {'DESC' if descending else 'ASC'} NULLS LAST, v.idx"
    cols = ", ".join(f"v.{_ident(c, view.score_columns)}" for c in view.score_columns)
    page_rows = con.execute(
        f"SELECT v.idx, v.id, v.flag, {cols} FROM {source} WHERE {where} ORDER BY {order} "
        f"LIMIT {int(page_size)} OFFSET {int(page) * int(page_size)}", params,
    ).df()  # fmt: skip
    if len(page_rows):
        text = _texts(cache, view, page_rows["idx"].to_numpy(), PREVIEW_CHARS)
        page_rows.insert(3, "prompt", text["prompt"])
        page_rows.insert(4, "response", text["response"])
    return page_rows, total


def positions(view: View, idxs) -> np.ndarray:
    """View row positions of example idx values (the view is sorted by idx)."""
    return np.searchsorted(column(view, "idx"), np.asarray(idxs, dtype=np.int64))


def _texts(cache: Cache, view: View, idxs, chars: int | None = None) -> dict[str, list[str]]:
    """prompt / response of a few examples by idx, in that order (cut to ``chars`` characters when given)."""
    text = examples_text(cache, view)
    take = pa.array(positions(view, idxs))
    out = {}
    for name in ("prompt", "response"):
        values = text[name].take(take).to_pylist()
        out[name] = [v if chars is None or v is None or len(v) <= chars else v[:chars] + "…" for v in values]
    return out


def find_example(view: View, example_id: str) -> int | None:
    """The idx of the example whose id is ``example_id`` (ids are unique per dataset), or None."""
    con = _con()
    con.register("v_all", arrow(view))
    rows = con.execute("SELECT idx FROM v_all WHERE id = ? LIMIT 1", [str(example_id)]).fetchall()
    return int(rows[0][0]) if rows else None


# ---------------------------------------------------------------- one example (Inspect)


def example(cache: Cache, view: View, idx: int) -> dict:
    """Everything the detail panel shows: id, flag, source, prompt, response, scores with percentiles."""
    pos = int(positions(view, [idx])[0])
    if pos >= view.n_rows or int(column(view, "idx")[pos]) != int(idx):
        raise UserError(f"dataset {view.dataset!r} has no example at idx {idx}")
    text = examples_text(cache, view)
    return {
        "idx": int(idx), "id": str(column(view, "id")[pos]), "flag": str(column(view, "flag")[pos] or ""),
        "prompt": text["prompt"][pos].as_py(), "response": text["response"][pos].as_py(),
        "source": text["source"][pos].as_py(), "scores": percentiles(view, pos),
    }  # fmt: skip


def percentiles(view: View, pos: int) -> pd.DataFrame:
    """Each score of one example (view row ``pos``) with its percentile: the share of scored rows below it."""
    out = []
    for name in view.score_columns:
        value = column(view, name)[pos]
        if np.isfinite(value):
            ranked = sorted_scores(view, name)
            below = np.searchsorted(ranked, value, side="left")
            out.append({"score": name, "value": float(value), "percentile": 100.0 * below / max(len(ranked), 1)})
    return pd.DataFrame(out, columns=["score", "value", "percentile"])


def neighbours(cache: Cache, view: View, idx: int, k: int = 8) -> pd.DataFrame:
    """The ``k`` examples nearest to ``idx`` by cosine of the (centred) embeddings: idx, id, cosine, previews."""
    matrix = embedding_matrix(cache, view)
    if matrix is None:
        return pd.DataFrame(columns=["idx", "id", "cosine", "prompt", "response"])
    order = column(view, "idx")
    me = int(np.searchsorted(order, idx))
    query = np.asarray(matrix[me], dtype=np.float32)  # (d,)
    if not np.any(query):
        return pd.DataFrame(columns=["idx", "id", "cosine", "prompt", "response"])
    sims = matrix @ query  # (N,)
    sims[me] = -np.inf
    k = min(k, len(sims) - 1)
    if k <= 0:
        return pd.DataFrame(columns=["idx", "id", "cosine", "prompt", "response"])
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.lexsort((top, -sims[top]))]
    pos, sim = top[np.isfinite(sims[top])], sims[top][np.isfinite(sims[top])]
    out = pd.DataFrame({"idx": order[pos], "id": column(view, "id")[pos], "cosine": sim.astype(float)})
    if len(out):
        text = _texts(cache, view, out["idx"].to_numpy(), PREVIEW_CHARS)
        out["prompt"], out["response"] = text["prompt"], text["response"]
    return out


# ---------------------------------------------------------------- selection views (Select, Map)


def kept_mask(n_rows: int, kept_pos) -> np.ndarray:
    """(n_rows,) True at the table positions ``kept_pos`` (kept rows, or rows marked on a view)."""
    mask = np.zeros(n_rows, dtype=bool)
    if kept_pos is not None and len(kept_pos):
        mask[np.asarray(kept_pos)] = True
    return mask


def rows_at(cache: Cache, view: View, positions, scores: list[str]) -> pd.DataFrame:
    """Rows of the view at table positions (in that order) with their scores and a text preview."""
    positions = np.asarray(positions if positions is not None else [], dtype=np.int64)
    cols = list(dict.fromkeys(["idx", "id", "flag", *scores]))
    out = pd.DataFrame({c: column(view, c)[positions] for c in cols})
    if len(out):
        text = _texts(cache, view, out["idx"].to_numpy(), PREVIEW_CHARS)
        out["prompt"], out["response"] = text["prompt"], text["response"]
    return out
