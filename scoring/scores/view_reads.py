"""Reading a materialised score view in-process: memoised columns, sort orders, samples, texts, groups, embeddings.

Views are immutable files, so everything derived from one can be kept in memory for as long as the process lives,
like ``st.cache_data`` but usable from the engine: the whole view as an Arrow table, numpy columns, each score's
sort order, the examples' text. The memo holds the few most recent views only.
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scoring.errors import UserError
from scoring.ingest.catalog import dataset_meta
from scoring.scores.views import GROUP_PREFIX, View
from scoring.store.cache import Cache
from scoring.store.parts import EMBEDDING_BATCH, embedding_batches, parts_glob, sql_str

_MEMO: OrderedDict = OrderedDict()
_MEMO_LOCK = threading.Lock()
_MAX_VIEWS = 3


def memo(view_or_path, key, make):
    """Per-view memo: ``make()`` once per (view file, key). Views are immutable files, so what is derived from one
    stays true for as long as the file exists."""
    path = str(view_or_path.path if isinstance(view_or_path, View) else view_or_path)
    with _MEMO_LOCK:
        entry = _MEMO.get(path)
        if entry is None:
            entry = _MEMO[path] = {}
            while len(_MEMO) > _MAX_VIEWS:
                _MEMO.popitem(last=False)
        else:
            _MEMO.move_to_end(path)
        if key in entry:
            return entry[key]
    value = make()
    with _MEMO_LOCK:
        entry[key] = value
    return value


def arrow(view: View) -> pa.Table:
    """The whole view as an Arrow table in memory (DuckDB queries it without copying)."""
    return memo(view, "arrow", lambda: pq.read_table(view.path))


def column(view: View, name: str) -> np.ndarray:
    """One column of the view as a numpy array (floats: NaN where missing)."""

    def make():
        col = arrow(view).column(name)
        if pa.types.is_floating(col.type):
            return col.to_numpy().astype(np.float64, copy=False) if col.null_count == 0 else \
                col.to_pandas().to_numpy(dtype=np.float64, na_value=np.nan)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return col.to_numpy(zero_copy_only=False).astype(object)
        return col.to_numpy()

    return memo(view, ("column", name), make)


def frame(view: View, columns: list[str] | None = None) -> pd.DataFrame:
    """Columns of the view as a DataFrame (built from the memoised numpy columns)."""
    names = columns or arrow(view).column_names
    return pd.DataFrame({c: column(view, c) for c in names})


def sorted_scores(view: View, name: str) -> np.ndarray:
    """The finite values of one score, sorted (a percentile is one binary search)."""

    def make():
        values = column(view, name)
        return np.sort(values[np.isfinite(values)])

    return memo(view, ("sorted", name), make)


def sample_order(view: View, scored_only: bool = True) -> np.ndarray:
    """Row positions in fixed-seed sample order (the first n are the sample of n)."""

    def make():
        keys = column(view, "sample_key")
        rows = np.arange(len(keys))
        if scored_only:
            rows = rows[column(view, "scored").astype(bool)]
        return rows[np.argsort(keys[rows], kind="stable")]

    return memo(view, ("sample", scored_only), make)


def examples_text(cache: Cache, view: View) -> pa.Table:
    """prompt / response / source of every example in idx order (for previews, the detail panel and search)."""
    def make():
        table = pq.read_table(cache.examples_path(view.dataset), columns=["idx", "prompt", "response", "source"])
        table = table.sort_by("idx") if len(table) and table["idx"][0].as_py() != 0 else table
        # One chunk per column: taking a few rows from a many-chunk column costs ~3 ms, from one chunk ~0.02 ms
        # (the app takes previews on every rerun). 32-bit offsets cap a string chunk at 2 GiB: larger stays chunked.
        return table.combine_chunks() if table.nbytes < (1 << 31) - (1 << 27) else table

    return memo(view, "examples", make)


def search_text(cache: Cache, view: View) -> pa.Table:
    """(pos, t): id + prompt + response of every view row, lower-cased (text search runs over it in DuckDB)."""
    def make():
        text = examples_text(cache, view)
        joined = pc.binary_join_element_wise(pa.array(column(view, "id"), pa.string()), text["prompt"],
                                             text["response"], "\n")  # fmt: skip
        return pa.table({"pos": np.arange(len(joined), dtype=np.int64), "t": pc.utf8_lower(joined)})

    return memo(view, "search", make)


_EMBEDDINGS: dict[str, np.ndarray] = {}


def embedding_matrix(cache: Cache, view: View) -> np.ndarray | None:
    """(n_rows, dim) float32 unit rows in view order (memory-mapped), or None when the pass kept no embeddings."""
    path = view.path.with_name(f"{view.key}.emb.npy")
    memo = _EMBEDDINGS.get(str(path))
    if memo is not None:
        return memo
    if not path.exists() and not _write_embedding_matrix(cache, view, path):
        return None
    matrix = np.load(path)  # in memory: a matrix-vector product over a memory map re-reads the file each time
    _EMBEDDINGS[str(path)] = matrix
    return matrix


def _write_embedding_matrix(cache: Cache, view: View, path) -> bool:
    """Write ``path`` (see :func:`embedding_matrix`), filling it in place a batch of rows at a time: nothing but the
    matrix is ever held whole. False when the pass kept no embeddings."""
    glob = parts_glob(cache, view.job.base_pass)
    idx, tmp = column(view, "idx"), path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    matrix, total, has = None, None, np.zeros(len(idx), dtype=bool)
    for batch_idx, vectors in embedding_batches(glob) if glob else ():
        if matrix is None:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(idx), vectors.shape[1]))
            total = np.zeros(vectors.shape[1], dtype=np.float64)
        at = np.searchsorted(idx, batch_idx)
        matrix[at], has[at] = vectors, True
        total += vectors.sum(axis=0, dtype=np.float64)
    if matrix is None:
        return False
    mean = (total / has.sum()).astype(np.float32)
    for start in range(0, len(idx), EMBEDDING_BATCH):
        block, rows = matrix[start : start + EMBEDDING_BATCH], has[start : start + EMBEDDING_BATCH]
        centred = block[rows] - mean
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        block[rows] = centred / np.where(norms > 0, norms, 1.0)
    matrix.flush()
    del matrix
    os.replace(tmp, path)
    return True


def group_values(cache: Cache, view: View, name: str) -> pd.Categorical:
    """One group label per view row for quotas: "cluster" (map clusters) or an original column's values."""
    if name == "cluster":
        if not view.has_layout:
            raise UserError(f"dataset {view.dataset!r} has no map yet, so no clusters; compute it with "
                            f"`python -m scoring layout {view.dataset}` or use another --quota column")
        def clusters() -> pd.Categorical:
            codes = column(view, "cluster").astype(np.int64)
            return pd.Categorical.from_codes(codes, categories=[f"cluster {i}" for i in range(int(codes.max()) + 1)])

        return memo(view, ("groups", "cluster"), clusters)
    if GROUP_PREFIX + name in view.stats.get("group_columns", []):
        return memo(view, ("groups", name), lambda: _arrow_categorical(arrow(view).column(GROUP_PREFIX + name)))
    meta = dataset_meta(cache, view.dataset)
    if name not in (meta.get("columns") or []):
        raise UserError(f"no column {name!r} to make quota groups from; use 'cluster' or one of the dataset's "
                        f"columns: {', '.join(map(str, meta.get('columns') or [])) or 'none'}")
    values = duckdb.connect(":memory:").execute(
        f"SELECT coalesce(json_extract_string(original, ?), '') FROM "
        f"read_parquet({sql_str(cache.examples_path(view.dataset))}) ORDER BY idx", ["$." + json.dumps(name)]
    ).fetchnumpy()
    return _categorical(next(iter(values.values())))


def _arrow_categorical(col: pa.ChunkedArray) -> pd.Categorical:
    """:func:`_categorical` of an Arrow string column, without a million Python strings: dictionary-encode in
    Arrow, sort the few distinct labels, remap the codes (same categories and codes as :func:`_categorical`)."""
    encoded = pc.dictionary_encode(col).combine_chunks()  # (n,) indices into a small dictionary
    labels = encoded.dictionary.to_pylist()
    keep = sorted({v for v in labels if v is not None and v != ""})
    where = {v: i for i, v in enumerate(keep)}
    remap = np.asarray([where.get(v, -1) if v is not None else -1 for v in labels] + [-1], dtype=np.int64)
    indices = encoded.indices.fill_null(len(labels)).to_numpy(zero_copy_only=False)  # a missing label: no group
    return pd.Categorical.from_codes(remap[indices], categories=keep)


def _categorical(values) -> pd.Categorical:
    """Labels as a categorical with sorted categories; "" and missing become no group (code -1)."""
    series = pd.Series(np.asarray(values, dtype=object))
    return pd.Categorical(series.where(series.notna() & (series != ""), None))
