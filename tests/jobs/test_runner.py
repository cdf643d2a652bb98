"""Jobs across real processes: kill -9 and resume, cancel, readers beside a writer (background workers starting
and exiting: test_worker.py).

Workers run as real ``python -m scoring worker`` subprocesses; nothing is mocked. Every model here is a tiny
random-weight Llama and the device is forced to the CPU, with one torch thread per process (the machine may be
shared, and oversubscribed BLAS threads make a tiny model crawl).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from scoring import cli
from scoring.ingest import catalog
from scoring.jobs import runner
from scoring.jobs.requests import score_request
from scoring.jobs.worker import live_workers, runnable, worker
from scoring.passes.engine import PassConfig
from scoring.passes.runner import chunk_ranges
from scoring.scores.tables import score_table
from scoring.store.cache import Cache, read_json
from scoring.store.jobs import list_jobs, load_job, read_job
from scoring.store.parts import part_path
from scoring.train.sft import TrainConfig
from tests.tiny import build_model

ROOT = Path(__file__).resolve().parents[2]
N = 200
CHUNK = 4
N_CHUNKS = len(chunk_ranges(N, CHUNK))
# embed=False: with embeddings a finished score job queues a UMAP layout job, whose numba compile takes longer
# than everything tested here; the layout path is covered by tests/test_cli.py.
PASS = PassConfig(chunk_size=CHUNK, dtype="fp32", embed=False)
TRAIN = TrainConfig(precision="fp32", batch_size=16, micro_batch_size=16, epochs=0.25)
BASE_ONLY = ["loss_base", "ifd", "ppl"]  # no reference model to train
SCORE_COLUMNS = ["n_prompt_tokens", "n_response_tokens", "loss_base", "loss_ref", "davir", "rho", "ifd", "ppl"]


# ---------------------------------------------------------------- fixtures and helpers


pytestmark = pytest.mark.usefixtures("cpu_one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A somewhat bigger tiny model, so a pass over N examples takes a few seconds."""
    return build_model(tmp_path_factory.mktemp("big-model"), hidden=128, layers=4)


def records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "planet", "number", "capital", "reverse", "sort", "convert"]
    out = []
    for i in range(n):
        prompt = f"Task {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 16)))
        answer = f"Answer {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 24)))
        out.append({"id": f"ex-{i:04d}", "instruction": prompt, "input": "" if i % 3 else f"context {i}",
                    "output": answer})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "alpaca.json"
    path.write_text(json.dumps(records(N)))
    return path


def ingest(cache: Cache, path: Path, name: str = "alp") -> str:
    catalog.ingest(str(path), cache, name=name, progress=False)
    return name


class Workers:
    """Worker subprocesses started by a test; any still alive at the end are killed (by pid) and reaped."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(self, cache: Cache, *args: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "scoring", "--cache", str(cache.root), "worker", "--once", *args],
            cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        proc.log_path = self.tmp_path / f"worker-{len(self.procs)}.log"
        self.procs.append(proc)
        return proc

    def log(self, proc) -> str:
        return proc.log_path.read_text(errors="replace")[-3000:]

    def wait(self, proc, timeout: float = 120) -> None:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"worker {proc.pid} still running after {timeout} s:\n{self.log(proc)}")
        assert code == 0, f"worker exited {code}:\n{self.log(proc)}"

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.cleanup()


def parts(cache: Cache, key: str) -> list[Path]:
    return sorted(cache.parts_dir(key).glob("part-*.parquet"))


def wait_for(predicate, proc, what: str, timeout: float = 90, poll: float = 0.01):
    """Poll until predicate() is truthy (returns it); fails if the worker exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            value = predicate()
            if value:
                return value
            pytest.fail(f"worker exited ({proc.returncode}) before {what}:\n{proc.log_path.read_text()[-3000:]}")
        time.sleep(poll)
    pytest.fail(f"timed out waiting for {what}")


