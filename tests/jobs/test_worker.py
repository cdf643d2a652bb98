"""Background workers as real ``python -m scoring`` processes: an identical request is answered without one,
``score`` without ``--wait`` starts one that finishes the job and exits when idle, two quick calls start one.

Split from test_runner.py (its helpers are shared); one torch thread per process, as there.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scoring import cli
from scoring.jobs.worker import live_workers
from scoring.scores.tables import score_table
from scoring.store.cache import Cache
from scoring.store.jobs import job_path, list_jobs
from tests.jobs.test_runner import ROOT, five_rows, parts, records, workers  # noqa: F401  (workers: a fixture)

pytestmark = pytest.mark.usefixtures("cpu_one_thread")  # tests/conftest.py


# ---------------------------------------------------------------- 2. an identical request is free


def test_identical_score_after_completion_returns_at_once(tmp_path, tiny_model, workers, capsys):
    cache = Cache(tmp_path / "cache")
    path = tmp_path / "five.json"
    path.write_text(json.dumps(records(5)))  # <= 5 rows: the layout needs no UMAP
    args = ["score", "five", "--model", str(tiny_model), "--max-length", "128", "--scores", "loss_base,ppl"]
    assert cli.main(["--cache", str(cache.root), "ingest", str(path), "--name", "five"]) == 0
    assert cli.main(["--cache", str(cache.root), *args, "--wait"]) == 0
    assert ": done" in capsys.readouterr().out
    (job,) = [j for j in list_jobs(cache, "five") if j.kind == "score"]
    watched = [*parts(cache, job.base_pass), cache.pass_dir(job.base_pass) / "manifest.json",
               job_path(cache, job.id)]  # fmt: skip
    before = {p: p.stat().st_mtime_ns for p in watched}

    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "scoring", "--cache", str(cache.root), *args, "--wait"],
        cwd=str(ROOT), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert f"job {job.id} already done" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in watched} == before  # nothing was rewritten
    assert elapsed < 30  # loose: interpreter start-up only, no model work
    assert live_workers(cache) == []  # and no worker was started for it


# ---------------------------------------------------------------- 3. score without --wait


def _reap(pid: int, timeout: float) -> bool:
    """Wait for our child ``pid`` to exit (reaping it); True when it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped
            return True
        if done:
            return True
        time.sleep(0.1)
    return False


def test_score_without_wait_starts_a_worker_that_finishes_and_exits(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv("DAVIR_WORKER_IDLE_EXIT", "1")
    cache = Cache(tmp_path / "cache")
    path = tmp_path / "five.json"
    path.write_text(json.dumps(records(5)))
    assert cli.main(["--cache", str(cache.root), "ingest", str(path), "--name", "five"]) == 0
    capsys.readouterr()
    pids: list[int] = []
    try:
        args = ["--cache", str(cache.root), "score", "five", "--model", str(tiny_model), "--max-length", "128",
                "--scores", "loss_base,ppl"]  # fmt: skip
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        assert "queued" in out and "started worker" in out, out
        pid = int(out.split("started worker ")[1].split(";")[0])
        pids.append(pid)

        deadline = time.monotonic() + 90
        while True:
            score_jobs = [j for j in list_jobs(cache, "five") if j.kind == "score"]
            assert len(score_jobs) == 1
            if score_jobs[0].state == "done":
                break
            assert score_jobs[0].state in ("queued", "running"), score_jobs[0]
            assert time.monotonic() < deadline, f"job not done in 90 s: {score_jobs[0]}"
            time.sleep(0.2)
        table, _ = score_table(cache, "five")
        assert table["loss_base"].notna().all()
        # The worker then runs the layout job it queued, idles for DAVIR_WORKER_IDLE_EXIT s and exits by itself.
        assert _reap(pid, 60), "the background worker did not exit after going idle"
        assert all(j.state == "done" for j in list_jobs(cache)), list_jobs(cache)
        assert live_workers(cache) == []
        assert list((cache.root / "workers").glob("*.json")) == []
    finally:
        for pid in pids + live_workers(cache):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            _reap(pid, 10)


def test_two_quick_score_calls_start_one_worker(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv("DAVIR_WORKER_IDLE_EXIT", "1")
    cache = five_rows(tmp_path)
    args = ["--cache", str(cache.root), "score", "five", "--model", str(tiny_model), "--scores", "loss_base"]
    outputs = []
    try:
        for _ in range(2):
            assert cli.main(args) == 0
            outputs.append(capsys.readouterr().out)
        assert "started worker" in outputs[0]
        assert "a worker is running" in outputs[1], outputs[1]
    finally:
        for out in outputs:
            if "started worker " in out:
                pid = int(out.split("started worker ")[1].split(";")[0])
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _reap(pid, 10)
