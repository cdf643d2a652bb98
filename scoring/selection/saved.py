"""Saved selections, the rule spec the CLI and the app share, running a spec against the cache, and comparisons.

Why one :class:`SelectionSpec`: "selecting with a budget in the app gives the same ids as the CLI with the same
rule" holds by construction when both build a spec and call :func:`run_selection`, which reads the same
materialised score view (:mod:`scoring.scores.views`), the same quota groups and the same embeddings, then calls
:func:`scoring.selection.engine.select`. The spec also writes the CLI line that reproduces it.

Saved selections on disk (``<name>.json`` + ``<name>.parquet``) are :mod:`scoring.selection.files`, re-exported
here. :func:`save_spec` never replaces a selection of the same name unless asked to (``replace=True``,
``select --replace``), refuses a selection over scores that do not exist yet, and marks one made while the score
run is unfinished as ``partial``.
"""
from __future__ import annotations

import shlex
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
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
from scoring.selection.files import (
    already_saved_message,
    check_name,
    delete_selection,
    list_selections,
    load_selection,
    load_selection_record,
    save_selection,
    selection_exists,
    selection_paths,
)
from scoring.selection.rules import COMBINES, SelectionResult, parse_budget, parse_rule
from scoring.selection.table import SelectTable
from scoring.store.cache import Cache

__all__ = [  # the file layer (scoring.selection.files) is re-exported: callers import saved selections from here
    "Comparison", "SelectionSpec", "already_saved_message", "compare_selections", "delete_selection",
    "list_selections", "load_selection", "load_selection_record", "reproduce_command", "run_selection",
    "save_selection", "save_spec", "scored_rows", "select_table", "selection_exists",
]  # fmt: skip

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

    @classmethod
    def from_record(cls, record: dict) -> SelectionSpec:
        """The spec a saved selection's record states (also an evaluation's rule record, given a ``dataset``): its
        scores, rules, budget, combine, flagged rows, quota, filter, score job (``runs[0]``) and ``band_auto``."""
        rules = record.get("rules") or str(record.get("rule") or "top").split(",")
        dedup = record.get("dedup")
        return cls(dataset=str(record["dataset"]), scores=tuple(record.get("scores") or ()),
                   budget=str(record.get("budget") or "all"), rules=tuple(rules),
                   combine=record.get("combine") or "and",
                   include_flagged=bool(record.get("include_flagged")), quota=record.get("quota") or None,
                   dedup=None if dedup is None else float(dedup), job=(record.get("runs") or [None])[0],
                   band_auto=record.get("band_auto") or None)  # fmt: skip

    def rule_key(self) -> tuple:
        """What two specs must share to state the same rule, budget, score job, name and band_auto aside: the
        scores, the rules (one per score, lower case), combine (when there are several scores), flagged rows,
        quota and the near-duplicate filter."""
        rules = tuple(str(r).strip().lower() for r in self.rules)
        rules = rules * len(self.scores) if len(rules) == 1 and len(self.scores) > 1 else rules
        return (tuple(self.scores), rules, self.combine if len(self.scores) > 1 else "and",
                bool(self.include_flagged), self.quota or None, None if self.dedup is None else float(self.dedup))

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
    if view.job.state != "done":  # parts may still be landing: say how much of the table the scores cover
        result.partial = {"scored": scored_rows(table, spec.scores), "rows": table.n}
    with _RESULTS_LOCK:
        _RESULTS[memo_key] = result
        while len(_RESULTS) > 8:
            _RESULTS.popitem(last=False)
    return result, view


def scored_rows(table: SelectTable, scores) -> int:
    """How many rows have a value for every one of ``scores`` (missing columns count as unscored)."""
    scored = np.ones(table.n, dtype=bool)
    for name in scores:
        scored &= ~np.isnan(table.values(name)) if name in table.columns else False
    return int(scored.sum())


def save_spec(cache: Cache, spec: SelectionSpec, name: str, replace: bool = False) -> tuple[Path, SelectionResult]:
    """Run ``spec`` and save its result as ``name`` (what ``select --save`` and the app's Save button do).

    Refuses (UserError) to replace an existing selection of that name unless ``replace`` -- saving the very same
    selection again (same rule and budget, same score run, same kept rows, neither partial) replaces nothing and is
    allowed, so a reproduce line runs twice -- and to save when no row has a value for the requested scores yet.
    While the score run has not finished it saves, recording ``partial: {scored, rows}`` in the JSON
    (``result.partial`` says the same)."""
    check_name(name)
    existing = None if replace else selection_exists(cache, spec.dataset, name)
    result, view = run_selection(cache, spec)
    _check_scored(select_table(view), spec, view)
    meta = dataset_meta(cache, spec.dataset)
    record = spec.record(view.job.id, meta["fingerprint"], name)
    if result.partial:
        record["partial"] = dict(result.partial)
    if existing is not None and not _same_selection(existing, record, result):
        raise UserError(already_saved_message(existing, spec.dataset, name) + "; pass --replace to overwrite it")
    path = save_selection(cache, spec.dataset, name, result, record)
    return path, result


_SPEC_KEYS = ("dataset", "dataset_fingerprint", "scores", "rules", "combine", "budget", "include_flagged", "quota",
              "dedup", "runs", "band_auto")  # fmt: skip


def _same_selection(existing: dict, record: dict, result: SelectionResult) -> bool:
    """Whether saving ``record`` / ``result`` over ``existing`` would write the same selection again."""
    return (not existing.get("partial") and not record.get("partial")
            and existing.get("kept_sha256") == result.kept_sha256
            and all(existing.get(k) == record.get(k) for k in _SPEC_KEYS))


def _check_scored(table: SelectTable, spec: SelectionSpec, view: View) -> None:
    """A UserError when no row has a value for the requested scores (nothing scored yet)."""
    if scored_rows(table, spec.scores):
        return
    counts = {s: scored_rows(table, [s]) for s in spec.scores}
    empty = [s for s, k in counts.items() if not k]
    what = (f"a {empty[0]} score ({counts[empty[0]]} of {table.n} rows scored)" if empty else
            f"all of {', '.join(spec.scores)} ({', '.join(f'{s}: {k}' for s, k in counts.items())} of {table.n} rows)")
    raise UserError(f"Nothing to select on yet: no row of dataset {spec.dataset!r} has {what} in score run "
                    f"{view.job.id} ({view.job.state}). Wait for the score job or pick another score run (--job); "
                    "nothing was saved.")  # fmt: skip


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
    table = pq.read_table(selection_paths(cache, dataset, name)[1], columns=["id", "kept", "order", "reason"])
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
            st = selection_paths(cache, dataset, name)[1].stat()
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


def reproduce_command(spec: dict, with_job: bool = True) -> str:
    """The CLI line that rebuilds and saves the selection described by ``spec`` (a saved record or a dict).

    ``with_job=False`` leaves out ``--job`` (a cache-local score job id): the line then reads the dataset's latest
    finished score run, e.g. for an export manifest that gives the score command beside it."""
    q = shlex.quote
    parts = ["python -m scoring select", q(str(spec.get("dataset", "DATASET")))]
    for score in spec.get("scores") or []:
        parts += ["--score", q(str(score))]
    budget = spec.get("budget", "")
    budget = getattr(budget, "text", budget)  # Budget objects too
    if budget:
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
    if runs and with_job:  # a selection reads one score job; the CLI names it with --job
        parts += ["--job", q(str(runs[0]))]
    if spec.get("name"):
        parts += ["--save", q(str(spec["name"]))]
    return " ".join(parts)