def base_parts_when(cache: Cache, job_id: str, at_least: int):
    """A predicate: (key, parts) once the job's base pass has ``at_least`` parts on disk."""

    def check():
        job = read_job(cache, job_id)
        key = job and job.base_pass
        if not key:
            return None
        found = parts(cache, key)
        return (key, found) if len(found) >= at_least else None

    return check


def complete(cache: Cache, key: str) -> bool:
    return bool((read_json(cache.pass_dir(key) / "manifest.json") or {}).get("complete"))


def strays(cache: Cache, key: str) -> list[str]:
    """Files in a parts folder that are neither finished parts nor hidden temp files a glob never matches."""
    bad = []
    for path in cache.parts_dir(key).iterdir():
        if path.name.startswith(".claim-"):
            bad.append(path.name)
        elif path.name.startswith("part-") and path.suffix == ".parquet":
            continue
        elif not (path.name.startswith(".") and path.name.endswith(".tmp")):
            bad.append(path.name)
    return bad


def check_parts(cache: Cache, key: str, n: int = N, chunk: int = CHUNK) -> None:
    """Exactly one readable part per chunk, covering every example once, and nothing a reader would trip on."""
    found = parts(cache, key)
    expected = [part_path(cache.parts_dir(key), a, b) for a, b in chunk_ranges(n, chunk)]
    assert found == expected
    idx = np.concatenate([pq.read_table(p, columns=["idx"])["idx"].to_numpy() for p in found])
    assert sorted(idx.tolist()) == list(range(n))
    assert strays(cache, key) == []
    assert complete(cache, key)


# ------------------------------------------------------- 1. kill -9 and resume (+ 5, 6: readers beside a writer)


def test_kill_9_mid_pass_then_resume_gives_identical_scores(tmp_path, big_model, dataset_file, workers):
    killed = Cache(tmp_path / "killed")
    name = ingest(killed, dataset_file)
    request = score_request(killed, name, model=str(big_model), pass_config=PASS, train=TRAIN)
    job, queued = runner.enqueue(killed, request)
    assert queued and job.state == "queued"

    proc = workers.start(killed)
    key, _ = wait_for(base_parts_when(killed, request.id, 3), proc, "3 parts of the base pass")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = parts(killed, key)
    assert not complete(killed, key), "the base pass finished before the kill: make the test's pass longer"
    assert 3 <= len(done_before) < N_CHUNKS, "the kill must land mid-pass"

    # What a kill -9 leaves: a job still marked running by a dead owner, shown as interrupted.
    record = read_job(killed, request.id)
    assert record.state == "running" and record.owner_pid == proc.pid
    (shown,) = [j for j in list_jobs(killed) if j.id == request.id]
    assert shown.state == "interrupted"
    assert [j.id for j in runnable(killed)] == [request.id]
    mtimes = {p.name: p.stat().st_mtime_ns for p in done_before}

    # Resume in a new worker while this process reads results as fast as it sensibly can: the reads see the
    # partial results (all ids, some rows scored, the rest NaN) and never get in the writer's way.
    ids = [r["id"] for r in records(N)]
    resumed = workers.start(killed)
    reads, partial_reads, counts = 0, 0, []
    while resumed.poll() is None:
        table, _ = score_table(killed, name)
        reads += 1
        assert table["id"].tolist() == ids  # every id, once, whatever has been scored
        scored = table["loss_base"].notna()
        assert (scored == table["ppl"].notna()).all() and (scored == table["ifd"].notna()).all()
        assert not (table["davir"].notna() & ~scored).any()
        counts.append((int(scored.sum()), int(table["loss_ref"].notna().sum())))
        if 0 < counts[-1][0] < N:
            partial_reads += 1
            assert table.loc[~scored, ["loss_base", "n_response_tokens", "davir"]].isna().all().all()
            assert np.isfinite(table.loc[scored, "loss_base"]).all()
        time.sleep(0.3)  # leave the writer some CPU on a small machine
    workers.wait(resumed)
    assert partial_reads >= 1, f"no read caught the pass midway ({reads} reads: {counts})"
    assert counts == sorted(counts)  # results only ever grow
    job = load_job(killed, request.id)
    assert job.state == "done", job.error
    assert job.base_pass == key
    # Parts written before the kill were kept, not recomputed.
    assert {p.name: p.stat().st_mtime_ns for p in done_before} == mtimes
    check_parts(killed, key)
    check_parts(killed, job.ref_pass)
    assert not (killed.jobs_dir() / f"{request.id}.lock").exists()
    assert live_workers(killed) == []

    # The same request, never interrupted, in a second cache (in this process, with the same thread count).
    clean = Cache(tmp_path / "clean")
    ingest(clean, dataset_file)
    again = score_request(clean, name, model=str(big_model), pass_config=PASS, train=TRAIN)
    assert again.id == request.id  # content-keyed: the cache folder plays no part
    runner.enqueue(clean, again)
    reference = runner.run(clean, again.id)
    assert reference.state == "done", reference.error
    assert (reference.base_pass, reference.ref_pass) == (job.base_pass, job.ref_pass)

    got, _ = score_table(killed, name)
    want, _ = score_table(clean, name)
    assert got["id"].tolist() == want["id"].tolist() == ids  # none missing, no duplicates, same order
    assert got["id"].is_unique
    assert list(got.columns) == list(want.columns)
    for column in SCORE_COLUMNS:
        assert got[column].notna().all(), f"{column} has unscored rows"
        np.testing.assert_array_equal(got[column].to_numpy(), want[column].to_numpy(), err_msg=column)
    assert got["flag"].tolist() == want["flag"].tolist()


