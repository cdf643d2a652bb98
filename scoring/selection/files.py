"""Saved selections on disk: ``<name>.json`` (the spec plus counts and ``kept_sha256``; ``partial`` when the score
run had not finished) and ``<name>.parquet`` (id, kept, order, reason and duplicate_of for every row; files saved
before duplicate_of existed still load) under ``cache.selections_dir(dataset)``. Writing, reading, listing,
deleting, and the record of an existing name. :mod:`scoring.selection.saved` builds on it (and re-exports it).
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scoring.errors import UserError
from scoring.selection.rules import SELECTION_NAME_RE, DroppedReasons, SelectionResult
from scoring.store.cache import Cache, atomic_write_json, read_json, tmp_path


def selection_exists(cache: Cache, dataset: str, name: str) -> dict | None:
    """The saved record of selection ``name`` of ``dataset`` (for a confirm-before-replace dialog), or None."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        return None
    record = read_json(selection_paths(cache, dataset, name)[0])
    return dict(record, name=record.get("name") or name) if isinstance(record, dict) else None


def already_saved_message(record: dict, dataset: str, name: str) -> str:
    """"A selection named 'x' already exists for dataset 'd' (18 rows, saved 2025-01-02 10:11 UTC)": the part of
    the refusal the app's dialog and the CLI share."""
    created = str(record.get("created") or "")
    try:
        when = datetime.fromisoformat(created).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        when = created or "at an unknown time"
    return (f"A selection named {name!r} already exists for dataset {dataset!r} "
            f"({record.get('n_kept', '?')} rows, saved {when})")


def load_selection_record(cache: Cache, dataset: str, name: str) -> dict:
    """A saved selection's JSON record (spec and counts) without reading its rows."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise not_found(cache, dataset, name)
    record = read_json(selection_paths(cache, dataset, name)[0])
    if record is None:
        raise not_found(cache, dataset, name)
    return record


def check_name(name: str) -> str:
    """``name`` when it is a valid selection name (it becomes a file name), else a UserError saying what is."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise UserError(
            f"Selection name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit (e.g. top6 or davir-band.v2)."
        )
    return name


def selection_paths(cache: Cache, dataset: str, name: str) -> tuple[Path, Path]:
    """(the JSON record, the Parquet rows) of selection ``name``."""
    folder = cache.selections_dir(dataset)
    return folder / f"{name}.json", folder / f"{name}.parquet"


def save_selection(cache: Cache, dataset: str, name: str, result: SelectionResult, spec: dict) -> Path:
    """Save ``result`` as ``<name>.parquet`` + ``<name>.json`` (spec + counts); return the JSON path.

    The Parquet file is written first, so a reader that finds the JSON always finds its rows.
    """
    check_name(name)
    json_path, parquet_path = selection_paths(cache, dataset, name)
    n_kept = len(result.kept_ids)
    dropped = result.dropped if isinstance(result.dropped, DroppedReasons) else DroppedReasons(
        list(result.dropped.keys()), list(result.dropped.values()))
    n_dropped = len(dropped)
    in_order = result.kept_pos is not None and (result.by_row is not None or result.rows is not None)
    table = _rows_in_table_order(result) if in_order else None
    if table is None:
        table = pa.table(
            {
                "id": pa.concat_arrays([pa.array(list(result.kept_ids), type=pa.string()),
                                        dropped.arrow_ids()]),
                "kept": pa.array(np.arange(n_kept + n_dropped) < n_kept, type=pa.bool_()),
                "order": pa.array(np.concatenate([np.arange(n_kept), np.full(n_dropped, -1)]).astype(np.int64)),
                "reason": pa.concat_arrays([pa.array([""] * n_kept, type=pa.string()), dropped.arrow_reasons()]),
                "duplicate_of": pa.repeat(pa.scalar("", pa.string()), n_kept + n_dropped),
            }
        )
    _write_rows(parquet_path, table)
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


def _rows_in_table_order(result: SelectionResult) -> pa.Table:
    """The saved rows (id, kept, order, reason, duplicate_of) of a result made by select, one per score-table row in
    table order.

    Same rows as kept-first order (readers filter on ``kept`` and sort by ``order``), but built from arrays the
    selection already holds: the Arrow ids as they are, reasons from their codes. At a million rows this takes a
    few ms where gathering the kept and dropped ids into a new order took ~50 ms."""
    if result.by_row is not None:
        arrow_ids, codes, labels = result.by_row
    else:
        ids, codes, labels = result.rows
        arrow_ids = pa.array(ids, type=pa.string())
    kept = codes < 0  # (n,)
    order = np.full(len(codes), -1, dtype=np.int64)
    order[result.kept_pos] = np.arange(len(result.kept_pos), dtype=np.int64)
    reason = pa.DictionaryArray.from_arrays(pa.array(np.where(kept, len(labels), codes), pa.int32()),
                                            pa.array(list(labels) + [""], pa.string())).cast(pa.string())
    dup = result.duplicate_of
    if dup is None or not (dup >= 0).any():
        twin = pa.repeat(pa.scalar("", pa.string()), len(codes))
    else:  # the kept twin's id, "" elsewhere
        twin = pc.if_else(pa.array(dup >= 0), arrow_ids.take(pa.array(np.maximum(dup, 0))), "")
    return pa.table({"id": arrow_ids, "kept": pa.array(kept), "order": pa.array(order), "reason": reason,
                     "duplicate_of": twin})


