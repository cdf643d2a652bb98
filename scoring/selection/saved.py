"""Saved selections, the rule spec the CLI and the app share, running a spec against the cache, and comparisons.

Why one :class:`SelectionSpec`: "selecting with a budget in the app gives the same ids as the CLI with the same
rule" holds by construction when both build a spec and call :func:`run_selection`, which reads the same
materialised score view (:mod:`scoring.scores.views`), the same quota groups and the same embeddings, then calls
:func:`scoring.selection.engine.select`. The spec also writes the CLI line that reproduces it.

Saved selections live under ``cache.selections_dir(dataset)``: ``<name>.json`` (the spec plus counts and
``kept_sha256``) and ``<name>.parquet`` (id, kept, order, reason for every row).
"""
from __future__ import annotations

import os
import shlex
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scoring.errors import UserError
from scoring.ingest.catalog import dataset_meta
from scoring.scores.view_reads import embedding_matrix, frame, group_values, memo
from scoring.scores.views import View, score_view
from scoring.selection.engine import select
from scoring.selection.rules import (
    COMBINES,
    SELECTION_NAME_RE,
    DroppedReasons,
    SelectionResult,
    parse_budget,
    parse_rule,
)
from scoring.selection.table import SelectTable
from scoring.store.cache import Cache, atomic_write_json, read_json, tmp_path

# --------------------------------------------------------------------------------------------------------------
# The rule spec


@dataclass(frozen=True)
class SelectionSpec:
    """A selection rule as the user states it (texts, so it saves as JSON and prints as a CLI line).

    ``rules`` holds one rule for every score, or one per score in order ("top", "bottom", "band:LO-HI").
    ``quota``: a group column ("cluster" for map clusters, or an original column) or None. ``dedup``: the cosine
    above which a row counts as a near duplicate of one already kept, or None. ``job``: the score run (None: the
    dataset's latest finished one). ``band_auto``: for a band chosen by ``--band auto``, the account of how.
    """

    dataset: str
    scores: tuple[str, ...]
    budget: str
    rules: tuple[str, ...] = ("top",)
    combine: str = "and"
    include_flagged: bool = False
    quota: str | None = None
    dedup: float | None = None
    job: str | None = None
    band_auto: str | None = None  # pairs, --band auto: how the band was chosen (the influence job and its overlap)

    def __post_init__(self):
        object.__setattr__(self, "scores", tuple(self.scores))
        object.__setattr__(self, "rules", tuple(self.rules) or ("top",))
        object.__setattr__(self, "combine", str(self.combine).lower())
        if self.combine not in COMBINES:
            raise UserError(f"Combine must be 'and' (intersection) or 'or' (union), not {self.combine!r}.")

    @property
    def rule_text(self) -> str:
        """One rule for all scores as one string, else the per-score rules joined by ","."""
        return self.rules[0] if len(set(self.rules)) == 1 else ",".join(self.rules)

    def record(self, job_id: str, fingerprint: str, name: str | None) -> dict:
        """The JSON saved with a selection (keys the export manifest and reproduce_command read)."""
        return {
            "dataset": self.dataset, "dataset_fingerprint": fingerprint, "scores": list(self.scores),
            "rule": self.rule_text, "rules": list(self.rules), "combine": self.combine, "budget": self.budget,
            "include_flagged": self.include_flagged, "quota": self.quota, "dedup": self.dedup, "runs": [job_id],
            "name": name, **({"band_auto": self.band_auto} if self.band_auto else {}),
        }  # fmt: skip


_RESULTS: OrderedDict = OrderedDict()
_RESULTS_LOCK = threading.Lock()


def select_table(view: View) -> SelectTable:
    """The :class:`SelectTable` of a view (its sorts are kept between selections)."""
    cols = ["idx", "id", "flag", "n_prompt_tokens", "n_response_tokens", *view.score_columns]
    return memo(view, "select_table", lambda: SelectTable(frame(view, list(dict.fromkeys(cols)))))


