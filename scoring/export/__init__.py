"""Export a saved selection: the kept examples, as they came in, plus a manifest that says how they were chosen.

Rows are the kept examples in their original dataset order (idx ascending); columns are the original record's
columns (``json.loads(original)``), so an export of a JSONL file looks like that file with rows removed. With
``scores`` (a DataFrame with ``id`` + score columns; an ``idx`` column is ignored) each score is added under its own
name, or as ``score_<name>`` when the original record already has a column of that name. A selection that kept no
rows is refused (saying why, e.g. its scores were not computed yet): nothing is written.

Formats: ``jsonl`` (one object per line, UTF-8, not ASCII-escaped), ``parquet`` (nested values kept),
``csv`` (nested lists / dicts written as JSON text) and ``hf`` (a ``datasets.Dataset.save_to_disk`` folder).
Everything is written under a temporary name and renamed into place, so a reader never sees half a file; a folder
that cannot be created or written is a UserError naming the path and the reason, never a traceback.

The manifest is ``manifest.json`` beside the output: in the file's folder, or inside an hf folder. The default
output is a folder of its own per export (``<cache>/exports/<dataset>-<selection>/``). An export folder belongs to
one selection: writing into a folder whose manifest.json records another (dataset, selection), or is not an
export manifest, is refused, so no export's manifest is ever replaced by another's; exporting the same selection
there again replaces its files and manifest.
It records the dataset fingerprint, the score runs, the rule and budget, counts by drop reason, a sha256 of the
kept ids and the command lines that reproduce the selection and this export: ``reproduce`` (one line for this
cache: it names the score job by id) and ``reproduce_anywhere`` (for any cache: the dataset's source as ingest
recorded it, and the ingest, score, select and export commands, with the model and every option of the score job,
no job id). For preference pairs also the validation pairs the score job held out (``validation.held_out_ids``)
and, for ``--band auto``, how the band was chosen (``band_auto``); for a selection saved while its scores were
still being computed, ``partial`` ({"scored", "rows"}).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scoring.errors import UserError
from scoring.export.reproduce import reproduce_anywhere
from scoring.selection.rules import SelectionResult, kept_sha256
from scoring.selection.saved import load_selection, reproduce_command
from scoring.store.cache import Cache, atomic_write_json, read_json, tmp_path
from scoring.store.jobs import list_jobs, read_job

FORMATS = ("jsonl", "parquet", "csv", "hf")
EXTENSIONS = {"jsonl": ".jsonl", "parquet": ".parquet", "csv": ".csv", "hf": ""}
HF_MARKERS = ("state.json", "dataset_info.json", "manifest.json")  # files that identify an hf export folder


@dataclass
class ExportResult:
    path: Path  # the file, or the folder for hf
    manifest_path: Path
    n_rows: int
    manifest: dict


# --------------------------------------------------------------------------------------------------------------
# Rows


def _kept_rows(cache: Cache, dataset: str, kept_ids: list[str]) -> tuple[list[str], list[dict]]:
    """(ids, original records) of the kept examples, in dataset order."""
    path = cache.examples_path(dataset)
    if not path.exists():
        raise UserError(f"Dataset {dataset!r} has no examples file ({path}); ingest it again.")
    table = pq.read_table(path, columns=["idx", "id", "original"])
    if kept_ids:
        wanted = pa.array(kept_ids, type=pa.string()).cast(table.schema.field("id").type)
        table = table.filter(pc.is_in(table["id"], value_set=wanted))
    else:
        table = table.slice(0, 0)
    table = table.sort_by([("idx", "ascending")])
    ids = [str(i) for i in table["id"].to_pylist()]
    if len(set(ids)) < len(set(kept_ids)):
        missing = sorted(set(kept_ids) - set(ids))
        raise UserError(f"{len(missing)} kept id(s) are not in dataset {dataset!r} (e.g. {missing[0]!r}); the dataset "
                        "changed since the selection was saved. Run the selection again.")
    rows = []
    for text in table["original"].to_pylist():
        record = json.loads(text) if text else {}
        rows.append(record if isinstance(record, dict) else {"original": record})
    return ids, rows


def _columns(rows: list[dict]) -> list[str]:
    """Union of the records' keys, in order of first appearance."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _python(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _add_scores(ids: list[str], rows: list[dict], columns: list[str], scores: pd.DataFrame) -> list[str]:
    """Add the score columns to ``rows`` in place; return the names they were added under."""
    if "id" not in scores.columns:
        raise UserError("The scores to export need an 'id' column.")
    frame = scores.drop_duplicates("id").assign(id=lambda df: df["id"].astype(str)).set_index("id")
    frame = frame.drop(columns=[c for c in ("idx",) if c in frame.columns]).reindex(ids)
    taken = set(columns)
    added = []
    for col in frame.columns:
        name = str(col)
        while name in taken:  # an original column of the same name wins; the score becomes score_<name>
            name = f"score_{name}"
        taken.add(name)
        series = frame[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values = [_python(v) for v in series.to_numpy(dtype="float64", na_value=np.nan).tolist()]
        else:
            values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                      for v in series.astype(object).where(series.notna(), None).tolist()]
        for row, value in zip(rows, values):
            row[name] = value
        added.append(name)
    return added


