"""The Python API: what the CLI and the app do, callable from a notebook. Re-exported by ``scoring`` itself.

    import scoring

    scoring.ingest("../shared/data/gsm8k/train.jsonl", limit=200)            # -> dataset "gsm8k-train"
    job = scoring.score("gsm8k-train")                                      # base pass, reference, ref pass
    table = scoring.scores("gsm8k-train")                                   # one row per example
    kept = scoring.select("gsm8k-train", scores=["davir"], budget="6%", save="top6")
    scoring.export("gsm8k-train", "top6", format="jsonl")
    scoring.evaluate("gsm8k-train", "top6", evals=["gsm8k-test"])           # selection vs random vs full

Every function takes ``cache=``: a folder (default ``$DAVIR_CACHE``, else ``./cache``) or a
:class:`~scoring.store.cache.Cache`. Problems with the input raise :class:`~scoring.errors.UserError` with a message
meant for a person.
"""
from __future__ import annotations

import os

import pandas as pd

from scoring.env import cache_dir
from scoring.errors import UserError
from scoring.export import ExportResult, export_selection
from scoring.ingest.catalog import IngestResult, dataset_kind
from scoring.ingest.catalog import ingest as ingest_source
from scoring.ingest.layouts import parse_field_map
from scoring.jobs.evaluate import DEFAULT_AGAINST, evaluate_request
from scoring.jobs.evaluate import report as evaluation_report
from scoring.jobs.influence import DEFAULT_SAMPLE, influence_request
from scoring.jobs.requests import pass_config_for, score_request
from scoring.jobs.runner import enqueue, run
from scoring.jobs.worker import ensure_worker
from scoring.scores.tables import score_table
from scoring.selection.rules import SelectionResult, default_budget, missing_budget_error
from scoring.selection.saved import SelectionSpec, load_selection, run_selection, save_spec
from scoring.store.cache import Cache
from scoring.store.jobs import Job


def open_cache(cache: Cache | str | os.PathLike | None = None) -> Cache:
    """A Cache: the one given, or the folder given, or ``$DAVIR_CACHE``, else ``./cache``."""
    return cache if isinstance(cache, Cache) else Cache(cache_dir(cache))


def ingest(source: str, *, name: str | None = None, limit: int | None = None,
           field_map: dict[str, str] | list[str] | None = None, replace: bool = False,
           cache=None, progress: bool = True) -> IngestResult:
    """Read a file, folder, glob, ``save_to_disk`` folder or hub id into the cache (see scoring.ingest).
    ``field_map``: {"prompt": "question", …} or ["prompt=question", …], as ``--map``."""
    if isinstance(field_map, (list, tuple)):
        field_map = parse_field_map(list(field_map))
    return ingest_source(source, open_cache(cache), name=name, limit=limit, field_map=field_map, replace=replace,
                         progress=progress)  # fmt: skip


def score(dataset: str, *, model: str | None = None, scores: list[str] | None = None, max_length: int | None = None,
          batch_tokens: int | None = None, wait: bool = True, progress: bool = False, cache=None,
          **request) -> Job:
    """Score a dataset (either kind) and return its job; ``wait=False`` queues it for a background worker.

    ``request``: the rest of :func:`scoring.jobs.requests.score_request` (reference, train, dpo, val, …).
    The same request again returns the finished job at once."""
    cache = open_cache(cache)
    config = pass_config_for(dataset_kind(cache, dataset), max_length, batch_tokens)
    job, _ = enqueue(cache, score_request(cache, dataset, model, scores, config, **request))
    if job.state == "done":
        return job
    if not wait:
        ensure_worker(cache)
        return job
    return run(cache, job.id, progress=progress)


