"""Immutable Parquet parts of a model pass, and reading them through DuckDB.

A pass writes one part per chunk of its scoring order, ``passes/<key>/parts/part-<start>-<end>.parquet``, under a
temporary name then renamed (:mod:`scoring.store.cache`). The range in the name is the part's key: a restart skips
the ranges already on disk, and several workers can fill one pass without ever writing the same file.

Readers open an in-memory DuckDB connection and read the parts by glob, so they never hold a lock a writer needs
and always see whole parts only: rows not scored yet are simply absent.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
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