def _has_empty_struct(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return t.num_fields == 0 or any(_has_empty_struct(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_empty_struct(t.value_type)
    return False


def _arrow_table(rows: list[dict], columns: list[str]) -> pa.Table:
    """Column by column, nested values kept; a column Arrow cannot type (mixed kinds) is stored as JSON text."""
    arrays = []
    for col in columns:
        values = [row.get(col) for row in rows]
        try:
            arr = pa.array(values)
            if _has_empty_struct(arr.type):
                raise pa.ArrowInvalid("empty struct")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            arr = pa.array([v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                            for v in values], type=pa.string())
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, names=columns) if columns else pa.table({})


# --------------------------------------------------------------------------------------------------------------
# Writers (each writes to ``tmp``; the caller renames)


def _write_jsonl(tmp: Path, rows: list[dict], columns: list[str]) -> None:
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False, default=str))
            fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_parquet(tmp: Path, rows: list[dict], columns: list[str]) -> None:
    pq.write_table(_arrow_table(rows, columns), tmp, compression="zstd")


def _write_csv(tmp: Path, rows: list[dict], columns: list[str]) -> None:
    def cell(v):
        return json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, (list, dict)) else v

    frame = pd.DataFrame([[cell(row.get(c)) for c in columns] for row in rows], columns=columns, dtype=object)
    frame.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")


def _write_hf(tmp: Path, rows: list[dict], columns: list[str]) -> None:
    import datasets  # heavy: only when a datasets folder is asked for

    full = [{c: row.get(c) for c in columns} for row in rows]
    try:
        ds = datasets.Dataset.from_list(full)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError):
        ds = datasets.Dataset(_arrow_table(full, columns))  # mixed kinds in a column: same fallback as parquet
    quiet = not datasets.are_progress_bars_disabled()
    if quiet:  # no "Saving the dataset" bar on the CLI's stderr
        datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(tmp))
    finally:
        if quiet:
            datasets.enable_progress_bars()


WRITERS = {"jsonl": _write_jsonl, "parquet": _write_parquet, "csv": _write_csv, "hf": _write_hf}


def _resolve_out(cache: Cache, dataset: str, selection: str, fmt: str, out: str | Path | None) -> Path:
    default_name = f"{dataset}-{selection}{EXTENSIONS[fmt]}"
    if out is None or str(out) == "":
        folder = cache.exports_dir() / f"{dataset}-{selection}"
        return folder / (default_name if fmt != "hf" else "data")
    path = Path(out).expanduser().absolute()
    if fmt == "hf":
        if path.is_file():
            raise UserError(f"--out {path} is a file; an hf export is a folder. Give a folder path.")
        if path.is_dir() and any(path.iterdir()) and not any((path / m).exists() for m in HF_MARKERS):
            raise UserError(f"--out {path} is a folder that is not an earlier hf export; refusing to replace it. "
                            f"Give a new folder path, e.g. {path / default_name}.")
        return path
    if path.is_dir():  # a folder: the default file name inside it
        return path / default_name
    return path


def _export_command(dataset: str, selection: str, fmt: str, path: Path, with_scores: bool) -> str:
    q = shlex.quote
    parts = ["python -m scoring export", q(dataset), q(selection), "--format", fmt, "--out", q(str(path))]
    if with_scores:
        parts.append("--with-scores")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Export


def _checked_selection(cache: Cache, dataset: str, selection: str) -> tuple[dict, dict, SelectionResult]:
    """(the dataset's meta, the saved selection's record, its result), after checking the selection was made on
    this version of the dataset."""
    meta = read_json(cache.dataset_meta_path(dataset))
    if not isinstance(meta, dict):
        raise UserError(f"No dataset {dataset!r} in the cache {cache.root}; ingest it first.")
    record, result = load_selection(cache, dataset, selection)
    fingerprint = meta.get("fingerprint")
    if record.get("dataset_fingerprint") and fingerprint and record["dataset_fingerprint"] != fingerprint:
        raise UserError(f"Selection {selection!r} was made on an earlier version of dataset {dataset!r} (fingerprint "
                        f"{record['dataset_fingerprint']} != {fingerprint}). Run the selection again.")
    return meta, record, result


