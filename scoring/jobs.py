"""Jobs: a queue of JSON records in ``<cache>/jobs/``, run by a worker process or in the foreground.

A job's id is a fingerprint of its request (dataset content, model weights, reference, passes, max length,
pass config, code version), so asking twice for the same thing finds the same job: done means "return at once",
queued or running means "wait for it", failed or cancelled means "queue it again" -- and the model passes it
reuses are keyed by content, so nothing finished is ever recomputed.

Concurrency without a database server:
- ``jobs/<id>.json`` is written atomically (temp + rename) by whoever owns the job; readers never see half a file.
- ``jobs/<id>.lock`` (created with O_EXCL, holds the owner's pid) says who owns it; a lock whose pid is dead is
  stale and is taken over, which is how a ``kill -9`` is recovered from.
- ``jobs/<id>.cancel`` is the only thing another process writes: the owner checks it between chunks.
- ``workers/<pid>.json`` lists running workers, so ``score`` starts one only when none is alive.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from . import data, models
from .errors import UserError
from .finetune import TrainConfig, train_reference
from .formatting import template_fingerprint
from .losses import SCORE_CODE_VERSION, PassConfig, PassProgress, fingerprint_fields, run_pass
from .scores import passes_needed
from .store import Cache, Claim, atomic_write_json, pid_alive, read_json, try_claim

ACTIVE = ("queued", "running")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _alive(pid: int | None) -> bool:
    return bool(pid) and pid_alive(int(pid))


# ---------------------------------------------------------------- records


def job_path(cache: Cache, job_id: str) -> Path:
    return cache.jobs_dir() / f"{job_id}.json"


def load_job(cache: Cache, job_id: str) -> dict:
    job = read_json(job_path(cache, job_id))
    if job is None:
        matches = [p.stem for p in cache.jobs_dir().glob(f"{job_id}*.json")]
        if len(matches) == 1:
            return read_json(job_path(cache, matches[0]))
        raise UserError(f"no job {job_id!r}; `python -m scoring status` lists the jobs")
    return job


def save_job(cache: Cache, job: dict) -> None:
    job["updated"] = now()
    atomic_write_json(job_path(cache, job["id"]), job)


def list_jobs(cache: Cache, dataset: str | None = None) -> list[dict]:
    jobs = [read_json(p) for p in sorted(cache.jobs_dir().glob("*.json"))]
    jobs = [j for j in jobs if j and (dataset is None or j.get("dataset") == dataset)]
    for job in jobs:  # a running job whose owner died is shown as what it is
        if job["state"] == "running" and not _alive(job.get("owner_pid")):
            job["state"], job["stage"] = "interrupted", f"{job.get('stage')} (worker died; will resume)"
    return sorted(jobs, key=lambda j: j["created"])


def score_request(
    cache: Cache,
    dataset: str,
    model: str | None = None,
    reference: str = "train",
    scores: list[str] | None = None,
    pass_config: PassConfig = PassConfig(),
    train: TrainConfig = TrainConfig(),
    trust_remote_code: bool = False,
) -> dict:
    """A job record for scoring ``dataset`` (not yet saved). Cheap: resolves fingerprints, loads no model."""
    from .scores import DEFAULT_SCORES

    meta = data.dataset_meta(cache, dataset)
    scores = list(scores or DEFAULT_SCORES)
    passes = sorted(passes_needed(scores))
    base = models.resolve(model, cache, convert=False)
    ref_fp = None
    if "ref" in passes and reference != "train":
        ref_fp = models.resolve(reference, cache, convert=False).fingerprint
    request = {
        "kind": "score",
        "dataset": dataset,
        "dataset_fingerprint": meta["fingerprint"],
        "model": model or models.DEFAULT_MODEL,
        "model_fingerprint": base.fingerprint,
        "reference": reference if "ref" in passes else None,
        "reference_fingerprint": ref_fp,
        "train": asdict(train) if "ref" in passes and reference == "train" else None,
        "passes": passes,
        "pass_config": fingerprint_fields(pass_config),
        "code_version": SCORE_CODE_VERSION,
        "trust_remote_code": trust_remote_code,
    }
    # The scores asked for are part of the id (another set is another job), though not of any pass key:
    # asking for ifd after ppl reuses the same passes and recomputes nothing.
    return {"id": _key({**request, "scores": sorted(scores)}), **request, "scores": scores}


def layout_request(cache: Cache, job: dict) -> dict:
    """A job record computing the 2-D UMAP layout of a finished score job's base-pass embeddings."""
    if not job.get("base_pass"):
        raise UserError(f"job {job['id']} has no base pass yet; score the dataset first")
    request = {"kind": "layout", "dataset": job["dataset"], "base_pass": job["base_pass"], "code_version": "1"}
    return {"id": _key(request), **request, "source_job": job["id"]}


