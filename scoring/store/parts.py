"""Immutable Parquet parts of a model pass, and reading them through DuckDB.

A pass writes one part per chunk of its scoring order, ``passes/<key>/parts/part-<start>-<end>.parquet``, under a
temporary name then renamed (:mod:`scoring.store.cache`). The range in the name is the part's key: a restart skips
the ranges already on disk, and several workers can fill one pass without ever writing the same file.

Readers open an in-memory DuckDB connection and read the parts by glob, so they never hold a lock a writer needs
and always see whole parts only: rows not scored yet are simply absent.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from scoring.store.cache import Cache


def sql_str(value) -> str:
    """A path or text as a single-quoted SQL string literal (quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def connect() -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection (cheap enough per query outside the app's hot paths)."""
    return duckdb.connect(":memory:")


def part_path(parts: Path, start: int, end: int) -> Path:
    return parts / f"part-{start:09d}-{end:09d}.parquet"


def claim_path(parts: Path, start: int, end: int) -> Path:
    """The flock file a worker holds while it computes the part for [start, end)."""
    return parts / f".claim-{start:09d}-{end:09d}"


def done_ranges(parts: Path) -> set[tuple[int, int]]:
    """The [start, end) ranges whose part file exists."""
    done = set()
    for path in parts.glob("part-*.parquet"):
        _, start, end = path.stem.split("-")
        done.add((int(start), int(end)))
    return done


def parts_glob(cache: Cache, key: str | None) -> str | None:
    """A glob over the pass's parts, or None while it has none (a glob matching nothing is an error in DuckDB)."""
    if not key:
        return None
    parts = cache.parts_dir(key)
    return str(parts / "part-*.parquet") if any(parts.glob("part-*.parquet")) else None


def read_pass(cache: Cache, key: str, columns: list[str]) -> pd.DataFrame:
    """Chosen columns of a pass's loss table (whatever parts exist now), in idx order."""
    glob = parts_glob(cache, key)
    if glob is None:
        return pd.DataFrame({c: [] for c in columns})
    cols = ", ".join(columns)
    return connect().execute(f"SELECT {cols} FROM read_parquet({sql_str(glob)}) ORDER BY idx").df()


EMBEDDING_BATCH = 16_384  # rows of embeddings read and decoded at a time


def embedded_idx(glob: str | None) -> np.ndarray:
    """The idx of a pass's rows that have an embedding, sorted (none without parts)."""
    if glob is None:
        return np.empty(0, np.int64)
    query = f"SELECT idx FROM read_parquet({sql_str(glob)}) WHERE octet_length(embedding) > 0 ORDER BY idx"
    return connect().sql(query).fetchnumpy()["idx"].astype(np.int64)


def embedding_batches(glob: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(idx, float32 vectors) of a pass's rows that have an embedding, :data:`EMBEDDING_BATCH` rows at a time, in no
    set order: a million rows' embeddings are never all held as their bytes, nor decoded at once."""
    query = f"SELECT idx, embedding FROM read_parquet({sql_str(glob)}) WHERE octet_length(embedding) > 0"
    for rows in connect().sql(query).to_arrow_reader(EMBEDDING_BATCH):
        blobs = rows.column(1).to_pylist()
        yield rows.column(0).to_numpy(), np.frombuffer(b"".join(blobs), np.float16).reshape(len(blobs), -1).astype(
            np.float32)  # fmt: skip