def _why_empty(record: dict, result: SelectionResult) -> str:
    """Why a saved selection kept nothing, in words: no scores yet, a partial save, or its drop reasons."""
    reasons = result.reason_counts()
    unscored = reasons.get("unscored", 0)
    flagged = sum(n for reason, n in reasons.items() if reason.startswith("flagged:"))
    partial = record.get("partial") or {}
    if result.n_total == 0:
        return "the dataset had no rows"
    if partial:
        return (f"it was saved while its scores were being computed, with {partial.get('scored', 0):,} of "
                f"{partial.get('rows', result.n_total):,} rows scored; select again when the score job is done")
    if unscored and unscored + flagged >= result.n_total:
        return (f"its scores were not computed yet: {unscored:,} of {result.n_total:,} rows have no score; score "
                "the dataset (python -m scoring status shows the job), then select again")
    top = ", ".join(f"{n:,} {reason}" for reason, n in list(reasons.items())[:3])
    return f"all {result.n_total:,} rows were dropped: {top}; select with a larger budget or another rule"


def _export_rows(cache: Cache, dataset: str, selection: str, record: dict, result: SelectionResult,
                 scores: pd.DataFrame | None) -> tuple[list[dict], list[str], list[str], str]:
    """(the kept records in dataset order, their columns with the score columns last, the score columns' names, the
    sha256 of the kept ids), after checking the selection kept rows and they are exactly its kept ids."""
    if not result.kept_ids:
        raise UserError(f"selection {selection!r} of dataset {dataset!r} kept no rows ({_why_empty(record, result)}); "
                        "nothing exported.")
    ids, rows = _kept_rows(cache, dataset, result.kept_ids)
    sha = kept_sha256(ids)
    expected = record.get("kept_sha256") or result.kept_sha256
    if sha != expected:
        raise UserError(f"The exported rows of selection {selection!r} do not match its kept ids (sha256 {sha} != "
                        f"{expected}); the dataset has duplicate or changed ids. Run the selection again.")
    columns = _columns(rows)
    score_columns = _add_scores(ids, rows, columns, scores) if scores is not None else []
    columns += score_columns
    return rows, columns, score_columns, sha


def _selection_manifest(dataset: str, selection: str, fingerprint: str | None, record: dict,
                        result: SelectionResult, sha: str) -> dict:  # fmt: skip
    """The manifest's account of the selection: what it was made from, how, and what it kept."""
    return {
        "dataset": dataset,
        "dataset_fingerprint": fingerprint or record.get("dataset_fingerprint"),
        "selection": selection,
        "score_runs": list(record.get("runs") or []),
        "scores": list(record.get("scores") or []),
        "rule": record.get("rule"),
        "budget": record.get("budget"),
        "include_flagged": bool(record.get("include_flagged", False)),
        "counts": {
            "total": int(result.n_total),
            "kept": len(result.kept_ids),
            "dropped": len(result.dropped),
            "dropped_by_reason": result.reason_counts(),
        },
        "tokens_kept": int(result.tokens_kept),
        "kept_ids_sha256": sha,
        **({"band_auto": record["band_auto"]} if record.get("band_auto") else {}),
    }


def _validation(cache: Cache, record: dict) -> dict:
    """For a selection of preference pairs: the validation pairs its score job held out (never trained on by θ,
    never selectable), so the manifest says which pairs the selection could not contain and why."""
    runs = record.get("runs") or []
    job = read_job(cache, runs[0]) if runs else None
    if job is None or not job.is_pair or job.val_ids is None:
        return {}
    return {"validation": {"held_out_ids": list(job.val_ids), "source": job.val, "n_pairs": job.n_val_pairs}}


def _evaluations(cache: Cache, dataset: str, selection: str, sha: str) -> list[dict]:
    """The finished evaluations of exactly this kept set (scoring.jobs.evaluate): per arm its size, steps, metrics
    and model fingerprint; per eval set the comparison with its interval and verdict; the training config."""
    out = []
    for job in list_jobs(cache, dataset):
        ev = job.evaluation or {}
        if job.kind != "evaluate" or job.state != "done" or ev.get("selection") != selection:
            continue
        if ev.get("selection_sha") != sha:
            continue  # an evaluation of an earlier save under the same name
        r = job.result or {}
        arms = [{**{k: a.get(k) for k in ("name", "n_examples", "n_tokens", "steps", "metrics")},
                 "model_fingerprint": (a.get("model") or {}).get("fingerprint")} for a in r.get("arms", [])]
        out.append({"job": job.id, "finished": job.finished, "train": ev.get("train"), "start": ev.get("start"),
                    "evals": ev.get("evals"), "holdout": ev.get("holdout"), "arms": arms,
                    "comparisons": r.get("comparisons"), "notes": r.get("notes", [])})  # fmt: skip
    return out


