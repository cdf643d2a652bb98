"""The cache folder: where everything lives and how it is written without ever blocking a reader.

Layout under the cache root (``--cache DIR`` / ``$DAVIR_CACHE`` / ``./cache``)::

    datasets/<name>/examples.parquet   ingested examples (schema: scoring.schema.EXAMPLES)
    datasets/<name>/meta.json          fingerprint, source, counts by flag
    passes/<key>/manifest.json         one model over one dataset (what produced it, total, complete?)
    passes/<key>/parts/part-<start>-<end>.parquet
                                       loss rows for positions [start, end) of the pass's shuffled order
    passes/<key>/layout.parquet        the 2-D UMAP map of the pass's embeddings
    models/<key>/                      converted default model, fine-tuned reference checkpoints
    jobs/<job_id>.json                 job records (scoring.store.jobs.Job: request, passes made, state)
    views/<dataset>/<job>/<key>.*      materialised score views (scoring.scores.views)
    selections/<dataset>/<name>.json   saved selections (+ .parquet with kept / dropped reasons)
    exports/                           default export folder
    logs/                              worker and job logs

The contract (DESIGN.md): DuckDB never holds a writable database file shared across processes. Writers only
create immutable files under a temporary name and ``os.replace`` them into place, so a reader sees either the
old file, the new file, or no file -- never half of one. Readers query Parquet through DuckDB in memory.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def tmp_path(path: Path, suffix: str = "tmp") -> Path:
    """A hidden, unique temporary name beside ``path``: the rename is atomic and a glob on *.parquet never
    matches it."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{suffix}")


def stale_tmp_paths(path: Path) -> list[Path]:
    """Temporary files :func:`tmp_path` made for ``path`` and never renamed (their writer died mid-write)."""
    return list(path.parent.glob(f".{path.name}.*.tmp"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`; ``default`` when it does not exist."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return default


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


class Cache:
    """Paths inside one cache root. Creating a Cache creates the root folder and nothing else."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # datasets
    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / name

    def examples_path(self, name: str) -> Path:
        return self.dataset_dir(name) / "examples.parquet"

    def dataset_meta_path(self, name: str) -> Path:
        return self.dataset_dir(name) / "meta.json"

    # model passes
    def pass_dir(self, key: str) -> Path:
        return self.root / "passes" / key

    def parts_dir(self, key: str) -> Path:
        return self.pass_dir(key) / "parts"

    def map_path(self, key: str) -> Path:
        """The 2-D embedding map of a pass (named "layout" on disk since the first caches)."""
        return self.pass_dir(key) / "layout.parquet"

    # everything else
    def models_dir(self) -> Path:
        return self.root / "models"

    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def selections_dir(self, dataset: str) -> Path:
        return self.root / "selections" / dataset

    def exports_dir(self) -> Path:
        return self.root / "exports"

    def logs_dir(self) -> Path:
        return self.root / "logs"


def scratch_dir(cache: Cache) -> Path:
    """A private temporary folder inside the cache (same filesystem, so renames out of it are atomic)."""
    base = cache.root / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=base))
