"""App-facing queries for the Pairs page's warm-up report and influence check. Never imports streamlit.

- The warm-ups: ``job.warmups`` (scoring.jobs.pairs.warmup_report) as one row per (warm-up, pairs it was measured
  on), and ``job.timings`` as one row per step.
- The influence check: the latest finished ``influence`` job over the page's score job (scoring.jobs.influence), its
  agreement report (scoring.selection.influence) as a table, its sampled pairs' IF beside their scores in long form
  for a faceted scatter, the ``select --band auto`` line, and starting a new check on the background worker.
"""
from __future__ import annotations

import math
import shlex

import numpy as np
import pandas as pd

from scoring.jobs.influence import (
    DEFAULT_SAMPLE,
    INFLUENCE_JOB,
    influence_request,
    influence_values,
    latest_influence,
)
from scoring.jobs.runner import enqueue
from scoring.jobs.worker import ensure_worker
from scoring.scores.view_reads import column
from scoring.scores.views import View
from scoring.selection.influence import AGREEMENT_SCORES, COMBINED
from scoring.store.cache import Cache
from scoring.store.jobs import Job, list_jobs

WARMUP_LABELS = {"theta": "π_θ", "val": "θ_val"}  # the warm-ups in the order they run
START_LABELS = {"ref": "π_ref", "theta": "π_θ"}
PAIRS_LABELS = {("theta", "train"): "its training pairs", ("theta", "validation"): "validation pairs (unseen)",
                ("val", "train"): "validation pairs (its training pairs)"}  # fmt: skip
STATS = (("reward accuracy", "reward_accuracy"), ("mean margin", "reward_margin"),
         ("preference accuracy", "preference_accuracy"))  # fmt: skip
WARMUP_COLUMNS = ["warm-up", "trained from", "pairs", "n",
                  *[f"{label} {when}" for label, _ in STATS for when in ("before", "after")]]  # fmt: skip
SCORE_LABELS = {"lossdiff": "LossDiff", "irm": "IRM", "davir_dpo": "DAVIR-DPO", "margin_base": "base margin",
                COMBINED: "LossDiff-IRM (combined)"}  # fmt: skip
AGREEMENT_COLUMNS = ["score", "name", "spearman with IF", "overlap with TIF", "overlap above chance"]


# ---------------------------------------------------------------- the warm-ups


def warmup_frame(job: Job) -> pd.DataFrame:
    """One row per (warm-up, pairs measured on): n, and reward accuracy / mean margin / preference accuracy before
    and after the warm-up (NaN where nothing was scored). Empty when the job has no warm-up report."""
    rows = []
    report = job.warmups or {}
    for model in [*[m for m in WARMUP_LABELS if m in report], *[m for m in report if m not in WARMUP_LABELS]]:
        warmup = report[model] or {}
        for on, stats in warmup.items():
            if not isinstance(stats, dict) or "before" not in stats:
                continue
            before, after = stats.get("before") or {}, stats.get("after") or {}
            row = {"warm-up": WARMUP_LABELS.get(model, model),
                   "trained from": START_LABELS.get(warmup.get("start"), str(warmup.get("start") or "")),
                   "pairs": PAIRS_LABELS.get((model, on), f"{on} pairs"),
                   "n": int(after.get("n") or before.get("n") or 0)}  # fmt: skip
            for label, key in STATS:
                row[f"{label} before"] = _float(before.get(key))
                row[f"{label} after"] = _float(after.get(key))
            rows.append(row)
    return pd.DataFrame(rows, columns=WARMUP_COLUMNS)


def timings_frame(job: Job) -> pd.DataFrame:
    """The job's step timings, one row per step (step, seconds, peak memory in MB where recorded; the record keeps
    them by name); empty when it recorded none."""
    timings, peaks = job.timings or {}, job.peak_mb or {}
    return pd.DataFrame({"step": list(timings), "seconds": [_float(v) for v in timings.values()],
                         "peak MB": [_float(peaks.get(k)) for k in timings]})  # fmt: skip


def _float(value) -> float:
    return math.nan if value is None else float(value)


# ---------------------------------------------------------------- the influence check


