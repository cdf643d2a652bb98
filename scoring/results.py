"""Reading results: DuckDB over the immutable Parquet parts, joined to the examples, turned into scores.

Every query opens an in-memory DuckDB connection and reads files by glob, so it never holds a lock a writer
needs and always sees whole parts only (writers rename finished files into place). Partial results are simply
the parts that exist: rows not scored yet come out NaN.
"""
from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd

from . import data
from .errors import UserError
from .schema import join_flags
from .scores import SCORES, compute
from .store import Cache, read_json


def _connect() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(":memory:")


def _sql_str(path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def parts_glob(cache: Cache, key: str) -> str | None:
    parts = cache.parts_dir(key)
    return str(parts / "part-*.parquet") if any(parts.glob("part-*.parquet")) else None


def read_pass(cache: Cache, key: str, columns: list[str]) -> pd.DataFrame:
    """Chosen columns of a pass's loss table (whatever parts exist now)."""
    glob = parts_glob(cache, key)
    if glob is None:
        return pd.DataFrame({c: [] for c in columns})
    cols = ", ".join(columns)
    return _connect().execute(f"SELECT {cols} FROM read_parquet({_sql_str(glob)}) ORDER BY idx").df()


def pick_job(cache: Cache, dataset: str, job_id: str | None = None) -> dict:
    """The named job, else the dataset's most recently finished score job, else the newest one with a pass."""
    from .jobs import list_jobs, load_job

    if job_id:
        job = load_job(cache, job_id)
        if job.get("dataset") != dataset:
            raise UserError(f"job {job_id} scores {job.get('dataset')!r}, not {dataset!r}")
        return job
    meta = data.dataset_meta(cache, dataset)
    kind, first = ("pair_score", "ref_pass") if meta.get("kind") == "pair" else ("score", "base_pass")
    jobs = [
        j
        for j in list_jobs(cache, dataset)
        if j["kind"] == kind and j.get(first) and j["dataset_fingerprint"] == meta["fingerprint"]
    ]
    if not jobs:
        raise UserError(f"dataset {dataset!r} has no scores yet; run `python -m scoring score {dataset}`")
    done = sorted((j for j in jobs if j["state"] == "done"), key=lambda j: j.get("finished") or "")
    return (done or jobs)[-1]


def loss_table(cache: Cache, dataset: str, job: dict) -> pd.DataFrame:
    """Examples left-joined to the job's base and reference passes: one row per example, NaN where unscored."""
    examples = cache.examples_path(dataset)
    base = parts_glob(cache, job["base_pass"]) if job.get("base_pass") else None
    ref = parts_glob(cache, job["ref_pass"]) if job.get("ref_pass") else None
    base_sql = (
        f"(SELECT idx, n_prompt_tokens, n_response_tokens, loss_sum AS base_loss_sum, "
        f"alone_loss_sum AS base_alone_loss_sum, flag AS pass_flag FROM read_parquet({_sql_str(base)}))"
        if base
        else "(SELECT NULL::BIGINT AS idx, NULL::INT AS n_prompt_tokens, NULL::INT AS n_response_tokens, "
        "NULL::DOUBLE AS base_loss_sum, NULL::DOUBLE AS base_alone_loss_sum, NULL::VARCHAR AS pass_flag WHERE false)"
    )
    ref_sql = (
        f"(SELECT idx, loss_sum AS ref_loss_sum FROM read_parquet({_sql_str(ref)}))"
        if ref
        else "(SELECT NULL::BIGINT AS idx, NULL::DOUBLE AS ref_loss_sum WHERE false)"
    )
    query = f"""
        SELECT e.idx, e.id, e.flag AS ingest_flag, b.pass_flag, b.n_prompt_tokens, b.n_response_tokens,
               b.base_loss_sum, b.base_alone_loss_sum, r.ref_loss_sum
        FROM read_parquet({_sql_str(examples)}) e
        LEFT JOIN {base_sql} b ON b.idx = e.idx
        LEFT JOIN {ref_sql} r ON r.idx = e.idx
        ORDER BY e.idx
    """
    table = _connect().execute(query).df()
    table["flag"] = [join_flags(a, b) for a, b in zip(table["ingest_flag"], table["pass_flag"].fillna(""))]
    table = table.drop(columns=["ingest_flag", "pass_flag"])
    if "ref" not in job.get("passes", []):
        table = table.drop(columns=["ref_loss_sum"])
    return table


def score_table(cache: Cache, dataset: str, job_id: str | None = None) -> tuple[pd.DataFrame, dict]:
    """(one row per example: idx, id, flag, then every score column; the job it came from).

    For a preference-pair dataset: one row per pair with the pair scores (scoring.pair_results)."""
    if data.dataset_meta(cache, dataset).get("kind") == "pair":
        from .pair_results import pair_score_table

        return pair_score_table(cache, dataset, job_id)
    job = pick_job(cache, dataset, job_id)
    losses = loss_table(cache, dataset, job)
    scores = compute(losses, job.get("scores", []))
    table = pd.concat([losses[["idx", "id", "flag"]], scores], axis=1)
    return table, job


def score_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c in SCORES]


