"""Ingest, the entry point: read a source, normalise it as its kind, and keep it in the cache's dataset catalog.

The steps, one module each: :mod:`~scoring.ingest.sources` reads records; :mod:`~scoring.ingest.layouts`
(instruction data) or :mod:`~scoring.ingest.pairs` (preference pairs, recognised first: they may look like chat)
turns each into a row; :mod:`~scoring.ingest.tables` builds the examples table with ids, duplicate flags and the
content fingerprint. This module writes ``datasets/<name>/examples.parquet`` then ``meta.json`` and reads them
back: the dataset catalog every later stage starts from.

Rows are never dropped: a problem either stops ingest with a UserError naming file and line (a file that does
not parse as a whole, a missing file, an empty source) or is kept as a row carrying snake_case reasons in
``flag`` (see :data:`scoring.ingest.layouts.FLAGS` and :data:`scoring.ingest.pairs.PAIR_FLAGS`), so the user can
see and filter them.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scoring.errors import UserError
from scoring.ingest.demo import HELDOUT_NAME, write_heldout
from scoring.ingest.layouts import LayoutSpec, detect_layout, instruction_row
from scoring.ingest.pairs import PairSpec, detect_pair_layout, pair_row
from scoring.ingest.sources import record_reader, resolve_source
from scoring.ingest.tables import Kind, pick_id_column, survey, write_examples
from scoring.ingest.turns import dumps
from scoring.schema import EXAMPLES, PAIR_EXAMPLES
from scoring.store.cache import Cache, atomic_write_json, read_json, scratch_dir

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class IngestResult:
    """What ``ingest`` did, for the CLI and app to report."""

    name: str
    fingerprint: str  # sha256 hex of the normalised content (ids + messages), independent of paths and times
    n_rows: int
    flag_counts: dict[str, int]  # reason -> rows carrying it (a row flagged "a,b" counts in both)
    layout: str  # the detected layout: scoring.ingest.layouts (alpaca, chat, …) or scoring.ingest.pairs (pair_*)
    already_present: bool  # True when the same name already held identical content (nothing was written)
    path: Path  # the examples.parquet


def _result(meta: dict, cache: Cache, already_present: bool) -> IngestResult:
    return IngestResult(
        name=meta["name"], fingerprint=meta["fingerprint"], n_rows=int(meta["n_rows"]),
        flag_counts=dict(meta["flag_counts"]), layout=meta["layout"], already_present=already_present,
        path=cache.examples_path(meta["name"]),
    )


def _kind(spec: LayoutSpec | PairSpec) -> Kind:
    """How records under the detected spec become rows."""
    if isinstance(spec, PairSpec):
        return Kind("pair", PAIR_EXAMPLES, partial(pair_row, spec=spec), lambda original: "pair:" + original)
    return Kind("sft", EXAMPLES, partial(instruction_row, spec=spec), lambda original: original)


def ingest(source: str, cache: Cache, name: str | None = None, limit: int | None = None,
           field_map: dict[str, str] | None = None, replace: bool = False, progress: bool = True) -> IngestResult:
    """Read SOURCE, normalise every record to messages, and store ``datasets/<name>/`` in the cache.

    Re-ingesting identical content under the same name is a no-op (``already_present``), so scripts can call
    this unconditionally. Different content under an existing name is refused unless ``replace``, because model
    passes and selections made on the old data would silently stop matching it.

    Example::

        ingest("/data/alpaca/*.json", Cache("cache"))            # -> dataset "alpaca", layout "alpaca"
        ingest("gsm8k/train.jsonl", cache, limit=100)             # -> "gsm8k-train", question/answer
        ingest("qa.csv", cache, field_map={"prompt": "q", "response": "a"})
    """
    if name is not None and not NAME_RE.match(name):
        raise UserError(f"dataset name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
                        "letter or digit")
    if limit is not None and int(limit) < 1:
        raise UserError(f"--limit {limit}: must be a positive number of rows")
    src = resolve_source(source)
    name = name or src.default_name
    records = record_reader(src, None if limit is None else int(limit))
    found = survey(records(), (field_map or {}).get("id"), progress)
    if not found.n:
        raise UserError(f"{src.display}: no records found")
    if not found.columns:
        raise UserError(f"{src.display}: none of the {found.n} records is a JSON object "
                        f"(first at {found.first.where}: {dumps(found.first.original)[:80]})")
    # pairs first: they may look like chat
    spec = detect_pair_layout(found.columns, field_map, src.display) or detect_layout(found.columns, field_map,
                                                                                      src.display)  # fmt: skip
    kind, id_column = _kind(spec), pick_id_column(found, spec.id)
    folder = scratch_dir(cache)
    try:
        built = write_examples(records(), kind, id_column, found.n, folder / "examples.parquet", progress)
        old = read_json(cache.dataset_meta_path(name))
        if old and cache.examples_path(name).is_file():
            if old.get("fingerprint") == built.fingerprint:
                return _result(old, cache, already_present=True)
            if not replace:
                raise UserError(f"dataset {name!r} already holds other data (from {old.get('source')}); "
                                "pass --replace to overwrite it, or --name to store this one under another name")
        meta = {
            "name": name, "fingerprint": built.fingerprint, "source": src.display, "layout": spec.layout,
            "kind": kind.name, "n_rows": built.n_rows, "flag_counts": built.flag_counts, "columns": found.columns,
            "id_column": id_column, "limit": limit, "field_map": field_map or None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        # Examples first, meta last: a dataset is listed only once its examples are complete.
        cache.examples_path(name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder / "examples.parquet", cache.examples_path(name))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    atomic_write_json(cache.dataset_meta_path(name), meta)
    return _result(meta, cache, already_present=False)


def list_datasets(cache: Cache) -> list[dict]:
    """The meta of every ingested dataset, sorted by name."""
    metas = []
    for path in sorted((cache.root / "datasets").glob("*/meta.json")):
        try:
            meta = read_json(path)
        except (OSError, ValueError):  # unreadable: leave it out rather than break every listing
            continue
        if isinstance(meta, dict) and "name" in meta:
            metas.append(meta)
    return sorted(metas, key=lambda m: m["name"])


def dataset_meta(cache: Cache, name: str) -> dict:
    """One dataset's meta; a UserError naming the datasets that do exist when it is missing."""
    meta = read_json(cache.dataset_meta_path(name)) if NAME_RE.match(name or "") else None
    if meta is None:
        known = [m["name"] for m in list_datasets(cache)]
        listing = f"known datasets: {', '.join(known)}" if known else "no datasets have been ingested yet"
        raise UserError(f"no dataset named {name!r} in {cache.root} ({listing})")
    return meta