def influence_check(cache: Cache, view: View) -> Job | None:
    """The latest finished influence job over the view's score job, or None."""
    return latest_influence(cache, view.dataset, view.job.id)


def pending_influence(cache: Cache, view: View) -> Job | None:
    """The newest queued / running / interrupted influence job over the view's score job, or None."""
    waiting = [j for j in list_jobs(cache, view.dataset)
               if j.kind == INFLUENCE_JOB and j.source_job == view.job.id and j.unfinished]  # fmt: skip
    return waiting[-1] if waiting else None


def check_facts(check: Job) -> dict:
    """What the page says around the agreement table: n (sampled pairs), n_val, band, kept, chance (the overlap a
    random set of the kept size would have with TIF), sample seed and size asked, and the auto band (or None)."""
    r = check.result or {}
    asked = check.influence or {}
    return {"n": int(r.get("n") or 0), "n_val": r.get("n_val"), "band": list(r.get("band") or []),
            "kept": int(r.get("kept") or 0), "chance": r.get("chance"), "seed": asked.get("seed"),
            "sample": asked.get("sample"), "auto_band": r.get("auto_band")}  # fmt: skip


def agreement_frame(check: Job) -> pd.DataFrame:
    """One row per score (lossdiff, irm, davir_dpo, margin_base, then the combined LossDiff-IRM rank): its label,
    its name, the Spearman of the score with IF, the overlap of its selection with TIF's, and that overlap minus
    chance. NaN where the report has no number."""
    r = check.result or {}
    rho, over, chance = r.get("spearman") or {}, r.get("overlap") or {}, r.get("chance")
    names = [*[s for s in AGREEMENT_SCORES if s in rho or s in over],
             *[s for s in {**rho, **over} if s not in AGREEMENT_SCORES and s != COMBINED], COMBINED]  # fmt: skip
    rows = []
    for name in names:
        o = _float(over.get(name))
        rows.append({"score": SCORE_LABELS.get(name, name), "name": name, "spearman with IF": _float(rho.get(name)),
                     "overlap with TIF": o, "overlap above chance": o - _float(chance)})  # fmt: skip
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def influence_points(cache: Cache, view: View, check: Job) -> pd.DataFrame:
    """Long form for a faceted scatter of each score against IF: one row per (sampled pair, score the view has)
    with id, influence, score, value (pairs no longer in the view, and missing values, left out)."""
    values = influence_values(cache, check)
    idx = values["idx"].to_numpy(dtype=np.int64)
    order = column(view, "idx")
    pos = np.searchsorted(order, idx)
    found = pos < len(order)
    found[found] = order[pos[found]] == idx[found]
    pos, influence = pos[found], values["influence"].to_numpy(dtype=float)[found]
    frames = []
    for name in [s for s in AGREEMENT_SCORES if s in view.score_columns]:
        frames.append(pd.DataFrame({"id": column(view, "id")[pos], "influence": influence, "score": name,
                                    "value": column(view, name)[pos]}))  # fmt: skip
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id", "influence", "score", "value"])
    return out[np.isfinite(out["influence"].astype(float)) & np.isfinite(out["value"].astype(float))].reset_index(drop=True)


def auto_band_command(cache: Cache, view: View, name: str = "") -> str:
    """The CLI line that saves the LossDiff-IRM selection with the band the influence check chose."""
    q = shlex.quote
    return (f"python -m scoring --cache {q(str(cache.root))} select {q(view.dataset)} --rule lossdiff-irm --band auto "
            f"--budget 100% --job {q(view.job.id)} --save {q(name or 'NAME')}")


def start_influence(cache: Cache, dataset: str, job_id: str | None = None, sample: int = DEFAULT_SAMPLE,
                    seed: int = 0) -> Job:  # fmt: skip
    """Queue the influence check of score job ``job_id`` and make sure a background worker runs it. Returns the job
    (an identical finished or active one when there is one). A UserError (not a pair job, no warm-ups yet, too
    small a sample) propagates unchanged."""
    job, _ = enqueue(cache, influence_request(cache, dataset, job_id, sample=int(sample), seed=int(seed)))
    if job.state != "done":
        ensure_worker(cache)
    return job
