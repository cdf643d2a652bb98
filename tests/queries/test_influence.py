"""scoring.queries.influence (the Pairs page's warm-up report and influence check) against a synthetic scored pair
cache with a finished influence job (tests/synthetic.add_influence), each checked against the records it reads."""
from __future__ import annotations

import math
import os
import shlex
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from scoring.errors import UserError
from scoring.queries import influence as queries
from scoring.scores import views
from scoring.scores.tables import score_table
from scoring.selection.influence import AGREEMENT_SCORES, COMBINED
from scoring.selection.saved import load_selection
from scoring.store.jobs import Job, list_jobs, save_job
from tests import synthetic
from tests.helpers import ok

N = 100
SAMPLE = 48


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic.build_pairs(tmp_path_factory.mktemp("qi") / "cache", n=N, dataset="pairs")


@pytest.fixture(scope="module")
def check(cache) -> Job:
    return synthetic.add_influence(cache.root, "pairs", sample=SAMPLE, seed=0)


@pytest.fixture(scope="module")
def view(cache, check):
    return views.score_view(cache, "pairs")


def test_warmup_frame_has_a_row_per_warmup_and_pairs(view):
    frame = queries.warmup_frame(view.job)
    assert list(frame.columns) == queries.WARMUP_COLUMNS
    assert frame[["warm-up", "trained from", "pairs"]].values.tolist() == [
        ["π_θ", "π_ref", "its training pairs"], ["π_θ", "π_ref", "validation pairs (unseen)"],
        ["θ_val", "π_θ", "validation pairs (its training pairs)"]]  # fmt: skip
    w = synthetic.WARMUPS
    for (_, row), stats in zip(frame.iterrows(), (w["theta"]["train"], w["theta"]["validation"], w["val"]["train"])):
        assert row["n"] == stats["after"]["n"]
        for label, key in queries.STATS:
            assert row[f"{label} before"] == stats["before"][key] and row[f"{label} after"] == stats["after"][key]
    assert frame["reward accuracy before"].iloc[0] == 0.0 < frame["reward accuracy after"].iloc[0]


def test_warmup_frame_without_a_report_is_empty_and_missing_numbers_are_nan():
    job = Job(id="x", kind="pair_score", dataset="pairs")
    assert queries.warmup_frame(job).empty and list(queries.warmup_frame(job).columns) == queries.WARMUP_COLUMNS
    assert queries.timings_frame(job).empty
    none = {"n": 0, "reward_accuracy": None, "reward_margin": None, "preference_accuracy": None}
    job.warmups = {"val": {"start": "ref", "n_pairs": 0, "train": {"before": none, "after": none}}}
    frame = queries.warmup_frame(job)
    assert frame[["warm-up", "trained from"]].values.tolist() == [["θ_val", "π_ref"]]
    assert frame.iloc[0, 4:].isna().all()


def test_timings_frame_lists_each_step(view):
    frame = queries.timings_frame(view.job)
    assert dict(zip(frame["step"], frame["seconds"])) == synthetic.TIMINGS
    assert frame["peak MB"].isna().all()  # a job recorded before peak memory was
    peaks = {step: 100.0 + i for i, step in enumerate(synthetic.TIMINGS)}
    frame = queries.timings_frame(replace(view.job, peak_mb=peaks))
    assert dict(zip(frame["step"], frame["peak MB"])) == peaks


def test_influence_check_is_the_latest_finished_one_of_the_view_job(cache, view, check):
    assert queries.influence_check(cache, view).id == check.id
    assert queries.pending_influence(cache, view) is None
    later = replace(check, id="laterdone0000000", finished="9999")
    other = replace(check, id="otherjob00000000", source_job="someotherjob", finished="99999")
    running = replace(check, id="running000000000", state="running", stage="influence of the sampled pairs",
                      done=5, total=SAMPLE, owner_pid=os.getpid(), result=None, created="9999")  # fmt: skip
    for job in (later, other, running):
        save_job(cache, job)
    try:
        assert queries.influence_check(cache, view).id == later.id
        pending = queries.pending_influence(cache, view)
        assert pending.id == running.id and (pending.done, pending.total) == (5, SAMPLE)
    finally:
        for job in (later, other, running):
            (cache.jobs_dir() / f"{job.id}.json").unlink()
    assert queries.influence_check(cache, view).id == check.id