def run_selection(cache: Cache, spec: SelectionSpec, view: View | None = None) -> tuple[SelectionResult, View]:
    """Apply ``spec`` to its dataset's score view; returns (result, view). Memoised per (view, spec)."""
    view = view or score_view(cache, spec.dataset, spec.job)
    memo_key = (str(view.path), spec)
    with _RESULTS_LOCK:
        hit = _RESULTS.get(memo_key)
    if hit is not None:
        return hit, view
    table = select_table(view)
    rules = [parse_rule(r) for r in spec.rules]
    groups = group_values(cache, view, spec.quota) if spec.quota else None
    embeddings = None
    if spec.dedup is not None:
        embeddings = embedding_matrix(cache, view)
        if embeddings is None:
            raise UserError(f"dataset {spec.dataset!r}: the score run kept no embeddings, so there is no "
                            "near-duplicate filter; drop --dedup")
    result = select(table, list(spec.scores), rules, parse_budget(spec.budget), spec.include_flagged,
                    combine=spec.combine, groups=groups, embeddings=embeddings, dedup=spec.dedup)  # fmt: skip
    with _RESULTS_LOCK:
        _RESULTS[memo_key] = result
        while len(_RESULTS) > 8:
            _RESULTS.popitem(last=False)
    return result, view


def save_spec(cache: Cache, spec: SelectionSpec, name: str) -> tuple[Path, SelectionResult]:
    """Run ``spec`` and save its result as ``name`` (what ``select --save`` and the app's Save button do)."""
    _check_name(name)
    result, view = run_selection(cache, spec)
    meta = dataset_meta(cache, spec.dataset)
    path = save_selection(cache, spec.dataset, name, result, spec.record(view.job.id, meta["fingerprint"], name))
    return path, result


# --------------------------------------------------------------------------------------------------------------
# Comparing two saved selections


@dataclass
class Comparison:
    """How two saved selections of one dataset differ."""

    a: str
    b: str
    n_a: int
    n_b: int
    overlap: int
    jaccard: float
    only_a: list[str] = field(default_factory=list)  # kept by a, not by b (best first in a)
    only_b: list[str] = field(default_factory=list)
    left_because: dict[str, int] = field(default_factory=dict)  # why b dropped what a kept
    joined_because: dict[str, int] = field(default_factory=dict)  # why a dropped what b kept


def _kept_and_reasons(cache: Cache, dataset: str, name: str) -> tuple[pa.Table, pa.Table]:
    """(kept rows: id, order; dropped rows: id, reason) of a saved selection, read with Arrow (no per-row Python)."""
    load_selection_record(cache, dataset, name)
    table = pq.read_table(_paths(cache, dataset, name)[1], columns=["id", "kept", "order", "reason"])
    kept = table.filter(table["kept"]).sort_by("order")
    return kept, table.filter(pc.invert(table["kept"]))


def _reason_counts_for(dropped: pa.Table, wanted: pa.Array) -> dict[str, int]:
    rows = dropped.filter(pc.is_in(dropped["id"], value_set=wanted))
    counts = rows.group_by("reason").aggregate([("id", "count")]).to_pylist()
    out = {r["reason"]: r["id_count"] for r in counts}
    missing = len(wanted) - rows.num_rows
    if missing > 0:
        out["not_in_selection"] = missing
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


_COMPARED: OrderedDict = OrderedDict()


def compare_selections(cache: Cache, dataset: str, a: str, b: str, show: int = 20) -> Comparison:
    """Overlap, Jaccard, and what moved between saved selections ``a`` and ``b`` (with the drop reasons).

    Memoised on the two files' identity (inode, size, mtime): a re-saved selection is compared afresh."""
    def stamp(name: str) -> tuple:
        try:
            st = _paths(cache, dataset, name)[1].stat()
        except (FileNotFoundError, TypeError):
            return (name,)
        return (name, st.st_ino, st.st_size, st.st_mtime_ns)

    key = (str(cache.root), dataset, stamp(a), stamp(b), show)
    hit = _COMPARED.get(key)
    if hit is None:
        hit = _compare(cache, dataset, a, b, show)
        _COMPARED[key] = hit
        while len(_COMPARED) > 8:
            _COMPARED.popitem(last=False)
    return hit


