"""The ``influence`` job: how well a pair score job's cheap scores track the influence they stand for.

On a seeded sample of the selectable pairs (unflagged, not validation pairs, scored), it computes the first-order
influence IF(d) = ∇ℓ(θ; d)·∇L_val(θ) at the job's warmed-up θ (scoring.train.influence), then the agreement report
(scoring.selection.influence): Spearman of each score with IF, the overlap of LossDiff-IRM's and each score's
selection with TIF's, and the auto band. The report lands in ``job.result``; the IF values in
``<cache>/influence/<key>/``, keyed by content (θ, the validation pairs, the sample, β, max length, parameters), so
two score jobs sharing θ and the validation pairs (θ_val trained from θ or from π_ref) share one computation.

Resumable: IF is written in parts of ``PART`` pairs, and ∇L_val is saved once computed; a re-run skips both.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from scoring.errors import UserError
from scoring.ingest.catalog import dataset_meta, load_examples
from scoring.jobs.pairs import as_pairs, split, with_logps
from scoring.jobs.requests import with_id
from scoring.jobs.steps import Stopped
from scoring.models.formatting import template_fingerprint
from scoring.models.loading import load_model, load_tokenizer, pick_device, resolve
from scoring.passes.runner import PAIRS
from scoring.scores.tables import pick_job, score_table
from scoring.selection.influence import agreement
from scoring.selection.pairs import BAND_SCORES, DEFAULT_BAND
from scoring.store.cache import Cache, atomic_write_parquet
from scoring.store.jobs import Job, list_jobs, load_job, save_job
from scoring.store.keys import key_of
from scoring.train.influence import PARAMS, influences, token_rows, trainable, validation_gradient

INFLUENCE_JOB = "influence"
INFLUENCE_CODE_VERSION = "1"
DEFAULT_SAMPLE = 256
PART = 16  # pairs per saved part


def influence_request(cache: Cache, dataset: str, job_id: str | None = None, sample: int = DEFAULT_SAMPLE,
                      seed: int = 0, params: str = "auto") -> Job:  # fmt: skip
    """The influence job over pair score job ``job_id`` (default: the dataset's latest finished one)."""
    source = pick_job(cache, dataset, job_id)
    if not source.is_pair:
        raise UserError(f"{dataset!r} holds instruction data; the influence check is for preference pairs")
    if source.state != "done" or not source.theta_model or "val" not in source.passes:
        raise UserError(f"job {source.id} has no finished warm-ups with lossdiff; run `python -m scoring score "
                        f"{dataset}` (the default scores) and wait for it first")  # fmt: skip
    if sample < 3:
        raise UserError(f"--sample {sample}: need at least 3 pairs")
    if params not in PARAMS:
        raise UserError(f"--params {params!r}: choose one of {', '.join(PARAMS)}")
    return with_id(Job(id="", kind=INFLUENCE_JOB, dataset=dataset, dataset_fingerprint=source.dataset_fingerprint,
                       source_job=source.id, influence={"sample": int(sample), "seed": int(seed), "params": params},
                       code_version=INFLUENCE_CODE_VERSION, scores=[]))  # fmt: skip


def sample_pool(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``n`` selectable pairs (unflagged, lossdiff and irm scored), in table order."""
    pool = table[(table["flag"].fillna("") == "") & table[list(BAND_SCORES)].notna().all(axis=1)]
    if len(pool) < 3:
        raise UserError(f"only {len(pool)} selectable scored pairs: too few for the influence check")
    pick = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
    return pool.iloc[np.sort(pick)]


def run_influence_job(cache: Cache, job: Job, should_stop, progress: bool) -> None:
    """Compute (or resume) IF on the sample and store the agreement report in ``job.result``."""
    source = load_job(cache, job.source_job)
    if dataset_meta(cache, job.dataset)["fingerprint"] != job.dataset_fingerprint:
        raise UserError(f"dataset {job.dataset!r} was replaced since this check was queued; score it again")
    table, _ = score_table(cache, job.dataset, source.id)
    sample = sample_pool(table, job.influence["sample"], job.influence["seed"])
    examples = load_examples(cache, job.dataset, columns=list(PAIRS.columns))
    examples = with_logps(cache, examples, source.ref_pass)
    parts = split(cache, source, examples)
    val = with_logps(cache, parts.val, source.val_passes["ref"]) if parts.other else parts.val
    chosen = examples.set_index("idx").loc[sample["idx"]].reset_index()
    theta = resolve(source.theta_model["path"], cache)
    tokenizer = load_tokenizer(theta, source.trust_remote_code)
    beta, max_length = float(source.dpo["beta"]), int(source.pass_config["max_length"])
    key = key_of({"theta": theta.fingerprint, "val": _ids_and_logps(val), "sample": _ids_and_logps(chosen),
                  "beta": beta, "max_length": max_length, "template": template_fingerprint(tokenizer),
                  "params": job.influence["params"], "code": INFLUENCE_CODE_VERSION})  # fmt: skip
    folder = cache.root / "influence" / key
    values = _compute(job, cache, folder, theta, tokenizer, chosen, val, beta, max_length, should_stop, progress)
    sample = sample.assign(influence=values)
    job.result = {**agreement(sample, DEFAULT_BAND), "key": key, "n_val": len(val), "sample_seed": job.influence["seed"]}


def _ids_and_logps(frame: pd.DataFrame) -> list:
    return [[str(i), float(c), float(r)] for i, c, r in zip(frame["id"], frame["chosen_logp"], frame["rejected_logp"])]


def _compute(job: Job, cache: Cache, folder: Path, theta, tokenizer, chosen: pd.DataFrame, val: pd.DataFrame,
             beta: float, max_length: int, should_stop, progress: bool) -> np.ndarray:  # fmt: skip
    """IF for every sampled pair: the saved parts, plus the missing ones computed now (raises Stopped)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    done = _read_parts(folder)
    todo = [s for s in range(0, len(chosen), PART) if s not in done]
    if todo:
        device = pick_device()
        model, params = trainable(load_model(theta, device, torch.float32), job.influence["params"])
        g_val = _validation_gradient(job, cache, folder, model, params, tokenizer, val, beta, max_length, device)
        rows = token_rows(tokenizer, as_pairs(chosen), max_length)
        ref = chosen[["chosen_logp", "rejected_logp"]].to_numpy(dtype=float)
        _stage(cache, job, "influence of the sampled pairs", sum(len(v) for v in done.values()), len(chosen))
        bar = tqdm(total=len(chosen), desc="influence", unit="pair", file=sys.stderr) if progress else None
        for start in todo:
            stop = min(start + PART, len(chosen))
            values = influences(model, params, rows[start:stop], ref[start:stop], beta, g_val, device,
                                should_stop=should_stop)  # fmt: skip
            if should_stop():
                raise Stopped()
            part = pd.DataFrame({"start": start, "idx": chosen["idx"].to_numpy()[start:stop], "influence": values})
            atomic_write_parquet(folder / f"part-{start:07d}.parquet", _arrow(part))
            done[start] = values
            job.progress(done=sum(len(v) for v in done.values()))
            save_job(cache, job)
            if bar:
                bar.update(stop - start)
        if bar:
            bar.close()
    return np.concatenate([done[s] for s in sorted(done)]) if done else np.zeros(0)


def _validation_gradient(job, cache, folder, model, params, tokenizer, val, beta, max_length, device):
    """∇L_val, computed once and saved beside the parts."""
    import torch

    path = folder / "validation_gradient.pt"
    if path.exists():
        return [g.to(device) for g in torch.load(path, map_location="cpu")]
    _stage(cache, job, f"validation gradient ({len(val)} pairs)", 0, None)
    rows = token_rows(tokenizer, as_pairs(val), max_length)
    keep = [i for i, r in enumerate(rows) if r is not None]
    if not keep:
        raise UserError("no validation pair has a reply token left after truncation; raise --max-length")
    ref = val[["chosen_logp", "rejected_logp"]].to_numpy(dtype=float)[keep]
    g_val = validation_gradient(model, params, [rows[i] for i in keep], ref, beta, device)
    tmp = folder / "validation_gradient.pt.tmp"
    torch.save([g.cpu() for g in g_val], tmp)
    tmp.replace(path)
    return g_val


def _read_parts(folder: Path) -> dict[int, np.ndarray]:
    out = {}
    for path in sorted(folder.glob("part-*.parquet")):
        part = pd.read_parquet(path)
        out[int(part["start"].iloc[0])] = part["influence"].to_numpy(dtype=float)
    return out


def _arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def _stage(cache: Cache, job: Job, text: str, done: int, total: int | None) -> None:
    job.progress(stage=text, done=done, total=total, eta_s=None, tokens_per_s=None)
    save_job(cache, job)


def influence_values(cache: Cache, job: Job) -> pd.DataFrame:
    """(idx, influence) of a finished influence job's sample, from its parts."""
    folder = cache.root / "influence" / str((job.result or {}).get("key", ""))
    frames = [pd.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))] if job.result else []
    return pd.concat(frames)[["idx", "influence"]] if frames else pd.DataFrame({"idx": [], "influence": []})


