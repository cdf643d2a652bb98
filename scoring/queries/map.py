"""The Map's queries: the fixed-seed sample of laid-out points it draws (with a text snippet per point for the
hover), a saved selection as view positions (to colour the map by it), and a hand-picked set saved as a selection.

Why a module of its own: the map is drawn on two pages (Map, and Select's linked views) and must cost the same small
amount on both whatever the dataset's size. Everything here is memoised per view: the sample of ``n`` points with
their ids, coordinates and snippets is built once per (view, n), so a recolour only gathers one column at the
sampled positions (a few microseconds per thousand points), and a saved selection's positions are computed once per
file stamp (inode, size, mtime) of its rows.

Dataset text is untrusted: ``snippet`` stays plain text, and ``hover`` -- what Plotly renders as HTML-like markup
in the hover box -- is built here, once per sample, from ``html.escape``-d id and snippet (escaping 20,000 texts on
every recolour cost more than the rest of the figure).
"""
from __future__ import annotations

import html
import threading
from collections import OrderedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scoring.errors import UserError
from scoring.ingest.catalog import dataset_meta
from scoring.queries.view import kept_mask
from scoring.scores.view_reads import arrow, column, examples_text, memo, sample_order
from scoring.scores.views import View
from scoring.selection.files import (
    already_saved_message,
    check_name,
    save_selection,
    selection_exists,
    selection_paths,
)
from scoring.selection.rules import DroppedReasons, SelectionResult
from scoring.store.cache import Cache

SNIPPET_CHARS = 100  # the hover shows this many characters of "prompt → response"
MANUAL_REASON = "not_in_lasso"  # why a row is not in a hand-picked selection


def laid_out_order(view: View) -> np.ndarray:
    """View positions that have a layout point, in fixed-seed sample order (the first n are the sample of n)."""
    def make() -> np.ndarray:
        order = sample_order(view, scored_only=False)
        return order[np.isfinite(column(view, "x")[order])]

    return memo(view, ("map", "order"), make)


def snippets(cache: Cache, view: View, positions) -> list[str]:
    """The first :data:`SNIPPET_CHARS` characters of "prompt → response" of the rows at view ``positions``, on one
    line (plain text: escape it before rendering it as HTML)."""
    positions = np.asarray(positions, dtype=np.int64)
    if not len(positions):
        return []
    text = examples_text(cache, view)
    take = pa.array(positions)
    room = SNIPPET_CHARS + 1
    prompt = pc.utf8_slice_codeunits(pc.fill_null(text["prompt"].take(take), ""), 0, room).to_pylist()
    response = pc.utf8_slice_codeunits(pc.fill_null(text["response"].take(take), ""), 0, room).to_pylist()
    out = []
    for p, r in zip(prompt, response):
        joined = " ".join(f"{p} → {r}".split())
        out.append(joined if len(joined) <= SNIPPET_CHARS else joined[: SNIPPET_CHARS - 1] + "…")
    return out


def hover_html(ids, texts) -> list[str]:
    """"<b>id</b><br>snippet" per row, every id and snippet html-escaped (&, <, >) for Plotly's hover text."""
    return [f"<b>{html.escape(str(i), quote=False)}</b><br>{html.escape(str(t), quote=False)}"
            for i, t in zip(ids, texts)]  # quotes stay: with < and > escaped there is no tag for them to close


