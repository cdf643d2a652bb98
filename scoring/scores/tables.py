"""A job's loss table and score table: DuckDB over the immutable Parquet parts, joined to the examples.

One ``loss_table`` and one ``score_table`` for both dataset kinds; what differs is which passes are joined and
under which column names:

    sft   the base pass (token counts, loss given the prompt, loss alone, its flag) and the reference pass's loss
    pair  the ref pass (token counts, log-probs of both replies, its flag) and the log-probs under theta and val

Every query reads files by glob in an in-memory DuckDB, so it never holds a lock a writer needs and always sees
whole parts only. Partial results are simply the parts that exist: rows not scored yet come out NaN.
"""
from __future__ import annotations

import pandas as pd

from scoring.errors import UserError
from scoring.ingest.catalog import dataset_meta, kind_of
from scoring.schema import VALIDATION_FLAG, join_flags
from scoring.scores.registry import FIRST_PASS, SCORES, compute
from scoring.store.cache import Cache
from scoring.store.jobs import Job, list_jobs, load_job
from scoring.store.parts import connect, parts_glob, sql_str

JOB_KIND = {"sft": "score", "pair": "pair_score"}  # the score job of each dataset kind
DEFAULT_BETA = 0.1

# Per kind and pass role: (column in the part, name in the loss table). The first pass also gives the counts.
PASS_COLUMNS = {
    "sft": {
        "base": (("n_prompt_tokens", "n_prompt_tokens"), ("n_response_tokens", "n_response_tokens"),
                 ("loss_sum", "base_loss_sum"), ("alone_loss_sum", "base_alone_loss_sum"), ("flag", "pass_flag")),
        "ref": (("loss_sum", "ref_loss_sum"),),
    },
    "pair": {
        "ref": (("n_prompt_tokens", "n_prompt_tokens"), ("n_chosen_tokens", "n_chosen_tokens"),
                ("n_rejected_tokens", "n_rejected_tokens"), ("chosen_logp", "ref_chosen_logp"),
                ("rejected_logp", "ref_rejected_logp"), ("flag", "pass_flag")),
        "theta": (("chosen_logp", "theta_chosen_logp"), ("rejected_logp", "theta_rejected_logp")),
        "val": (("chosen_logp", "val_chosen_logp"), ("rejected_logp", "val_rejected_logp")),
    },
}  # fmt: skip
_SQL_TYPES = {"n_prompt_tokens": "INT", "n_response_tokens": "INT", "n_chosen_tokens": "INT",
              "n_rejected_tokens": "INT", "flag": "VARCHAR"}  # fmt: skip  (everything else: DOUBLE)


def job_kind(job: Job) -> str:
    return "pair" if job.is_pair else "sft"


def pick_job(cache: Cache, dataset: str, job_id: str | None = None) -> Job:
    """The named job, else the dataset's most recently finished score job, else the newest one with a pass."""
    if job_id:
        job = load_job(cache, job_id)
        if job.dataset != dataset:
            raise UserError(f"job {job_id} scores {job.dataset!r}, not {dataset!r}")
        return job
    jobs = score_runs(cache, dataset)
    if not jobs:
        raise UserError(f"dataset {dataset!r} has no scores yet; run `python -m scoring score {dataset}`")
    done = sorted((j for j in jobs if j.state == "done"), key=lambda j: j.finished or "")
    return (done or jobs)[-1]


def score_runs(cache: Cache, dataset: str) -> list[Job]:
    """The dataset's score jobs (of its kind, on its current content) that have made their first pass, oldest
    first: the runs a score table can come from."""
    meta = dataset_meta(cache, dataset)
    kind = kind_of(meta)
    return [j for j in list_jobs(cache, dataset) if j.kind == JOB_KIND[kind] and j.pass_key(FIRST_PASS[kind])
            and j.dataset_fingerprint == meta["fingerprint"]]  # fmt: skip


def _pass_source(cache: Cache, key: str | None, columns) -> str:
    """A DuckDB subquery with ``idx`` and the pass's columns renamed; typed and empty while it has no part."""
    glob = parts_glob(cache, key)
    if glob:
        cols = ", ".join(f"{src} AS {name}" for src, name in columns)
        return f"(SELECT idx, {cols} FROM read_parquet({sql_str(glob)}))"
    cols = ", ".join(f"NULL::{_SQL_TYPES.get(src, 'DOUBLE')} AS {name}" for src, name in columns)
    return f"(SELECT NULL::BIGINT AS idx, {cols} WHERE false)"


def loss_table(cache: Cache, dataset: str, job: Job) -> pd.DataFrame:
    """Examples left-joined to the job's passes: one row per example (idx, id, flag, the passes' columns), NaN where
    unscored. A pair table also gets ``n_response_tokens`` (both replies) and ``beta`` (the warm-ups' DPO β), and
    its validation pairs (``job.val_ids``) are flagged ``validation_pair``, which no selection keeps."""
    kind = job_kind(job)
    selects, joins = [], []
    for i, (role, columns) in enumerate(PASS_COLUMNS[kind].items()):
        alias = f"p{i}"
        joins.append(f"LEFT JOIN {_pass_source(cache, job.pass_key(role), columns)} {alias} ON {alias}.idx = e.idx")
        selects += [f"{alias}.{name}" for _, name in columns]
    query = f"""
        SELECT e.idx, e.id, e.flag AS ingest_flag, {', '.join(selects)}
        FROM read_parquet({sql_str(cache.examples_path(dataset))}) e {' '.join(joins)}
        ORDER BY e.idx
    """
    table = connect().execute(query).df()
    table["flag"] = [join_flags(a, b) for a, b in zip(table["ingest_flag"], table["pass_flag"].fillna(""))]
    table = table.drop(columns=["ingest_flag", "pass_flag"])
    if kind == "pair":
        held = table["id"].astype(str).isin(set(job.val_ids or ()))
        table.loc[held, "flag"] = [join_flags(VALIDATION_FLAG, f) for f in table.loc[held, "flag"]]
        table["n_response_tokens"] = table["n_chosen_tokens"] + table["n_rejected_tokens"]
        table["beta"] = float((job.dpo or {}).get("beta", DEFAULT_BETA))
    elif "ref" not in job.passes:
        table = table.drop(columns=["ref_loss_sum"])
    return table


def score_table(cache: Cache, dataset: str, job_id: str | None = None) -> tuple[pd.DataFrame, Job]:
    """(one row per example: idx, id, flag, then every score column of the job's kind; the job it came from)."""
    job = pick_job(cache, dataset, job_id)
    losses = loss_table(cache, dataset, job)
    scores = compute(losses, job.scores, job_kind(job), job.passes or None)  # (records before `passes`: by columns)
    return pd.concat([losses[["idx", "id", "flag"]], scores], axis=1), job


def score_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c in SCORES]