# ---------------------------------------------------------------- 4. cancel


def test_cancel_a_queued_job_then_queue_it_again(tmp_path, tiny_model):
    cache = five_rows(tmp_path)
    request = score_request(cache, "five", model=str(tiny_model), scores=BASE_ONLY, pass_config=PASS)
    runner.enqueue(cache, request)

    job = runner.cancel(cache, request.id[:8])  # a unique prefix is enough
    assert job.state == "cancelled"
    assert load_job(cache, request.id).state == "cancelled"
    assert not (cache.jobs_dir() / f"{request.id}.lock").exists()
    assert runnable(cache) == []
    assert runner.cancel(cache, request.id).state == "cancelled"  # idempotent

    job, queued = runner.enqueue(cache, request)
    assert queued and job.state == "queued"
    assert load_job(cache, request.id).state == "queued"
    assert not (cache.jobs_dir() / f"{request.id}.cancel").exists()  # the old cancel does not stop it
    assert runner.run(cache, request.id).state == "done"
    assert runner.cancel(cache, request.id).state == "done"  # a finished job stays done


def test_cancel_a_running_job_keeps_its_parts_and_resumes(tmp_path, big_model, dataset_file, workers):
    cache = Cache(tmp_path / "cache")
    name = ingest(cache, dataset_file)
    request = score_request(cache, name, model=str(big_model), scores=BASE_ONLY, pass_config=PASS)
    runner.enqueue(cache, request)
    proc = workers.start(cache)
    key, _ = wait_for(base_parts_when(cache, request.id, 2), proc, "2 parts of the base pass")

    job = runner.cancel(cache, request.id)
    assert job.state == "running"  # the worker owns it: it stops after the chunk in flight
    workers.wait(proc)  # --once: nothing left to run after the cancel
    job = load_job(cache, request.id)
    assert job.state == "cancelled", (job, workers.log(proc))
    kept = parts(cache, key)
    assert 2 <= len(kept) < N_CHUNKS, "the cancel must land mid-pass"
    assert not complete(cache, key)
    assert [p for p in cache.parts_dir(key).iterdir() if p.name.startswith(".claim-")] == []
    assert not (cache.jobs_dir() / f"{request.id}.lock").exists()
    assert runnable(cache) == []
    mtimes = {p: p.stat().st_mtime_ns for p in kept}
    table, _ = score_table(cache, name)  # what was scored before the cancel is readable
    assert table["loss_base"].notna().sum() == sum(len(pq.read_table(p, columns=["idx"])) for p in kept)

    job, queued = runner.enqueue(cache, request)
    assert queued and job.state == "queued"
    assert not (cache.jobs_dir() / f"{request.id}.cancel").exists()
    job = runner.run(cache, request.id)
    assert job.state == "done", job.error
    assert {p: p.stat().st_mtime_ns for p in kept} == mtimes  # resumed, not redone
    check_parts(cache, key)
    table, _ = score_table(cache, name)
    assert table["loss_base"].notna().all() and table["ifd"].notna().all()