def enqueue(cache: Cache, request: dict) -> tuple[dict, bool]:
    """Save the job unless an identical one is done or active. Returns (job, newly_queued)."""
    existing = read_json(job_path(cache, request["id"]))
    if existing and (existing["state"] == "done" or existing["state"] in ACTIVE):
        return existing, False
    job = {
        **request,
        # keep the passes it already has, so what is on disk stays visible while it waits
        **{k: existing[k] for k in ("base_pass", "ref_pass", "theta_pass", "val_pass") if existing and existing.get(k)},
        "state": "queued",
        "stage": "queued",
        "done": 0,
        "total": None,
        "tokens_per_s": None,
        "eta_s": None,
        "error": None,
        "owner_pid": None,
        "created": (existing or {}).get("created") or now(),
        "finished": None,
    }
    (cache.jobs_dir() / f"{job['id']}.cancel").unlink(missing_ok=True)
    save_job(cache, job)
    return job, True


def cancel(cache: Cache, job_id: str) -> dict:
    job = load_job(cache, job_id)
    if job["state"] in ("done", "failed", "cancelled"):
        return job
    (cache.jobs_dir() / f"{job['id']}.cancel").touch()
    lock = _try_lock(cache, job["id"])  # nobody owns it: cancel it ourselves
    if lock:
        try:
            job = load_job(cache, job["id"])
            job.update(state="cancelled", stage="cancelled", finished=now())
            save_job(cache, job)
        finally:
            lock.release()
    return job


# ---------------------------------------------------------------- ownership


def _try_lock(cache: Cache, job_id: str) -> Claim | None:
    return try_claim(cache.jobs_dir() / f"{job_id}.lock")


class Stopped(Exception):
    """The job was cancelled between two chunks."""


def run(cache: Cache, job_id: str, progress: bool = False) -> dict:
    """Own and run one job to the end (or until cancelled). Raises UserError if another process owns it."""
    lock = _try_lock(cache, job_id)
    if lock is None:
        raise UserError(f"job {job_id} is being run by another process; `status` follows it")
    try:
        job = load_job(cache, job_id)
        if job["state"] == "done":
            return job
        job.update(state="running", owner_pid=os.getpid(), error=None)
        save_job(cache, job)
        cancel_marker = cache.jobs_dir() / f"{job_id}.cancel"

        def should_stop() -> bool:
            return cancel_marker.exists()

        try:
            if job["kind"] == "layout":
                _run_layout(cache, job)
            elif job["kind"] == "pair_score":  # preference pairs: ref pass, DPO warm-ups, theta and val passes
                from .pair_passes import run_pair_job

                run_pair_job(cache, job, should_stop, progress, save_job, Stopped)
            else:
                _run_score(cache, job, should_stop, progress)
            job.update(state="done", stage="done", eta_s=0, finished=now())
            if job["kind"] == "score" and job["pass_config"].get("embed"):
                save_job(cache, job)
                enqueue(cache, layout_request(cache, job))  # the map follows every scoring run
        except Stopped:
            job.update(state="cancelled", stage="cancelled", finished=now())
        except UserError as error:
            job.update(state="failed", error=str(error), finished=now())
        except Exception as error:  # recorded for status; the worker keeps serving other jobs
            job.update(state="failed", error=f"{type(error).__name__}: {error}", finished=now())
            log = cache.logs_dir() / f"job-{job_id}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
        save_job(cache, job)
        return job
    finally:
        lock.release()


# ---------------------------------------------------------------- the work


def pass_key(dataset_fp: str, model: models.ModelRef, template_fp: str, config: PassConfig) -> str:
    return _key(
        {
            "dataset": dataset_fp,
            "model": model.fingerprint,
            "template": template_fp,
            "config": fingerprint_fields(config),
            "code_version": SCORE_CODE_VERSION,
        }
    )


def _fill_pass(cache, job, role, ref, tokenizer, examples, config, should_stop, progress) -> str:
    """Run (or resume, or reuse) one model pass; returns its key. Updates the job as chunks land."""
    key = pass_key(job["dataset_fingerprint"], ref, template_fingerprint(tokenizer), config)
    job[f"{role}_pass"] = key
    manifest_path = cache.pass_dir(key) / "manifest.json"
    manifest = read_json(manifest_path)
    if manifest and manifest.get("complete"):
        job.update(done=manifest["n_examples"], total=manifest["n_examples"])
        save_job(cache, job)
        return key
    device = models.pick_device()
    dtype = models.pick_dtype(device, config.dtype)
    manifest = {
        "key": key,
        "role": role,
        "dataset": job["dataset"],
        "dataset_fingerprint": job["dataset_fingerprint"],
        "model": models.model_card(ref),
        "template": template_fingerprint(tokenizer),
        "config": fingerprint_fields(config),
        "code_version": SCORE_CODE_VERSION,
        "dtype": models.dtype_name(dtype),
        "n_examples": len(examples),
        "complete": False,
        "created": now(),
    }
    atomic_write_json(manifest_path, manifest)
    job.update(stage=f"scoring ({role} model)", total=len(examples))
    save_job(cache, job)
    model = models.load_model(ref, device, dtype, job.get("trust_remote_code", False))
    bar = _bar(progress, len(examples), f"{role} pass")

    def on_progress(p: PassProgress) -> None:
        job.update(done=p.done, total=p.total, tokens_per_s=round(p.tokens_per_s, 1), eta_s=round(p.eta_s or 0))
        save_job(cache, job)
        if bar:
            bar.n = p.done
            bar.set_postfix(tok_s=f"{p.tokens_per_s:.0f}")
            bar.refresh()

    finished = run_pass(cache, key, model, tokenizer, examples, config, on_progress, should_stop)
    if bar:
        bar.close()
    if not finished:
        raise Stopped()
    manifest.update(complete=True, finished=now())
    atomic_write_json(manifest_path, manifest)
    return key


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ex", file=sys.stderr)