def _compare(cache: Cache, dataset: str, a: str, b: str, show: int) -> Comparison:
    kept_a, dropped_a = _kept_and_reasons(cache, dataset, a)
    kept_b, dropped_b = _kept_and_reasons(cache, dataset, b)
    in_b = pc.is_in(kept_a["id"], value_set=kept_b["id"])
    in_a = pc.is_in(kept_b["id"], value_set=kept_a["id"])
    overlap = pc.sum(in_b).as_py() or 0
    only_a = kept_a["id"].filter(pc.invert(in_b)).combine_chunks()
    only_b = kept_b["id"].filter(pc.invert(in_a)).combine_chunks()
    union = kept_a.num_rows + kept_b.num_rows - overlap
    return Comparison(a, b, kept_a.num_rows, kept_b.num_rows, overlap, overlap / union if union else 1.0,
                      only_a.slice(0, show).to_pylist(), only_b.slice(0, show).to_pylist(),
                      _reason_counts_for(dropped_b, only_a), _reason_counts_for(dropped_a, only_b))  # fmt: skip


def load_selection_record(cache: Cache, dataset: str, name: str) -> dict:
    """A saved selection's JSON record (spec and counts) without reading its rows."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise _not_found(cache, dataset, name)
    record = read_json(_paths(cache, dataset, name)[0])
    if record is None:
        raise _not_found(cache, dataset, name)
    return record


# --------------------------------------------------------------------------------------------------------------
# Saved selections


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise UserError(
            f"Selection name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit (e.g. top6 or davir-band.v2)."
        )
    return name


def _paths(cache: Cache, dataset: str, name: str) -> tuple[Path, Path]:
    folder = cache.selections_dir(dataset)
    return folder / f"{name}.json", folder / f"{name}.parquet"


def save_selection(cache: Cache, dataset: str, name: str, result: SelectionResult, spec: dict) -> Path:
    """Save ``result`` as ``<name>.parquet`` + ``<name>.json`` (spec + counts); return the JSON path.

    The Parquet file is written first, so a reader that finds the JSON always finds its rows.
    """
    _check_name(name)
    json_path, parquet_path = _paths(cache, dataset, name)
    n_kept = len(result.kept_ids)
    dropped = result.dropped if isinstance(result.dropped, DroppedReasons) else DroppedReasons(
        list(result.dropped.keys()), list(result.dropped.values()))
    n_dropped = len(dropped)
    table = _rows_in_table_order(result) if result.by_row is not None and result.kept_pos is not None else None
    if table is None:
        table = pa.table(
            {
                "id": pa.concat_arrays([pa.array(list(result.kept_ids), type=pa.string()),
                                        dropped.arrow_ids()]),
                "kept": pa.array(np.arange(n_kept + n_dropped) < n_kept, type=pa.bool_()),
                "order": pa.array(np.concatenate([np.arange(n_kept), np.full(n_dropped, -1)]).astype(np.int64)),
                "reason": pa.concat_arrays([pa.array([""] * n_kept, type=pa.string()), dropped.arrow_reasons()]),
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
    """The saved rows (id, kept, order, reason) of a result made by select, one per score-table row in table order.

    Same rows as kept-first order (readers filter on ``kept`` and sort by ``order``), but built from arrays the
    selection already holds: the Arrow ids as they are, reasons from their codes. At a million rows this takes a
    few ms where gathering the kept and dropped ids into a new order took ~50 ms."""
    arrow_ids, codes, labels = result.by_row
    kept = codes < 0  # (n,)
    order = np.full(len(codes), -1, dtype=np.int64)
    order[result.kept_pos] = np.arange(len(result.kept_pos), dtype=np.int64)
    reason = pa.DictionaryArray.from_arrays(pa.array(np.where(kept, len(labels), codes), pa.int32()),
                                            pa.array(list(labels) + [""], pa.string())).cast(pa.string())
    return pa.table({"id": arrow_ids, "kept": pa.array(kept), "order": pa.array(order), "reason": reason})


def _write_rows(path: Path, table: pa.Table) -> None:
    """Temp-then-rename like :func:`scoring.store.cache.atomic_write_parquet`, tuned for a million unique ids: no
    column statistics and no dictionary for the ids (both cost more than the data is worth here), zstd level 1.
    About half the time of the defaults, and a smaller file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=["reason"],
                   write_statistics=False)  # fmt: skip
    os.replace(tmp, path)