def latest_influence(cache: Cache, dataset: str, score_job: str) -> Job | None:
    """The most recently finished influence job over score job ``score_job``, or None."""
    done = [j for j in list_jobs(cache, dataset) if j.kind == INFLUENCE_JOB and j.source_job == score_job
            and j.state == "done" and j.result]  # fmt: skip
    return max(done, key=lambda j: j.finished or "") if done else None


def auto_band(cache: Cache, dataset: str, job_id: str | None = None) -> tuple[tuple[float, float], str]:
    """``--band auto``: the band the latest influence check of the score job chose, and an account of it for the
    selection's record and manifest."""
    source = pick_job(cache, dataset, job_id)
    check = latest_influence(cache, dataset, source.id)
    if check is None:
        raise UserError(f"--band auto needs an influence check of job {source.id}: run `python -m scoring influence "
                        f"{dataset}` first")  # fmt: skip
    best = check.result.get("auto_band")
    if not best:
        raise UserError(f"influence job {check.id} found no band keeping 50-65 % of its sample; give --band LO-HI")
    lo, hi = best["band"]
    note = (f"band {lo:g}-{hi:g} chosen by influence job {check.id}: overlap {best['overlap']} with TIF on "
            f"{check.result['n']} sampled pairs (chance {best['chance']})")
    return (float(lo), float(hi)), note
