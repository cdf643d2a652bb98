"""Jobs: a queue of records in ``<cache>/jobs/`` (scoring.store.jobs), run by a worker process or in the foreground.

Asking twice for the same thing finds the same job (its id is a fingerprint of the request,
scoring.jobs.requests): done means "return at once", queued or running means "wait for it", failed or cancelled
means "queue it again" -- and the passes and checkpoints it reuses are keyed by content, so nothing finished is
ever recomputed.

Concurrency without a database server:
- ``jobs/<id>.json`` is written atomically (temp + rename) by whoever owns the job; readers never see half a file.
- ``jobs/<id>.lock`` is held with an flock by the job's owner (scoring.store.claims). The kernel drops it when the
  owner dies, however it dies, so a job whose worker was ``kill -9``-ed is free to be resumed at once.
- ``jobs/<id>.cancel`` is the only thing another process writes: the owner checks it between chunks and steps.
- ``workers/<pid>.json`` lists running workers (scoring.jobs.worker), so ``score`` starts one only when none is
  alive.

Many processes, one job (``torchrun`` / ``accelerate launch`` ... ``score NAME --wait``, scoring.ranks): rank 0
holds the lock and writes the record; every rank runs a score or evaluation job's stages together (a pass shared
out by chunks, fine-tunes data-parallel); a map or influence job runs on rank 0 while the others wait. A rank that
fails exits with an error, so the launcher stops the others instead of leaving them waiting.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import replace

from scoring import ranks
from scoring.errors import UserError
from scoring.jobs import memory
from scoring.jobs.evaluate import EVALUATE_JOB, run_evaluate_job
from scoring.jobs.influence import INFLUENCE_JOB, run_influence_job
from scoring.jobs.pairs import run_pair_job
from scoring.jobs.requests import MAP_JOB, map_request
from scoring.jobs.score import run_score_job
from scoring.jobs.steps import Stopped
from scoring.scores.embedding_map import compute_map
from scoring.store.cache import Cache
from scoring.store.claims import Claim, try_claim
from scoring.store.jobs import ACTIVE, FINISHED, Job, cancel_marker, load_job, now, read_job, save_job
from scoring.train import sharded


def enqueue(cache: Cache, request: Job) -> tuple[Job, bool]:
    """Save the job unless an identical one is done or active. Returns (job, newly_queued)."""
    existing = read_job(cache, request.id)
    if existing and (existing.state == "done" or existing.state in ACTIVE):
        return existing, False
    # keep the passes it already has, so what is on disk stays visible while it waits
    kept = existing.pass_keys() if existing else {}
    job = replace(request, state="queued", stage="queued", done=0, total=None, tokens_per_s=None, eta_s=None,
                  error=None, owner_pid=None, finished=None, created=(existing and existing.created) or now())
    for role, key in kept.items():
        job.set_pass_key(role, key)
    cancel_marker(cache, job.id).unlink(missing_ok=True)
    save_job(cache, job)
    return job, True


def _lock(cache: Cache, job_id: str) -> Claim | None:
    return try_claim(cache.jobs_dir() / f"{job_id}.lock")


def cancel(cache: Cache, job_id: str) -> Job:
    """Ask a queued or running job to stop (a running one stops after the chunk in flight)."""
    job = load_job(cache, job_id)
    if job.state in FINISHED:
        return job
    cancel_marker(cache, job.id).touch()
    lock = _lock(cache, job.id)  # nobody owns it: cancel it ourselves
    if lock:
        try:
            job = load_job(cache, job.id)
            job.progress(state="cancelled", stage="cancelled", finished=now())
            save_job(cache, job)
        finally:
            lock.release()
    return job


RANKED_KINDS = ("score", "pair_score", EVALUATE_JOB)  # kinds whose stages every rank runs; the rest run on rank 0 alone


def run(cache: Cache, job_id: str, progress: bool = False) -> Job:
    """Own and run one job to the end (or until cancelled). Raises UserError if another process owns it.

    Under a launcher every rank calls it: rank 0 holds the job's lock and writes its record; the stages of a score
    or evaluation job run on every rank, any other job on rank 0 while the rest wait. Returns the job as rank 0
    left it."""
    main = ranks.join().main
    ranks.barrier()  # rank 0 has saved the request before anyone reads it (free for one process)
    lock = _lock(cache, job_id) if main else None
    if not ranks.all_true(lock is not None or not main):
        raise UserError(f"job {job_id} is being run by another process; `status` follows it")
    try:
        job = load_job(cache, job_id)
        if job.state == "done":
            return job
        job.progress(state="running", owner_pid=os.getpid(), processes=ranks.current().world, error=None)
        save_job(cache, job)
        memory.bound_heap()  # a job's peak memory follows its configuration, not the heap's history
        if main or job.kind in RANKED_KINDS:
            _run_owned(cache, job, progress)
            save_job(cache, job)
        ranks.barrier()
        return job if main else load_job(cache, job_id)
    finally:
        if lock:
            lock.release()


def _run_owned(cache: Cache, job: Job, progress: bool) -> None:
    """Run the job we hold the lock of; its outcome (done, cancelled, failed with the error) lands in ``job``."""
    marker = cancel_marker(cache, job.id)

    def should_stop() -> bool:
        return marker.exists()

    try:
        for train in (job.train, job.dpo, (job.evaluation or {}).get("train")):
            if train:  # DAVIR_FSDP=1 with LoRA is refused now, not after hours of passes
                sharded.wanted(train.get("method", "full"))
        if job.kind == MAP_JOB:
            job.progress(stage="computing the UMAP map")
            save_job(cache, job)
            compute_map(cache, job.base_pass)
        elif job.kind == EVALUATE_JOB:
            run_evaluate_job(cache, job, should_stop, progress)
        elif job.kind == INFLUENCE_JOB:
            run_influence_job(cache, job, should_stop, progress)
        elif job.is_pair:
            run_pair_job(cache, job, should_stop, progress)
        else:
            run_score_job(cache, job, should_stop, progress)
        job.progress(state="done", stage="done", eta_s=0, finished=now())
        if job.kind == "score" and job.pass_config.get("embed"):
            save_job(cache, job)
            enqueue(cache, map_request(job))  # the map follows every scoring run
    except Stopped:
        job.progress(state="cancelled", stage="cancelled", finished=now())
    except UserError as error:
        job.progress(state="failed", error=str(error), finished=now())
        _fail_launch(cache, job)
    except Exception as error:  # recorded for status; the worker keeps serving other jobs
        job.progress(state="failed", error=f"{type(error).__name__}: {error}", finished=now())
        log = cache.logs_dir() / f"job-{job.id}.log"  # appended: a worker's job log holds the job's output
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"[rank {ranks.current().rank}] " if ranks.current().many else "")
            fh.write(traceback.format_exc())
        _fail_launch(cache, job)


def _fail_launch(cache: Cache, job: Job) -> None:
    """Under a launcher a failed rank raises (after rank 0 has recorded the failure): its process exits with an
    error and the launcher stops the other ranks, which may be waiting for it at a collective step."""
    if ranks.current().many:
        save_job(cache, job)
        raise UserError(f"job {job.id} failed on rank {ranks.current().rank}: {job.error}")
