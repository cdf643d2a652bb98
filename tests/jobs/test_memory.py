"""A job's memory: each step's peak resident set is recorded beside its time, and status shows a running job's."""
from __future__ import annotations

import numpy as np

from scoring.cli.commands import _job_line
from scoring.jobs import memory
from scoring.store.jobs import Job


def test_the_peak_follows_an_allocation_and_resets():
    memory.reset_peak()
    before = memory.peak_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
    during = memory.peak_mb()
    assert during - before > 50 and memory.rss_mb() >= during - 70
    del block
    if memory.reset_peak():  # Linux: a new peak starts from what is resident now
        assert memory.peak_mb() < during - 50


def test_status_shows_a_running_jobs_memory():
    job = Job(id="abc", kind="score", dataset="d", state="running", stage="training reference", rss_mb=2048.0)
    assert "RSS 2.0 GB" in _job_line(job)
    job.state = "done"
    assert "RSS" not in _job_line(job)
