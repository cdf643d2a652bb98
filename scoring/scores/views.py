"""Materialised score views: a job's score table written once to Parquet, so the app queries instead of recomputing.

Why: the score table of a job is a join of the examples with every pass part, then the score functions in pandas.
At a million rows that takes seconds -- far too slow to redo on every click. A *view* is that table (exactly
:func:`scoring.scores.tables.score_table`'s rows and values) written to ``<cache>/views/<dataset>/<job>/<key>.parquet``
plus a small ``<key>.json`` of whole-table statistics (Spearman matrix, flag counts, AUROC, group columns).
Pages then run DuckDB aggregates over one file and read one row group to show an example.

The key covers everything the view is made from: the job, the names of the pass parts present (parts are
immutable, so their names identify their content), the embedding map's file, the dataset fingerprint and this module's
version. New parts land while a job runs -> a new key -> a new view; ``max_age_s`` lets a caller accept a view a
few seconds stale instead of rebuilding for every part. Views are written temp-then-rename, JSON last: a view
whose JSON exists is complete. Old views of the same job are removed a while after a newer one lands.

Extra columns beside the scores (never shown as scores):

    sample_key   int64  a fixed pseudo-random number per idx: ``ORDER BY sample_key LIMIT n`` is a fixed-seed
                        sample, and a smaller sample is always inside a larger one
    scored       bool   the row has at least one model score (not only token counts)
    base_part    int32  which base-pass part holds the row (index into stats["base_parts"]; -1: not scored yet)
    ref_part     int32  the same for the reference pass
    x, y         float  the UMAP map (NaN without one)
    cluster      int16  k-means cluster of the map (-1 without one): the "map clusters" quota groups
    group_<col>  str    low-cardinality original columns (e.g. a category), usable as quota groups

``embedding_matrix`` adds, on first use, ``<key>.emb.npy``: the base pass's embeddings in view row order, mean-centred
(mean-pooled hidden states of a small LM all point roughly the same way; centring makes cosine separate them) and
unit-normalised, zero rows where missing (float32: 4 x dim bytes per row in memory once loaded).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scoring.ingest.catalog import dataset_meta
from scoring.scores.registry import SCORES
from scoring.scores.reports import auroc_report, flag_counts
from scoring.scores.tables import pick_job, score_columns, score_table
from scoring.store.cache import Cache, atomic_write_json, atomic_write_parquet, read_json
from scoring.store.jobs import Job
from scoring.store.parts import parts_glob, sql_str

VIEW_VERSION = "3"  # 3: pair views count rows scored by their pair scores
GROUP_PREFIX = "group_"
N_CLUSTERS = 8
KEEP_OLD_VIEWS_S = 120.0  # a reader may still be using an older view for a moment
_GROUP_MAX_VALUES = 50  # an original column with at most this many distinct short values is offered as groups
_GROUP_SAMPLE = 2000


@dataclass(frozen=True)
class View:
    """One materialised score view: where it is, the job it came from and its whole-table statistics."""

    dataset: str
    job: Job
    key: str
    path: Path
    stats: dict = field(compare=False)

    @property
    def score_columns(self) -> list[str]:
        return list(self.stats["score_columns"])

    @property
    def group_columns(self) -> list[str]:
        """Quota groups on offer: "cluster" when a layout exists, then the original category-like columns."""
        out = ["cluster"] if self.stats.get("has_layout") else []
        return out + [c[len(GROUP_PREFIX):] for c in self.stats.get("group_columns", [])]

    @property
    def n_rows(self) -> int:
        return int(self.stats["n_rows"])

    @property
    def n_scored(self) -> int:
        return int(self.stats["n_scored"])

    @property
    def has_layout(self) -> bool:
        return bool(self.stats.get("has_layout"))

    @property
    def sql(self) -> str:
        """A DuckDB table expression for the view."""
        return f"read_parquet({sql_str(self.path)})"


def _part_names(cache: Cache, key: str | None) -> list[str]:
    if not key:
        return []
    try:
        with os.scandir(cache.parts_dir(key)) as it:
            return sorted(e.name for e in it if e.name.startswith("part-") and e.name.endswith(".parquet"))
    except FileNotFoundError:
        return []


def _file_sig(path: Path) -> list:
    try:
        st = path.stat()
        return [st.st_mtime_ns, st.st_size]
    except FileNotFoundError:
        return []


def view_key(cache: Cache, dataset: str, job: Job) -> str:
    """The key of the view that the cache's current files would give (cheap: lists the part folders)."""
    meta = dataset_meta(cache, dataset)
    layout = cache.map_path(job.base_pass) if job.base_pass else None
    blob = {
        "version": VIEW_VERSION,
        "dataset": meta["fingerprint"],
        "job": job.id,
        "scores": job.scores,
        "base": _part_names(cache, job.base_pass),
        "ref": _part_names(cache, job.ref_pass),
        "layout": _file_sig(layout) if layout else [],
        **{r: _part_names(cache, job.pass_key(r)) for r in ("theta", "val") if job.pass_key(r)},  # pairs
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def views_dir(cache: Cache, dataset: str, job_id: str) -> Path:
    return cache.root / "views" / dataset / job_id


def score_view(cache: Cache, dataset: str, job_id: str | None = None, max_age_s: float | None = None) -> View:
    """The view of ``dataset``'s job (default: :func:`scoring.scores.tables.pick_job`), built when the cache has changed.

    ``max_age_s``: while new parts keep landing, accept the newest existing view if it is younger than this.
    """
    job = pick_job(cache, dataset, job_id)
    folder = views_dir(cache, dataset, job.id)
    key = view_key(cache, dataset, job)
    stats = _read_stats(folder / f"{key}.json")
    if stats is not None:
        return View(dataset, job, key, folder / f"{key}.parquet", stats)
    if max_age_s:
        recent = _newest_view(folder)
        if recent is not None and time.time() - recent[1] < max_age_s:
            old_key = recent[0].stem
            old = _read_stats(recent[0])
            if old is not None:
                return View(dataset, job, old_key, folder / f"{old_key}.parquet", old)
    return build_view(cache, dataset, job, key)


_STATS_MEMO: dict[str, dict] = {}


def _read_stats(path: Path) -> dict | None:
    memo = _STATS_MEMO.get(str(path))
    if memo is not None:
        return memo
    stats = read_json(path)
    if isinstance(stats, dict):
        _STATS_MEMO[str(path)] = stats
    return stats


def _newest_view(folder: Path) -> tuple[Path, float] | None:
    best = None
    for path in folder.glob("*.json") if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        mtime = path.stat().st_mtime
        if best is None or mtime > best[1]:
            best = (path, mtime)
    return best


# ---------------------------------------------------------------- building


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 of each value: a fixed, well-spread pseudo-random int64 per idx (the sample order)."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)


def _locators(cache: Cache, pass_key: str | None, idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(part number per view row, -1 when absent; the part file names) for one pass."""
    out = np.full(len(idx), -1, dtype=np.int32)
    glob = parts_glob(cache, pass_key)
    if glob is None:
        return out, []
    rows = duckdb.connect(":memory:").execute(
        f"SELECT idx, parse_filename(filename) AS part FROM read_parquet({sql_str(glob)}, filename=true)"
    ).df()
    names = sorted(rows["part"].unique().tolist())
    codes = pd.Categorical(rows["part"], categories=names).codes.astype(np.int32)
    pos = np.searchsorted(idx, rows["idx"].to_numpy())
    out[pos] = codes
    return out, names


def _map_points(cache: Cache, job: Job, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(x, y, cluster) per view row from the base pass's UMAP map, or None without one."""
    path = cache.map_path(job.base_pass) if job.base_pass else None
    layout = pq.read_table(path).to_pandas().sort_values("idx", ignore_index=True) if path and path.exists() else None
    if layout is None or not len(layout):
        return None
    x = np.full(len(idx), np.nan, dtype=np.float32)
    y = np.full(len(idx), np.nan, dtype=np.float32)
    cluster = np.full(len(idx), -1, dtype=np.int16)
    pos = np.searchsorted(idx, layout["idx"].to_numpy())
    x[pos], y[pos] = layout["x"].to_numpy(), layout["y"].to_numpy()
    points = np.column_stack([layout["x"], layout["y"]]).astype(np.float64)
    k = min(N_CLUSTERS, len(points))
    if k >= 2:
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(points)
        # Number clusters by size (0 = largest) so names are stable across runs of the same layout.
        sizes = np.bincount(labels, minlength=k)
        rank = np.empty(k, dtype=np.int16)
        rank[np.lexsort((np.arange(k), -sizes))] = np.arange(k, dtype=np.int16)
        cluster[pos] = rank[labels]
    else:
        cluster[pos] = 0
    return x, y, cluster


def _group_columns(cache: Cache, dataset: str, n_rows: int) -> dict[str, np.ndarray]:
    """Original columns with few distinct short values (a category, a source name…), as strings per view row."""
    meta = dataset_meta(cache, dataset)
    columns = [str(c) for c in meta.get("columns") or [] if str(c) not in ("id", "idx")]
    if not columns:
        return {}
    examples = sql_str(cache.examples_path(dataset))
    con = duckdb.connect(":memory:")
    picked = []
    for col in columns:
        path = "$." + json.dumps(col)
        sample = con.execute(
            f"SELECT count(DISTINCT v), max(length(v)), count(v) FROM (SELECT json_extract_string(original, ?) AS v "
            f"FROM read_parquet({examples}) LIMIT {_GROUP_SAMPLE})", [path]
        ).fetchone()
        distinct, longest, present = sample
        if present and 2 <= distinct <= _GROUP_MAX_VALUES and (longest or 0) <= 64 and distinct < present:
            picked.append((col, path))
    out = {}
    for col, path in picked:
        values = con.execute(
            f"SELECT coalesce(json_extract_string(original, ?), '') FROM read_parquet({examples}) ORDER BY idx", [path]
        ).fetchnumpy()
        array = next(iter(values.values()))
        if len(array) == n_rows and len(set(array[: _GROUP_SAMPLE * 5].tolist())) <= _GROUP_MAX_VALUES * 2:
            out[GROUP_PREFIX + col] = np.asarray(array, dtype=object)
    return out


def _scored_mask(table: pd.DataFrame, names: list[str]) -> pd.Series:
    """Rows with at least one model score: a score that reads a model pass (``Score.needs``: loss_base, davir, …
    for SFT; margin_base, irm, … for pairs). Token counts and ``len_diff`` alone do not make a row scored."""
    model_scores = [n for n in names if n in SCORES and SCORES[n].needs]
    model_scores = model_scores or [n for n in names if not n.startswith("n_") and n != "len_diff"]
    return table[model_scores].notna().any(axis=1) if model_scores else pd.Series(False, index=table.index)


def _spearman(table: pd.DataFrame, names: list[str]) -> dict:
    """Spearman rank correlation between every pair of scores over the rows where both exist."""
    ranks = table[names].rank()
    matrix = ranks.corr(min_periods=3)
    return {a: {b: (None if pd.isna(matrix.loc[a, b]) else round(float(matrix.loc[a, b]), 4)) for b in names}
            for a in names}  # fmt: skip


HIST_BINS = 40
ECDF_POINTS = 101


def _histograms(path: Path, names: list[str]) -> dict:
    """Equal-width bins per score, counted in DuckDB over the view file: {score: {lo, hi, counts}}."""
    con = duckdb.connect(":memory:")
    out = {}
    for name in names:
        col = '"' + name.replace('"', '""') + '"'
        lo, hi = con.execute(f"SELECT min({col}), max({col}) FROM read_parquet({sql_str(path)}) "
                             f"WHERE isfinite({col})").fetchone()  # fmt: skip
        if lo is None:
            continue
        counts = np.zeros(HIST_BINS, dtype=np.int64)
        rows = con.execute(
            f"SELECT least(floor(({col} - ?) / ? * {HIST_BINS}), {HIST_BINS - 1})::INT AS b, count(*) "
            f"FROM read_parquet({sql_str(path)}) WHERE isfinite({col}) GROUP BY b",
            [lo, (hi - lo) or 1.0],
        ).fetchall()
        for b, c in rows:
            counts[int(b or 0)] = c
        out[name] = {"lo": float(lo), "hi": float(hi), "counts": counts.tolist()}
    return out


def _ecdf(table: pd.DataFrame, names: list[str]) -> dict:
    """The value at each of ECDF_POINTS evenly spaced fractions, per score: {score: [values]}."""
    out = {}
    for name in names:
        values = table[name].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values):
            out[name] = np.quantile(values, np.linspace(0, 1, ECDF_POINTS)).tolist()
    return out


def build_view(cache: Cache, dataset: str, job: Job, key: str) -> View:
    """Compute and write the view (Parquet, then its JSON) for ``key``."""
    table, _ = score_table(cache, dataset, job.id)
    names = score_columns(table)
    idx = table["idx"].to_numpy(dtype=np.int64)
    extra = {"sample_key": _mix64(idx), "scored": _scored_mask(table, names).to_numpy()}
    extra["base_part"], base_parts = _locators(cache, job.base_pass, idx)
    extra["ref_part"], ref_parts = _locators(cache, job.ref_pass, idx)
    layout = _map_points(cache, job, idx)
    if layout is not None:
        extra["x"], extra["y"], extra["cluster"] = layout
    else:
        extra["x"] = extra["y"] = np.full(len(idx), np.nan, dtype=np.float32)
        extra["cluster"] = np.full(len(idx), -1, dtype=np.int16)
    groups = _group_columns(cache, dataset, len(idx))
    full = pd.concat([table.reset_index(drop=True), pd.DataFrame(extra), pd.DataFrame(groups)], axis=1)
    folder = views_dir(cache, dataset, job.id)
    path = folder / f"{key}.parquet"
    arrow = pa.Table.from_pandas(full, preserve_index=False)
    atomic_write_parquet(path, arrow)
    scored = _scored_mask(table, names)
    report = auroc_report(cache, dataset, table[scored]) if scored.any() else None
    stats = {
        "histograms": _histograms(path, names),
        "ecdf": _ecdf(table[scored], names),
        "key": key,
        "dataset": dataset,
        "job": job.id,
        "job_state": job.state,
        "n_rows": int(len(table)),
        "n_scored": int(scored.sum()),
        "score_columns": names,
        "spearman": _spearman(table[scored], names) if scored.sum() > 2 else {},
        "flag_counts": flag_counts(table),
        "auroc": report,
        "base_parts": base_parts,
        "ref_parts": ref_parts,
        "has_layout": layout is not None,
        "group_columns": sorted(groups),
        "created": time.time(),
    }
    atomic_write_json(folder / f"{key}.json", stats)
    _remove_old_views(folder, keep=key)
    return View(dataset, job, key, path, stats)


def _remove_old_views(folder: Path, keep: str) -> None:
    now = time.time()
    for path in folder.iterdir():
        if path.name.startswith(keep) or path.name.startswith("."):
            continue
        try:
            if now - path.stat().st_mtime > KEEP_OLD_VIEWS_S:
                path.unlink()
        except FileNotFoundError:
            pass