def _write_rows(path: Path, table: pa.Table) -> None:
    """Temp-then-rename like :func:`scoring.store.cache.atomic_write_parquet`, tuned for a million unique ids: no
    column statistics and no dictionary for the ids (both cost more than the data is worth here), zstd level 1.
    About half the time of the defaults, and a smaller file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=["reason", "duplicate_of"],
                   write_statistics=False)  # fmt: skip
    os.replace(tmp, path)


def saved_names(cache: Cache, dataset: str) -> list[str]:
    folder = cache.selections_dir(dataset)
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []


def not_found(cache: Cache, dataset: str, name: str) -> UserError:
    names = saved_names(cache, dataset)
    have = ", ".join(names) if names else "none yet (save one with: python -m scoring select ... --save NAME)"
    return UserError(f"No saved selection {name!r} for dataset {dataset!r}. Saved selections: {have}.")


def load_selection(cache: Cache, dataset: str, name: str) -> tuple[dict, SelectionResult]:
    """The saved record (spec + counts) and the :class:`SelectionResult` it describes."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise not_found(cache, dataset, name)
    json_path, parquet_path = selection_paths(cache, dataset, name)
    for attempt in range(3):  # a concurrent re-save may swap the parquet between our two reads: retry
        if attempt:
            time.sleep(0.05)
        record = read_json(json_path)
        if record is None or not parquet_path.exists():
            raise not_found(cache, dataset, name)
        rows = pq.read_table(parquet_path).combine_chunks()
        df = rows.to_pandas()
        kept = df[df["kept"]].sort_values("order", kind="stable")
        dropped_rows = df[~df["kept"]]
        ids = df["id"].astype(str).to_numpy(dtype=object)
        result = SelectionResult(
            kept_ids=kept["id"].astype(str).tolist(),
            dropped=DroppedReasons(dropped_rows["id"].astype(str).to_numpy(dtype=object),
                                   dropped_rows["reason"].astype(str).to_numpy(dtype=object)),
            n_total=int(record.get("n_total", len(df))),
            tokens_kept=int(record.get("tokens_kept", 0)),
            duplicate_of=_loaded_twins(df, ids, record),
            rows=(ids, *_loaded_codes(rows)),
            partial=record.get("partial"),
        )
        if record.get("kept_sha256") in (None, result.kept_sha256):
            return record, result
    raise UserError(f"Saved selection {name!r} of dataset {dataset!r} is inconsistent (its rows do not match its "
                    "kept_sha256); save it again.")


def _loaded_codes(rows: pa.Table) -> tuple[np.ndarray, list[str]]:
    """(reason code per file row, -1 for a kept one; the labels) from a saved file, dictionary-encoded by Arrow."""
    reason = rows["reason"]
    reason = pa.concat_arrays(reason.chunks) if reason.num_chunks else pa.array([], pa.string())
    encoded = pc.dictionary_encode(reason)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    codes[rows["kept"].to_numpy(zero_copy_only=False)] = -1
    return codes, [str(x) for x in encoded.dictionary.to_pylist()]


def _loaded_twins(df, ids: np.ndarray, record: dict) -> np.ndarray | None:
    """(n,) the file row of each near duplicate's kept twin (-1 elsewhere) from the ``duplicate_of`` column; None
    without the filter. Files saved before the column existed give -1 everywhere when the filter was on."""
    if record.get("dedup") is None:
        return None
    out = np.full(len(ids), -1, dtype=np.int64)
    if "duplicate_of" in df.columns:
        twin = df["duplicate_of"].fillna("").astype(str).to_numpy(dtype=object)
        where = np.flatnonzero(twin != "")
        if len(where):
            out[where] = pd.Index(ids).get_indexer(twin[where])
    return out


def list_selections(cache: Cache, dataset: str) -> list[dict]:
    """Every saved selection record of ``dataset``, sorted by name."""
    out = []
    for name in saved_names(cache, dataset):
        record = read_json(selection_paths(cache, dataset, name)[0])
        if isinstance(record, dict):
            record.setdefault("name", name)
            out.append(record)
    return out


def delete_selection(cache: Cache, dataset: str, name: str) -> None:
    """Remove a saved selection (JSON first, so listings never show a half-deleted one)."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise not_found(cache, dataset, name)
    json_path, parquet_path = selection_paths(cache, dataset, name)
    if not json_path.exists():
        raise not_found(cache, dataset, name)
    json_path.unlink(missing_ok=True)
    parquet_path.unlink(missing_ok=True)
