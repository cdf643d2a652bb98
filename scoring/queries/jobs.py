"""What the app reads about jobs: the progress banner of a dataset being scored, and a job's own log."""
from __future__ import annotations

from dataclasses import dataclass

from scoring.ingest.catalog import dataset_meta
from scoring.store.cache import Cache
from scoring.store.jobs import list_jobs


@dataclass(frozen=True)
class Progress:
    """What the banner says while a dataset is being scored."""

    active: bool
    stage: str
    done: int
    total: int
    eta_s: float | None
    job_id: str | None


def progress(cache: Cache, dataset: str) -> Progress:
    """The dataset's active job (if any): stage and k of N (examples of the current pass, or training steps)."""
    active = [j for j in list_jobs(cache, dataset) if j.unfinished]
    if not active:
        return Progress(False, "", 0, 0, None, None)
    job = active[-1]
    total = int(job.total or dataset_meta(cache, dataset)["n_rows"])
    return Progress(True, str(job.stage or job.state), int(job.done or 0), total, job.eta_s, job.id)


def log_tail(cache: Cache, job_id: str | None = None, lines: int = 30) -> str:
    """The last lines of a job's own log (what it wrote while a worker ran it, and its traceback when it failed);
    without a job id, of the worker log. A job never shows another's lines: "" when it has no log (it has not run
    on a worker yet, or it ran in a terminal, where its output went)."""
    path = cache.logs_dir() / (f"job-{job_id}.log" if job_id else "worker.log")
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])