def kind_of(meta: dict) -> str:
    """"sft" (instruction data) or "pair" (preference pairs), as ingest recorded it in the dataset's meta."""
    return "pair" if meta.get("kind") == "pair" else "sft"


def dataset_kind(cache: Cache, name: str) -> str:
    return kind_of(dataset_meta(cache, name))


def load_table(cache: Cache, name: str, columns: list[str] | None = None, filters=None) -> pa.Table:
    """The examples table of a dataset (optionally only some columns; ``filters``: pyarrow's, on any column), in idx
    order, as Arrow: its text held about at its own size (a DataFrame of Python strings holds ~5x; what a score job
    over millions of rows keeps)."""
    dataset_meta(cache, name)
    unknown = [c for c in columns or [] if c not in PAIR_EXAMPLES.names]  # pair datasets add "rejected"
    if unknown:
        raise UserError(f"unknown examples column {unknown[0]!r}; columns are {', '.join(PAIR_EXAMPLES.names)}")
    try:
        return pq.read_table(cache.examples_path(name), columns=columns, filters=filters)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"dataset {name!r}: cannot read its examples ({e}); ingest it again") from None


def load_examples(cache: Cache, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """:func:`load_table` as a DataFrame."""
    return load_table(cache, name, columns).to_pandas()


def load_row(cache: Cache, name: str, idx: int, columns: list[str]) -> dict | None:
    """One example's ``columns`` (None when no row has that idx), read from the row group that holds it alone:
    Parquet's idx statistics skip the others, so one row of a million costs about what one of a thousand does."""
    rows = load_table(cache, name, columns, filters=[("idx", "=", int(idx))]).to_pylist()
    return rows[0] if rows else None


def column_values(table: pa.Table, column: str, batch: int = 1024) -> Iterator:
    """The Python values of one column of ``table``, ``batch`` rows converted at a time (never the whole column)."""
    values = table.column(column)
    for start in range(0, table.num_rows, batch):
        yield from values.slice(start, batch).to_pylist()


def ingest_heldout(cache: Cache, n: int, name: str = HELDOUT_NAME, **kwargs) -> IngestResult:
    """Write ``generate_heldout(n, **kwargs)`` (scoring.ingest.demo) to a scratch folder under the cache's tmp/ and
    ingest it as ``name``, replacing what that name held (``demo --heldout N``). Ingest keeps the fields it does not
    map (family, answer) in each example's ``original`` JSON: ``scoring.ingest.demo.answers_of`` reads the answers
    back from the examples table."""
    if n < 1:
        raise UserError(f"--heldout {n}: must be a positive number of tasks")
    folder = scratch_dir(cache)
    try:
        path = write_heldout(folder / f"{name}.jsonl", n=n, **kwargs)
        return ingest(str(path), cache, name=name, replace=True, progress=False)
    except ValueError as error:  # more tasks than the families hold outside the demo
        raise UserError(f"--heldout {n}: {error}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