def _frame(cache: Cache, view: View, positions: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame({
        "pos": positions.astype(np.int64), "idx": column(view, "idx")[positions], "id": column(view, "id")[positions],
        "x": column(view, "x")[positions].astype(np.float32), "y": column(view, "y")[positions].astype(np.float32),
        "flag": column(view, "flag")[positions], "snippet": snippets(cache, view, positions),
    })  # fmt: skip
    out["hover"] = hover_html(out["id"], out["snippet"])
    return out


def sample_frame(cache: Cache, view: View, n: int) -> pd.DataFrame:
    """The fixed-seed sample of up to ``n`` laid-out points in position order: pos, idx, id, x, y (float32), flag,
    snippet (plain text), hover (escaped HTML). Memoised per (view, n); treat it as read-only."""
    n = int(n)
    return memo(view, ("map", "sample", n),
                lambda: _frame(cache, view, np.sort(laid_out_order(view)[:n])))  # fmt: skip


def map_points(cache: Cache, view: View, n: int, colour: str | None = None, kept_pos=None,
               extra=None) -> pd.DataFrame:  # fmt: skip
    """The points the map draws: the fixed-seed sample of up to ``n`` laid-out points, plus the laid-out rows at
    view positions ``extra`` (rows to highlight that the sample missed), with the colour column.

    ``colour``: a score name (a float32 column of that name), "kept" (a column "kept" holding "kept" / "dropped" by
    ``kept_pos``, view positions of the kept rows), or None. Columns: pos, idx, id, x, y, flag, snippet, hover, colour."""
    out = sample_frame(cache, view, n)
    if extra is not None and len(extra):
        extra = np.unique(np.asarray(extra, dtype=np.int64))
        extra = extra[(extra >= 0) & (extra < view.n_rows)]
        extra = extra[np.isfinite(column(view, "x")[extra]) & ~np.isin(extra, out["pos"].to_numpy())]
        if len(extra):
            out = pd.concat([out, _frame(cache, view, extra)], ignore_index=True)
    out = out.copy(deep=False)
    positions = out["pos"].to_numpy()
    if colour == "kept":
        out["kept"] = np.where(kept_mask(view.n_rows, kept_pos)[positions], "kept", "dropped")
    elif colour:
        if colour not in view.score_columns:
            raise UserError(f"no score {colour!r} in this score run; scores are {', '.join(view.score_columns)}")
        out[colour] = column(view, colour)[positions].astype(np.float32)
    return out


# ---------------------------------------------------------------- saved selections as positions

_SAVED: OrderedDict = OrderedDict()
_SAVED_LOCK = threading.Lock()


def saved_positions(cache: Cache, view: View, name: str) -> tuple[np.ndarray, int]:
    """(view positions of the rows saved selection ``name`` keeps, how many of its kept ids this view lacks).

    Memoised per (view, file stamp of the selection's rows): a re-saved selection is read afresh."""
    rows_path = selection_paths(cache, view.dataset, check_name(name))[1]
    try:
        st = rows_path.stat()
    except FileNotFoundError:
        raise UserError(f"No saved selection {name!r} for dataset {view.dataset!r}.") from None
    key = (str(view.path), str(rows_path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _SAVED_LOCK:
        hit = _SAVED.get(key)
    if hit is not None:
        return hit
    hit = _kept_positions(view, pq.read_table(rows_path, columns=["id", "kept"]))
    with _SAVED_LOCK:
        _SAVED[key] = hit
        while len(_SAVED) > 16:
            _SAVED.popitem(last=False)
    return hit


def _kept_positions(view: View, table: pa.Table) -> tuple[np.ndarray, int]:
    """(sorted view positions of the kept ids, kept ids not in the view). A selection saved by the rule engine holds
    one row per view row in view order: then the kept flags are the answer (~10 ms at a million rows, where
    looking a million ids up costs ~300 ms)."""
    ids = arrow(view).column("id")
    kept = table["kept"].to_numpy(zero_copy_only=False).astype(bool)
    if table.num_rows == view.n_rows and table["id"].cast(ids.type).equals(ids):
        return np.flatnonzero(kept), 0
    kept_ids = table["id"].filter(pa.array(kept))
    found = pc.index_in(kept_ids, value_set=ids.combine_chunks()).drop_null().to_numpy().astype(np.int64)
    return np.sort(found), int(len(kept_ids) - len(found))


# ---------------------------------------------------------------- a hand-picked set as a saved selection


def hand_picked(view: View, positions, order_by: str | None = None) -> SelectionResult:
    """A :class:`SelectionResult` keeping the rows at view ``positions`` (best first by ``order_by``, highest value
    first, rows without a value last; else in position order) and dropping every other row as ``not_in_lasso``."""
    pos = np.unique(np.asarray(positions, dtype=np.int64))
    pos = pos[(pos >= 0) & (pos < view.n_rows)]
    if not len(pos):
        raise UserError("Nothing chosen: drag a box or a lasso on the map first.")
    if order_by in view.score_columns:
        values = column(view, order_by)[pos]
        pos = pos[np.lexsort((pos, np.isnan(values), -np.nan_to_num(values, nan=0.0)))]
    ids = column(view, "id")
    kept = kept_mask(view.n_rows, pos)
    tokens = 0
    for name in ("n_prompt_tokens", "n_response_tokens"):
        if name in arrow(view).column_names:
            tokens += int(np.nansum(column(view, name)[pos]))
    others = ids[~kept]
    return SelectionResult(kept_ids=[str(i) for i in ids[pos]],
                           dropped=DroppedReasons(others, None, codes=(np.zeros(len(others), np.int32), [MANUAL_REASON])),
                           n_total=int(view.n_rows), tokens_kept=tokens)  # fmt: skip


def save_hand_picked(cache: Cache, view: View, name: str, positions, order_by: str | None = None,
                     replace: bool = False, source: str = "a lasso on the map"):  # fmt: skip
    """Save the rows at view ``positions`` as selection ``name``: a hand-picked set, and its record says so
    (rule "manual", no scores, ``manual: true``; no CLI line rebuilds it). Refuses to replace an existing selection
    of that name unless ``replace``. Returns (the JSON path, the result)."""
    check_name(name)
    existing = selection_exists(cache, view.dataset, name)
    if existing is not None and not replace:
        raise UserError(already_saved_message(existing, view.dataset, name) + ". Tick “Replace” to overwrite it, "
                        "or choose another name.")  # fmt: skip
    result = hand_picked(view, positions, order_by)
    record = {
        "dataset": view.dataset, "dataset_fingerprint": dataset_meta(cache, view.dataset).get("fingerprint"),
        "scores": [], "rule": "manual", "rules": ["manual"], "combine": "and", "budget": str(len(result.kept_ids)),
        "include_flagged": True, "quota": None, "dedup": None, "runs": [view.job.id], "name": name, "manual": True,
        "source": source, "order_by": order_by if order_by in view.score_columns else None,
    }  # fmt: skip
    return save_selection(cache, view.dataset, name, result, record), result