def five_rows(tmp_path) -> Cache:
    """A cache holding dataset `five`."""
    cache = Cache(tmp_path / "cache")
    path = tmp_path / "five.json"
    path.write_text(json.dumps(records(5)))
    ingest(cache, path, "five")
    return cache


def test_requeued_job_keeps_showing_the_parts_it_already_has(tmp_path, tiny_model):
    cache = five_rows(tmp_path)
    reference = tmp_path / "reference-model"
    shutil.copytree(tiny_model, reference)
    request = score_request(cache, "five", model=str(tiny_model), reference=str(reference),
                            scores=["loss_base", "davir"], pass_config=PASS)  # fmt: skip
    runner.enqueue(cache, request)
    shutil.rmtree(reference)  # the base pass completes, then the reference cannot be found
    job = runner.run(cache, request.id)
    assert job.state == "failed" and job.base_pass and complete(cache, job.base_pass)
    table, _ = score_table(cache, "five")
    assert table["loss_base"].notna().all() and table["davir"].isna().all()

    job, queued = runner.enqueue(cache, request)  # asked again: queued anew
    assert queued
    table, _ = score_table(cache, "five")  # raises UserError "no scores yet" today
    assert table["loss_base"].notna().all()


# ---------------------------------------------------------------- 7. job identity


def test_a_changed_key_is_a_new_run_and_the_same_request_the_same_job(tmp_path, tiny_model):
    cache = five_rows(tmp_path)

    def request(**config):
        return score_request(cache, "five", model=str(tiny_model), scores=BASE_ONLY,
                             pass_config=PassConfig(dtype="fp32", embed=False, **config))  # fmt: skip

    a, same, b = request(max_length=128), request(max_length=128), request(max_length=256)
    assert a.id == same.id
    assert a.id != b.id
    for r in (a, b):
        runner.enqueue(cache, r)
        assert runner.run(cache, r.id).state == "done"
    job_a, job_b = load_job(cache, a.id), load_job(cache, b.id)
    assert job_a.base_pass != job_b.base_pass
    assert parts(cache, job_a.base_pass) and parts(cache, job_b.base_pass)

    job, queued = runner.enqueue(cache, same)  # done: found, not queued again
    assert not queued and job.id == a.id and job.state == "done"
    assert len([j for j in list_jobs(cache) if j.kind == "score"]) == 2


# ---------------------------------------------------------------- 8. a failing job


def test_a_failing_job_records_its_error_and_the_worker_goes_on(tmp_path, tiny_model, capsys):
    cache = five_rows(tmp_path)
    doomed_model = tmp_path / "doomed-model"
    shutil.copytree(tiny_model, doomed_model)
    doomed = score_request(cache, "five", model=str(doomed_model), scores=BASE_ONLY, pass_config=PASS)
    fine = score_request(cache, "five", model=str(tiny_model), scores=BASE_ONLY, pass_config=PASS)
    runner.enqueue(cache, doomed)
    runner.enqueue(cache, fine)
    shutil.rmtree(doomed_model)  # gone between enqueue and run

    worker(cache, once=True)
    failed, done = load_job(cache, doomed.id), load_job(cache, fine.id)
    assert failed.state == "failed"
    assert str(doomed_model) in failed.error
    assert failed.finished
    assert done.state == "done", done.error
    assert runnable(cache) == []
    out = capsys.readouterr().out
    assert f"job {doomed.id} failed" in out and f"job {fine.id} done" in out
    # status shows the error; enqueueing the same request again queues it anew.
    assert cli.main(["--cache", str(cache.root), "status"]) == 0
    assert "error: " in capsys.readouterr().out
    again, queued = runner.enqueue(cache, doomed)
    assert queued and again.state == "queued" and again.error is None