def _write_export(fmt: str, path: Path, manifest_path: Path, rows: list[dict], columns: list[str],
                  manifest: dict) -> None:  # fmt: skip
    """Write the rows under a temporary name and rename it into place, then the manifest; an hf folder holds its
    manifest and replaces an earlier export folder whole."""
    suffix = "tmp" if fmt != "hf" else "tmpdir"
    tmp = tmp_path(path, suffix)
    try:
        WRITERS[fmt](tmp, rows, columns)
        if fmt == "hf":
            atomic_write_json(tmp / "manifest.json", manifest)
            old = tmp_path(path, "old") if path.exists() else None
            if old is not None:
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
            atomic_write_json(manifest_path, manifest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _check_folder_owner(manifest_path: Path, dataset: str, selection: str, fmt: str) -> None:
    """Refuse to write where manifest.json is another export's: an export folder belongs to one selection."""
    if not manifest_path.exists():
        return
    try:
        other = read_json(manifest_path)
    except ValueError:  # not JSON: not ours to replace
        other = "?"
    if (isinstance(other, dict)
                         and (other.get("dataset"), other.get("selection")) == (dataset, selection)):
        return
    owner = (f"selection {other.get('selection')!r} of dataset {other.get('dataset')!r}" if isinstance(other, dict)
             else "something that is not an export manifest")
    folder = manifest_path.parent
    name = f"{dataset}-{selection}"
    suggestion = folder.parent / name / (name + EXTENSIONS[fmt] if fmt != "hf" else "")
    raise UserError(f"The export folder {folder} belongs to {owner}: its manifest.json is there. An export folder "
                    f"holds one selection's export, so selection {selection!r} of dataset {dataset!r} is not written "
                    f"into it. Give another --out (in the app: another export name), e.g. {suggestion}.")


def _target(cache: Cache, dataset: str, selection: str, fmt: str, out: str | Path | None) -> tuple[Path, Path]:
    """(the output path, its manifest's path), the folder created, after checking the folder is free for this
    selection."""
    path = _resolve_out(cache, dataset, selection, fmt, out)
    if fmt != "hf" and path.is_dir():
        raise UserError(f"--out {path} is a folder; give a file path for {fmt}.")
    manifest_path = path / "manifest.json" if fmt == "hf" else path.parent / "manifest.json"
    _check_folder_owner(manifest_path, dataset, selection, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, manifest_path


def _cannot_write(out: str | Path | None, path: Path | None, error: OSError) -> UserError:
    where = path if path is not None else Path(out).expanduser().absolute() if out else "the cache's exports folder"
    return UserError(f"cannot write the export to {where}: {error.strerror or error}")


def export_selection(
    cache: Cache,
    dataset: str,
    selection: str,
    fmt: str,
    out: str | Path | None = None,
    scores: pd.DataFrame | None = None,
    command: str | None = None,
) -> ExportResult:
    """Write the kept examples of saved selection ``selection`` as ``fmt``, with a manifest beside them."""
    fmt = str(fmt).strip().lower()
    if fmt not in FORMATS:
        raise UserError(f"Unknown export format {fmt!r}. Choose one of: {', '.join(FORMATS)}.")
    meta, record, result = _checked_selection(cache, dataset, selection)
    rows, columns, score_columns, sha = _export_rows(cache, dataset, selection, record, result, scores)

    try:
        path, manifest_path = _target(cache, dataset, selection, fmt, out)
    except OSError as error:
        raise _cannot_write(out, None, error) from None
    spec = dict(record, dataset=dataset, name=selection)
    export_line = _export_command(dataset, selection, fmt, path, scores is not None)
    manifest = {
        **_selection_manifest(dataset, selection, meta.get("fingerprint"), record, result, sha),
        **_validation(cache, record),
        "evaluations": _evaluations(cache, dataset, selection, sha),
        "format": fmt,
        "file": str(path),
        "score_columns": score_columns,
        "n_rows_written": len(rows),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        # a hand-picked set (a lasso on the map, marked rows) has no rule to rerun: its export is its only record
        "reproduce": export_line if record.get("manual") else reproduce_command(spec) + " && " + export_line,
        "reproduce_anywhere": reproduce_anywhere(cache, meta, record, None if record.get("manual") else
                                                 reproduce_command(dict(spec, runs=[])), export_line),
        **({"partial": record["partial"]} if record.get("partial") else {}),
    }
    try:
        _write_export(fmt, path, manifest_path, rows, columns, manifest)
    except OSError as error:
        raise _cannot_write(out, path, error) from None
    return ExportResult(path=path, manifest_path=manifest_path, n_rows=len(rows), manifest=manifest)