def _saved_names(cache: Cache, dataset: str) -> list[str]:
    folder = cache.selections_dir(dataset)
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []


def _not_found(cache: Cache, dataset: str, name: str) -> UserError:
    names = _saved_names(cache, dataset)
    have = ", ".join(names) if names else "none yet (save one with: python -m scoring select ... --save NAME)"
    return UserError(f"No saved selection {name!r} for dataset {dataset!r}. Saved selections: {have}.")


def load_selection(cache: Cache, dataset: str, name: str) -> tuple[dict, SelectionResult]:
    """The saved record (spec + counts) and the :class:`SelectionResult` it describes."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise _not_found(cache, dataset, name)
    json_path, parquet_path = _paths(cache, dataset, name)
    for attempt in range(3):  # a concurrent re-save may swap the parquet between our two reads: retry
        if attempt:
            time.sleep(0.05)
        record = read_json(json_path)
        if record is None or not parquet_path.exists():
            raise _not_found(cache, dataset, name)
        df = pq.read_table(parquet_path).to_pandas()
        kept = df[df["kept"]].sort_values("order", kind="stable")
        dropped_rows = df[~df["kept"]]
        result = SelectionResult(
            kept_ids=kept["id"].astype(str).tolist(),
            dropped=DroppedReasons(dropped_rows["id"].astype(str).to_numpy(dtype=object),
                                   dropped_rows["reason"].astype(str).to_numpy(dtype=object)),
            n_total=int(record.get("n_total", len(df))),
            tokens_kept=int(record.get("tokens_kept", 0)),
        )
        if record.get("kept_sha256") in (None, result.kept_sha256):
            return record, result
    raise UserError(f"Saved selection {name!r} of dataset {dataset!r} is inconsistent (its rows do not match its "
                    "kept_sha256); save it again.")


def list_selections(cache: Cache, dataset: str) -> list[dict]:
    """Every saved selection record of ``dataset``, sorted by name."""
    out = []
    for name in _saved_names(cache, dataset):
        record = read_json(_paths(cache, dataset, name)[0])
        if isinstance(record, dict):
            record.setdefault("name", name)
            out.append(record)
    return out


def delete_selection(cache: Cache, dataset: str, name: str) -> None:
    """Remove a saved selection (JSON first, so listings never show a half-deleted one)."""
    if not isinstance(name, str) or not SELECTION_NAME_RE.match(name):
        raise _not_found(cache, dataset, name)
    json_path, parquet_path = _paths(cache, dataset, name)
    if not json_path.exists():
        raise _not_found(cache, dataset, name)
    json_path.unlink(missing_ok=True)
    parquet_path.unlink(missing_ok=True)


def reproduce_command(spec: dict) -> str:
    """The CLI line that rebuilds and saves the selection described by ``spec`` (a saved record or a dict)."""
    q = shlex.quote
    parts = ["python -m scoring select", q(str(spec.get("dataset", "DATASET")))]
    for score in spec.get("scores") or []:
        parts += ["--score", q(str(score))]
    budget = spec.get("budget", "")
    budget = getattr(budget, "text", budget)  # Budget objects too
    parts += ["--budget", q(str(budget))]
    rules = spec.get("rules") or [spec.get("rule") or "top"]
    rules = [getattr(r, "text", r) for r in rules]  # Rule objects too
    if len(set(map(str, rules))) == 1:
        rules = rules[:1]
    for rule in rules:
        parts += ["--rule", q(str(rule))]
    if (spec.get("combine") or "and") != "and":
        parts += ["--combine", q(str(spec["combine"]))]
    if spec.get("quota"):
        parts += ["--quota", q(str(spec["quota"]))]
    if spec.get("dedup") is not None:
        parts += ["--dedup", q(str(spec["dedup"]))]
    if spec.get("include_flagged"):
        parts.append("--include-flagged")
    runs = spec.get("runs") or []
    if runs:  # a selection reads one score job; the CLI names it with --job
        parts += ["--job", q(str(runs[0]))]
    if spec.get("name"):
        parts += ["--save", q(str(spec["name"]))]
    return " ".join(parts)
