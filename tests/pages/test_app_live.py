"""The app on the demo while it is being scored and after: a real worker process scores the generated demo with a
tiny random-weight model; the worker is paused (SIGSTOP) once the first parts have landed, every page is rendered
on the partial results, then it resumes, and every page is rendered again on the finished run (with its map).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from scoring.ingest.catalog import ingest
from scoring.ingest.demo import write_demo
from scoring.jobs.requests import map_request, score_request
from scoring.jobs.runner import enqueue, run
from scoring.passes.engine import PassConfig
from scoring.store.cache import Cache
from scoring.store.jobs import load_job
from scoring.train.sft import TrainConfig

ROOT = Path(__file__).resolve().parent.parent.parent
PAGES = ["overview", "inspect", "map", "select", "export", "jobs"]

pytestmark = pytest.mark.slow


def _render_all(cache: Cache) -> list[AppTest]:
    out = []
    for page in PAGES:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        if page != "overview":
            at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, f"{page}: {at.exception[0].value}"
        assert not at.error, f"{page}: {[e.value for e in at.error]}"
        out.append(at)
    return out


def _wait(predicate, what: str, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_pages_work_while_the_demo_is_scored_and_after(tmp_path, tiny_model, monkeypatch):
    cache = Cache(tmp_path / "cache")
    monkeypatch.setenv("DAVIR_CACHE", str(cache.root))
    monkeypatch.setenv("DAVIR_DEVICE", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = write_demo(tmp_path / "demo.jsonl", n_clean=90)
    ingest(str(path), cache, name="demo", progress=False)
    request = score_request(cache, "demo", str(tiny_model), pass_config=PassConfig(chunk_size=4, dtype="fp32"),
                            train=TrainConfig(precision="fp32", batch_size=16, micro_batch_size=16, epochs=0.25))
    job, _ = enqueue(cache, request)
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "scoring", "--cache", str(cache.root), "worker", "--once"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        parts = lambda: list(cache.parts_dir(load_job(cache, job.id).base_pass or "x").glob("part-*"))  # noqa: E731
        _wait(lambda: len(parts()) >= 2, "the first parts of the base pass")
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            during = _render_all(cache)
            banner = [i.value for i in during[0].info]
            assert any(" of " in b for b in banner), banner  # "k of N scored"
            scored = int(during[0].metric[1].value.replace(",", ""))
            total = int(during[0].metric[0].value.replace(",", ""))
            assert 0 < scored < total
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert worker.wait(600) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        _wait(lambda: load_job(cache, job.id).state == "done", "the job to finish", 60)
        run(cache, map_request(load_job(cache, job.id)).id) if enqueue(
            cache, map_request(load_job(cache, job.id)))[0].state != "done" else None
        after = _render_all(cache)
        assert int(after[0].metric[1].value.replace(",", "")) == total
        assert after[2].get("plotly_chart"), "the map is drawn once the layout exists"
        assert any(m.label == "Kept" for m in after[3].metric)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
        log.close()