def test_check_facts_and_agreement_frame_follow_the_report(check):
    r = check.result
    facts = queries.check_facts(check)
    assert (facts["n"], facts["kept"], facts["chance"], facts["band"]) == (SAMPLE, r["kept"], r["chance"], [12.0, 88.0])
    assert (facts["seed"], facts["sample"], facts["n_val"]) == (0, SAMPLE, 13)
    assert facts["auto_band"] == r["auto_band"] and facts["auto_band"] is not None
    frame = queries.agreement_frame(check)
    assert list(frame["name"]) == [*AGREEMENT_SCORES, COMBINED]
    assert frame["score"].iloc[-1] == "LossDiff-IRM (combined)"
    assert frame["spearman with IF"].tolist() == [r["spearman"][s] for s in frame["name"]]
    assert frame["overlap with TIF"].tolist() == [r["overlap"][s] for s in frame["name"]]
    assert np.allclose(frame["overlap above chance"], frame["overlap with TIF"] - r["chance"])
    assert frame.set_index("name").loc["lossdiff", "spearman with IF"] < -0.3  # the fixture's IF tracks −lossdiff


def test_agreement_frame_shows_missing_numbers_as_nan(check):
    result = {**check.result, "spearman": {**check.result["spearman"], "margin_base": None}}
    frame = queries.agreement_frame(replace(check, result=result)).set_index("name")
    assert math.isnan(frame.loc["margin_base", "spearman with IF"])
    assert frame.loc["margin_base", "overlap with TIF"] == check.result["overlap"]["margin_base"]


def test_influence_points_join_if_to_the_view_scores(cache, view, check):
    points = queries.influence_points(cache, view, check)
    parts = sorted((cache.root / "influence" / check.result["key"]).glob("part-*.parquet"))
    assert len(parts) == math.ceil(SAMPLE / 16)
    written = pd.concat([pd.read_parquet(p) for p in parts])
    table = score_table(cache, "pairs", view.job.id)[0].set_index("idx")
    expected = written.merge(table.reset_index(), on="idx")
    assert len(points) == SAMPLE * len(AGREEMENT_SCORES)
    assert not points.duplicated(["id", "score"]).any() and set(points["score"]) == set(AGREEMENT_SCORES)
    for name in AGREEMENT_SCORES:
        mine = points[points["score"] == name].set_index("id").sort_index()
        theirs = expected.set_index("id").sort_index()
        assert list(mine.index) == list(theirs.index)
        assert np.allclose(mine["influence"], theirs["influence"]) and np.allclose(mine["value"], theirs[name])


def test_auto_band_command_saves_the_auto_band(cache, view, check):
    command = queries.auto_band_command(cache, view, "auto-sel")
    assert "--rule lossdiff-irm --band auto --budget 100%" in command and command.endswith("--save auto-sel")
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "scoring"]
    ok(*argv[3:])
    record, selection = load_selection(cache, "pairs", "auto-sel")
    lo, hi = check.result["auto_band"]["band"]
    assert record["rule"] == f"band:{lo:g}-{hi:g}" and check.id in str(record)
    assert 0 < len(selection.kept_ids) < N


def test_start_influence_queues_the_job_and_asks_for_a_worker(cache, view, check, monkeypatch):
    asked = []
    monkeypatch.setattr(queries, "ensure_worker", lambda c: asked.append(c.root) or 4242)
    job = queries.start_influence(cache, "pairs", view.job.id, sample=32, seed=3)
    try:
        assert job.state == "queued" and job.kind == "influence" and job.source_job == view.job.id
        assert job.influence == {"sample": 32, "seed": 3, "params": "auto"}
        assert [j.id for j in list_jobs(cache, "pairs") if j.kind == "influence" and j.unfinished] == [job.id]
        assert asked == [cache.root]
        assert queries.pending_influence(cache, view).id == job.id
        again = queries.start_influence(cache, "pairs", view.job.id, sample=32, seed=3)
        assert again.id == job.id and len([j for j in list_jobs(cache, "pairs") if j.unfinished]) == 1
    finally:
        (cache.jobs_dir() / f"{job.id}.json").unlink()
    done = queries.start_influence(cache, "pairs", view.job.id, sample=SAMPLE, seed=0)  # the finished check
    assert done.id == check.id and done.state == "done" and len(asked) == 2  # no worker for a finished job


def test_start_influence_passes_user_errors_on(cache, view, check, monkeypatch):
    monkeypatch.setattr(queries, "ensure_worker", lambda c: pytest.fail("no worker for a refused request"))
    with pytest.raises(UserError, match="--sample 2: need at least 3 pairs"):
        queries.start_influence(cache, "pairs", view.job.id, sample=2)
    bare = replace(view.job, id="nowarmups0000000", theta_model=None)
    save_job(cache, bare)
    try:
        with pytest.raises(UserError, match="has no finished warm-ups"):
            queries.start_influence(cache, "pairs", bare.id)
    finally:
        (cache.jobs_dir() / f"{bare.id}.json").unlink()
    assert not [j for j in list_jobs(cache, "pairs") if j.unfinished]