def _run_score(cache: Cache, job: dict, should_stop, progress: bool) -> None:
    meta = data.dataset_meta(cache, job["dataset"])
    if meta["fingerprint"] != job["dataset_fingerprint"]:
        raise UserError(f"dataset {job['dataset']!r} was replaced since this job was queued; score it again")
    job["stage"] = "loading model"
    save_job(cache, job)
    base = models.resolve(job["model"], cache)
    tokenizer = models.load_tokenizer(base, job.get("trust_remote_code", False))
    examples = data.load_examples(cache, job["dataset"], columns=["idx", "id", "messages"])
    config = PassConfig(**job["pass_config"])
    _fill_pass(cache, job, "base", base, tokenizer, examples, config, should_stop, progress)
    if "ref" not in job["passes"]:
        return
    if job["reference"] == "train":
        job.update(stage="training reference", done=0, total=None, tokens_per_s=None, eta_s=None)
        save_job(cache, job)
        started = time.perf_counter()

        def on_step(step: int, total: int) -> None:
            elapsed = time.perf_counter() - started
            job.update(done=step, total=total, eta_s=round(elapsed / max(step, 1) * (total - step)))
            save_job(cache, job)

        messages = [json.loads(m) for m in examples["messages"]]
        ref = train_reference(
            cache, base, tokenizer, messages, job["dataset_fingerprint"], template_fingerprint(tokenizer),
            config.max_length, TrainConfig(**job["train"]), models.pick_device(), on_step, should_stop,
        )  # fmt: skip
        if ref is None:
            raise Stopped()
    else:
        ref = models.resolve(job["reference"], cache)
    job["reference_model"] = models.model_card(ref)
    ref_config = replace(config, embed=False, alone=False)
    _fill_pass(cache, job, "ref", ref, tokenizer, examples, ref_config, should_stop, progress)


def _run_layout(cache: Cache, job: dict) -> None:
    from .layout import compute_layout

    job["stage"] = "computing UMAP layout"
    save_job(cache, job)
    compute_layout(cache, job["base_pass"])


# ---------------------------------------------------------------- workers


def _workers_dir(cache: Cache) -> Path:
    return cache.root / "workers"


def live_workers(cache: Cache) -> list[int]:
    alive = []
    for path in _workers_dir(cache).glob("*.json"):
        pid = int(path.stem)
        if _alive(pid):
            alive.append(pid)
        else:
            path.unlink(missing_ok=True)
    return alive


def ensure_worker(cache: Cache) -> int | None:
    """Start a background worker unless one is alive. Returns the new worker's pid (None if one was running)."""
    if live_workers(cache):
        return None
    from .env import worker_idle_exit

    cache.logs_dir().mkdir(parents=True, exist_ok=True)
    log = open(cache.logs_dir() / "worker.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoring", "--cache", str(cache.root), "worker", "--idle-exit", str(worker_idle_exit())],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # outlives the command that started it
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    # Registered now, not when its imports finish: a second `score` a moment later must see it.
    atomic_write_json(_workers_dir(cache) / f"{proc.pid}.json", {"pid": proc.pid, "started": now()})
    return proc.pid


def runnable(cache: Cache) -> list[dict]:
    """Queued jobs, and running ones whose owner died (to resume), oldest first."""
    jobs = [read_json(p) for p in cache.jobs_dir().glob("*.json")]
    jobs = [j for j in jobs if j and (j["state"] == "queued" or (j["state"] == "running" and not _alive(j.get("owner_pid"))))]
    return sorted(jobs, key=lambda j: j["created"])


def worker(cache: Cache, idle_exit: float = 0.0, poll: float = 1.0, once: bool = False) -> None:
    """Run queued jobs until told to stop (idle_exit > 0: exit after that many idle seconds)."""
    me = _workers_dir(cache) / f"{os.getpid()}.json"
    atomic_write_json(me, {"pid": os.getpid(), "started": now()})
    try:
        idle_since = time.monotonic()
        while True:
            ran = False
            for job in runnable(cache):
                try:
                    result = run(cache, job["id"])
                except UserError:  # someone else took it first
                    continue
                print(f"{now()} job {job['id']} {result['state']} {result.get('error') or ''}", flush=True)
                ran = True
                break
            if once and not ran:
                return
            if ran:
                idle_since = time.monotonic()
            elif idle_exit and time.monotonic() - idle_since > idle_exit:
                return
            else:
                time.sleep(poll)
    finally:
        me.unlink(missing_ok=True)
