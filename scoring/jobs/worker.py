"""Worker processes: run queued jobs in the background, and resume jobs whose worker died.

``score`` (without ``--wait``) queues a job and starts one background worker unless one is alive; the worker
serves the queue and exits after ``$DAVIR_WORKER_IDLE_EXIT`` idle seconds. Each registers itself as
``<cache>/workers/<pid>.json``; a file whose process is gone is removed by the next look.

Logs: while a worker runs a job, everything the job writes (print, logging, progress bars, C extensions, child
processes) goes to that job's own ``<cache>/logs/job-<id>.log`` (appended); the worker's own lines -- one per job
finished -- stay in ``logs/worker.log``, where a background worker's output goes.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from scoring.env import worker_idle_exit
from scoring.errors import UserError
from scoring.jobs.runner import run
from scoring.store.cache import Cache, atomic_write_json
from scoring.store.claims import pid_alive
from scoring.store.jobs import WAITING, Job, list_jobs, now


def _workers_dir(cache: Cache) -> Path:
    return cache.root / "workers"


def live_workers(cache: Cache) -> list[int]:
    alive = []
    for path in _workers_dir(cache).glob("*.json"):
        pid = int(path.stem)
        if pid_alive(pid):
            alive.append(pid)
        else:
            path.unlink(missing_ok=True)
    return alive


def ensure_worker(cache: Cache) -> int | None:
    """Start a background worker unless one is alive. Returns the new worker's pid (None if one was running)."""
    if live_workers(cache):
        return None
    cache.logs_dir().mkdir(parents=True, exist_ok=True)
    log = open(cache.logs_dir() / "worker.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoring", "--cache", str(cache.root), "worker", "--idle-exit", str(worker_idle_exit())],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # outlives the command that started it
        cwd=str(Path(__file__).resolve().parents[2]),  # the repo root: `-m scoring` finds the package
    )
    # Registered now, not when its imports finish: a second `score` a moment later must see it.
    atomic_write_json(_workers_dir(cache) / f"{proc.pid}.json", {"pid": proc.pid, "started": now()})
    return proc.pid


def job_log_path(cache: Cache, job_id: str) -> Path:
    return cache.logs_dir() / f"job-{job_id}.log"


@contextlib.contextmanager
def job_output(cache: Cache, job_id: str):
    """Send this process's stdout and stderr -- Python's streams and file descriptors 1 and 2, so output from C
    code and child processes too -- to the job's own log while the block runs; restore both after."""
    path = job_log_path(cache, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield path
        finally:
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def runnable(cache: Cache) -> list[Job]:
    """Queued jobs, and running ones whose owner died (to resume), oldest first."""
    return [j for j in list_jobs(cache) if j.state in WAITING]


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
                    with job_output(cache, job.id):
                        result = run(cache, job.id)
                except UserError:  # someone else took it first
                    continue
                print(f"{now()} job {job.id} {result.state} {result.error or ''}", flush=True)
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