def influence(dataset: str, *, sample: int = DEFAULT_SAMPLE, seed: int = 0, job: str | None = None,
              params: str = "auto", progress: bool = False, cache=None) -> dict:
    """The influence check of a preference-pair score job (default: the latest finished one): on a seeded sample,
    each score's Spearman with IF, its selection's overlap with TIF, the auto band (``job.result``; see
    scoring.selection.influence). Cached: the same request again returns at once."""
    cache = open_cache(cache)
    check, _ = enqueue(cache, influence_request(cache, dataset, job, sample, seed, params))
    if check.state != "done":
        check = run(cache, check.id, progress=progress)
    if check.state != "done":
        raise UserError(f"influence job {check.id} {check.state}: {check.error}")
    return check.result


def evaluate(dataset: str, selection: str | None = None, *, against=DEFAULT_AGAINST, seeds: int = 3, evals=(),
             holdout: float | None = None, epochs: float | None = None, objective: str | None = None,
             method: str = "full", lr: float | None = None, start_from: str = "theta", rule_of: str | None = None,
             budgets=None, wait: bool = True, progress: bool = False, cache=None) -> dict:
    """Does the cut help? Train on saved selection ``selection``, on ``seeds`` random subsets of its size and on the
    full set, and compare them on ``evals`` (scoring.jobs.evaluate); ``rule_of`` + ``budgets`` sweep a selection's
    rule over budgets instead. Returns the report (what ``evaluate --json`` prints); with ``wait=False`` the job is
    queued for the background worker and the report holds what is done so far. Cached by fingerprint."""
    cache = open_cache(cache)
    request = evaluate_request(cache, dataset, selection, against=against, seeds=seeds, evals=evals, holdout=holdout,
                               epochs=epochs, objective=objective, method=method, lr=lr, start_from=start_from,
                               rule_of=rule_of, budgets=budgets)  # fmt: skip
    job, _ = enqueue(cache, request)
    if not wait and job.state != "done":
        ensure_worker(cache)
        return evaluation_report(job)
    if job.state != "done":
        job = run(cache, job.id, progress=progress)
    if job.state != "done":
        raise UserError(f"evaluation {job.id} {job.state}: {job.error}")
    return evaluation_report(job)


def scores(dataset: str, *, job: str | None = None, cache=None) -> pd.DataFrame:
    """One row per example: idx, id, flag and every score of the job (default: the latest finished one)."""
    table, _ = score_table(open_cache(cache), dataset, job)
    return table


def select(dataset: str, *, scores: list[str], budget: str | None = None, rule: str | list[str] = "top",
           combine: str = "and", include_flagged: bool = False, quota: str | None = None, dedup: float | None = None,
           job: str | None = None, save: str | None = None, replace: bool = False, cache=None) -> SelectionResult:
    """Keep what the rule picks within the budget (the semantics: scoring.selection.engine); ``save`` names it.

    ``budget`` may be left out when every rule is a band or a value rule (band:, band-values:, above:, below:): it
    is then "all". Saving refuses to replace a selection of the same name unless ``replace``; ``result.partial``
    is set when the score run had not finished."""
    cache = open_cache(cache)
    rules = (rule,) if isinstance(rule, str) else tuple(rule)
    budget = budget or default_budget(rules)
    if not budget:
        raise missing_budget_error("budget=", "rule")
    spec = SelectionSpec(dataset=dataset, scores=tuple(scores), budget=budget, rules=rules, combine=combine,
                         include_flagged=include_flagged, quota=quota, dedup=dedup, job=job)  # fmt: skip
    if save:
        return save_spec(cache, spec, save, replace=replace)[1]
    return run_selection(cache, spec)[0]


def export(dataset: str, selection: str, *, format: str = "jsonl", out: str | os.PathLike | None = None,
           with_scores: bool = False, command: str | None = None, cache=None) -> ExportResult:
    """Write a saved selection's examples with a manifest that reproduces them, in this cache and from the source
    in any other (scoring.export). A UserError when the selection kept no rows, when ``out`` is another selection's
    export folder, or when the folder cannot be created or written."""
    cache = open_cache(cache)
    table = None
    if with_scores:
        record, _ = load_selection(cache, dataset, selection)
        table, _ = score_table(cache, dataset, (record.get("runs") or [None])[0])
        table = table.drop(columns=["idx", "flag"])
    return export_selection(cache, dataset, selection, format, out, table, command)
