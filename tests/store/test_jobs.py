"""scoring.store.jobs: the typed Job record, its JSON file (flat, readable by older and newer versions), lookups by
prefix, and how a running job whose worker died is shown."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scoring.errors import UserError
from scoring.store.cache import atomic_write_json
from scoring.store.jobs import ROLES, Job, job_path, list_jobs, load_job, read_job, save_job
from tests import synthetic


def _job(job_id: str = "abc123def4567890", **fields) -> Job:
    base = dict(id=job_id, kind="score", dataset="d", dataset_fingerprint="fp1", model="tiny", scores=["davir", "ifd"],
                passes=["base", "ref"], pass_config={"max_length": 128}, reference="train", train={"epochs": 1.0},
                base_pass="b" * 16, created="2024-01-01T00:00:00.000+00:00")  # fmt: skip
    base.update(fields)
    return Job(**base)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_job_round_trips_through_its_file(cache):
    job = _job(state="running", stage="scoring (base model)", done=12, total=40, tokens_per_s=1.5e3, owner_pid=7,
               theta_model={"name": "m", "fingerprint": "x"})  # fmt: skip
    save_job(cache, job)
    assert job.updated  # stamped on save
    loaded = load_job(cache, job.id)
    assert isinstance(loaded, Job) and loaded == job
    assert loaded.scores == ["davir", "ifd"] and loaded.pass_config == {"max_length": 128} and loaded.done == 12
    record = json.loads(job_path(cache, job.id).read_text())
    assert record["base_pass"] == "b" * 16 and record["state"] == "running"  # one flat object, as before
    assert set(record) == set(job.to_dict())
    assert Job.from_dict(record) == job


def test_load_job_by_unique_prefix(cache):
    a, b = _job("abc1230000000000"), _job("abc9990000000000", dataset="e")
    save_job(cache, a)
    save_job(cache, b)
    assert load_job(cache, "abc123").id == a.id
    assert load_job(cache, "abc9").dataset == "e"
    assert load_job(cache, b.id) == b
    with pytest.raises(UserError, match="no job 'abc'"):
        load_job(cache, "abc")  # two match
    with pytest.raises(UserError, match="no job 'zzz'"):
        load_job(cache, "zzz")
    assert read_job(cache, "zzz") is None


def test_an_old_record_loads_ignoring_unknown_keys(cache):
    """A flat record from an earlier version (synthetic.build writes one like `score` did) plus keys this version
    does not know."""
    synthetic.build(cache.root, n=20, dataset="old")
    path = next(cache.jobs_dir().glob("*.json"))
    record = json.loads(path.read_text())
    record.update(retired_field=1, stage_history=["a", "b"])
    atomic_write_json(path, record)

    job = load_job(cache, path.stem)
    assert not hasattr(job, "retired_field") and "stage_history" not in job.to_dict()
    assert job.kind == "score" and job.dataset == "old" and job.state == "done" and job.total == 20
    assert job.pass_key("base") == record["base_pass"] and job.pass_key("ref") == record["ref_pass"]
    assert job.pass_keys() == {"base": record["base_pass"], "ref": record["ref_pass"]}
    assert job.pass_key("theta") is None and job.theta_pass is None and not job.is_pair and not job.active
    assert job.scores == ["davir", "rho", "ifd", "ppl"]
    assert [j.id for j in list_jobs(cache)] == [job.id]


def test_a_minimal_record_gets_the_defaults(cache):
    atomic_write_json(job_path(cache, "m1"), {"id": "m1", "kind": "layout", "dataset": "d", "base_pass": "k"})
    job = load_job(cache, "m1")
    assert job.state == "queued" and job.scores == [] and job.passes == [] and job.pass_config == {}
    assert job.pass_keys() == {"base": "k"}


def test_list_jobs_shows_a_running_job_with_a_dead_owner_as_interrupted(cache):
    save_job(cache, _job("dead000000000000", state="running", stage="scoring (reference)", owner_pid=_dead_pid(),
                         created="2024-01-01T00:00:02"))  # fmt: skip
    save_job(cache, _job("live000000000000", state="running", stage="training", owner_pid=os.getpid(),
                         created="2024-01-01T00:00:01"))  # fmt: skip
    save_job(cache, _job("nopid00000000000", state="running", owner_pid=None, created="2024-01-01T00:00:03"))
    save_job(cache, _job("done000000000000", state="done", stage="done", owner_pid=_dead_pid(),
                         created="2024-01-01T00:00:00"))  # fmt: skip
    save_job(cache, _job("other00000000000", dataset="other", state="queued", created="2024-01-01T00:00:04"))

    jobs = list_jobs(cache, "d")
    assert [j.id for j in jobs] == ["done000000000000", "live000000000000", "dead000000000000", "nopid00000000000"]
    state = {j.id: j.state for j in jobs}
    assert state == {"done000000000000": "done", "live000000000000": "running", "dead000000000000": "interrupted",
                     "nopid00000000000": "interrupted"}  # fmt: skip
    dead = jobs[2]
    assert dead.stage == "scoring (reference) (worker died; will resume)"
    assert load_job(cache, dead.id).state == "running"  # shown as interrupted, never saved so
    assert [j.id for j in list_jobs(cache)][-1] == "other00000000000"
    assert list_jobs(cache, "nothing") == []


def test_pass_keys_by_role(cache):
    job = _job(base_pass=None, kind="pair_score")
    assert ROLES == ("base", "ref", "theta", "val")
    assert job.pass_keys() == {} and job.is_pair
    job.set_pass_key("theta", "t" * 16)
    job.set_pass_key("ref", "r" * 16)
    assert job.theta_pass == "t" * 16 and job.pass_key("ref") == "r" * 16
    assert job.pass_keys() == {"ref": "r" * 16, "theta": "t" * 16}  # in ROLES order
    for bad in ("reference", "layout", "", "BASE"):
        with pytest.raises(ValueError, match="unknown pass role"):
            job.pass_key(bad)
        with pytest.raises(ValueError, match="unknown pass role"):
            job.set_pass_key(bad, "k")
    save_job(cache, job)
    assert load_job(cache, job.id).pass_keys() == {"ref": "r" * 16, "theta": "t" * 16}


def test_progress_sets_known_fields_only():
    job = _job()
    job.progress(stage="scoring", done=5, total=9, eta_s=1.25)
    assert (job.stage, job.done, job.total, job.eta_s) == ("scoring", 5, 9, 1.25)
    with pytest.raises(AttributeError, match="no field 'speed'"):
        job.progress(speed=3)
    assert job.active and _job(state="running").active  # queued (the default) and running are active
    assert not any(_job(state=s).active for s in ("done", "failed", "cancelled", "interrupted"))
    assert job.request()["passes"] == ["base", "ref"] and "state" not in job.request()