# ---------------------------------------------------------------- reports


def defect_labels(cache: Cache, dataset: str) -> pd.Series | None:
    """The ``defect`` column of the original records when the dataset has one (the demo does), by idx."""
    meta = data.dataset_meta(cache, dataset)
    if "defect" not in (meta.get("columns") or []):
        return None
    examples = data.load_examples(cache, dataset, columns=["idx", "original"])
    labels = [str((json.loads(o) or {}).get("defect") or "") for o in examples["original"]]
    return pd.Series(labels, index=examples["idx"].to_numpy())


def auroc_report(cache: Cache, dataset: str, table: pd.DataFrame) -> dict | None:
    """AUROC per score and defect kind (1 = every clean row scores above every defect row); None without labels."""
    from .demo_data import auroc_by_defect

    labels = defect_labels(cache, dataset)
    if labels is None:
        return None
    ordered = labels.reindex(table["idx"].to_numpy()).fillna("").tolist()
    report = auroc_by_defect(ordered, {c: table[c].to_numpy() for c in score_columns(table)})
    present = set(ordered) | {"any"}  # leave out the demo's defect kinds a dataset does not have (e.g. pairs)
    return {name: {k: v for k, v in row.items() if k in present} for name, row in report.items()}


def rank_agreement(cache: Cache, dataset: str) -> list[dict]:
    """Spearman rank correlation of each shared score between finished runs of different base models.

    This is how a proxy model is judged: score the dataset with the small proxy and with the target model, and
    read how well the proxy's ranking agrees.
    """
    from .jobs import list_jobs

    meta = data.dataset_meta(cache, dataset)
    runs = [
        j
        for j in list_jobs(cache, dataset)
        if j["kind"] == ("pair_score" if meta.get("kind") == "pair" else "score") and j["state"] == "done"
        and j["dataset_fingerprint"] == meta["fingerprint"]
    ]
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            if a["model_fingerprint"] == b["model_fingerprint"]:
                continue
            ta, _ = score_table(cache, dataset, a["id"])
            tb, _ = score_table(cache, dataset, b["id"])
            for name in sorted(set(score_columns(ta)) & set(score_columns(tb))):
                pair = pd.DataFrame({"a": ta[name], "b": tb[name]}).dropna()
                rho = pair["a"].rank().corr(pair["b"].rank()) if len(pair) > 2 else np.nan
                out.append({"score": name, "run_a": a["id"], "model_a": a["model"], "run_b": b["id"],
                            "model_b": b["model"], "spearman": None if np.isnan(rho) else float(rho),
                            "n": len(pair)})  # fmt: skip
    return out


def flag_counts(table: pd.DataFrame) -> dict[str, int]:
    counts: dict[str, int] = {}
    for flag in table["flag"]:
        for reason in filter(None, flag.split(",")):
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def layout_table(cache: Cache, job: dict) -> pd.DataFrame | None:
    path = cache.pass_dir(job["base_pass"]) / "layout.parquet" if job.get("base_pass") else None
    if not path or not path.exists():
        return None
    return _connect().execute(f"SELECT * FROM read_parquet({_sql_str(path)}) ORDER BY idx").df()


def pass_manifest(cache: Cache, key: str) -> dict | None:
    return read_json(cache.pass_dir(key) / "manifest.json")
