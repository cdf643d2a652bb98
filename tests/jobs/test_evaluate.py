"""The evaluate job on tiny random-weight models: arms, metrics, statistics, caching, the sweep, resume after kill -9.

The planted test is the one that would catch mixed-up arms: half the training rows teach the eval set's answer
pattern and half are gibberish; the selection is the clean half's first rows, so a model trained on it must reach a
lower eval NLL than one trained on a random subset of the same size (which is about half gibberish), with the
whole bootstrap interval below 0.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring import cli
from scoring.errors import UserError
from scoring.export import export_selection
from scoring.ingest import catalog
from scoring.jobs import runner
from scoring.jobs.evaluate import evaluate_request, report, values
from scoring.jobs.requests import score_request
from scoring.passes.engine import PassConfig
from scoring.store.cache import read_json
from scoring.store.jobs import load_job
from tests.helpers import PLANTED_LR, PLANTED_N_BAD, PLANTED_N_CLEAN, PLANTED_N_KEPT, build_planted, planted_rows
from tests.tiny import build_model

ROOT = Path(__file__).resolve().parents[2]
N_CLEAN, N_BAD, N_KEPT, LR = PLANTED_N_CLEAN, PLANTED_N_BAD, PLANTED_N_KEPT, PLANTED_LR

pytestmark = pytest.mark.usefixtures("cpu_one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("eval-model"))


@pytest.fixture
def scored(cache, tmp_path, model):
    """The planted dataset with a finished base-only score job, its eval set, and the clean selection saved."""
    return build_planted(cache, tmp_path, model)


def _request(cache, **kw):
    options = {"against": ["random", "full"], "seeds": 2, "evals": ["planted-test"], "epochs": 4, "lr": LR}
    return evaluate_request(cache, "planted", "clean", **{**options, **kw})


def test_planted_bad_half_makes_the_selection_beat_random(cache, scored):
    job, new = runner.enqueue(cache, _request(cache))
    assert new
    job = runner.run(cache, job.id)
    assert job.state == "done", job.error
    out = report(job)
    arms = {a["name"]: a for a in out["arms"]}
    assert list(arms) == ["selection", "random-0", "random-1", "full"]
    assert arms["selection"]["n_examples"] == arms["random-0"]["n_examples"] == N_KEPT
    assert arms["full"]["n_examples"] == N_CLEAN + N_BAD - 0  # nothing flagged, no holdout
    assert all(a["steps"] and a["steps"] > 0 for a in out["arms"])
    assert arms["full"]["steps"] > arms["selection"]["steps"]  # same config, more data: more steps
    nll = {name: a["metrics"]["planted-test"]["nll"] for name, a in arms.items()}
    assert nll["selection"] < min(nll["random-0"], nll["random-1"])
    c = out["comparisons"]["planted-test"]
    assert c["metric"] == "nll" and c["n_seeds"] == 2 and c["n_eval"] == 16
    assert c["selection_minus_random"] < 0 and c["ci95"][1] < 0
    assert c["verdict"] == "better than random"
    assert c["random_mean"] == pytest.approx(np.mean([nll["random-0"], nll["random-1"]]))
    assert c["full"] == pytest.approx(nll["full"])
    assert out["start"]["planted-test"]["nll"] > nll["selection"]  # training moved the model
    # the per-example values behind the means
    v = values(cache, job, "selection")
    assert v[v["metric"] == "nll"]["value"].mean() == pytest.approx(nll["selection"])
    # asked again: the same job, done at once
    again, new = runner.enqueue(cache, _request(cache))
    assert again.id == job.id and not new and again.state == "done"


def test_cli_json_is_the_last_line(cache, scored, capsys):
    argv = ["--cache", str(cache.root), "evaluate", "planted", "clean", "--against", "random,full", "--seeds", "1",
            "--eval", "planted-test", "--epochs", "1", "--lr", str(LR), "--wait", "--json"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert [a["name"] for a in out["arms"]] == ["selection", "random-0", "full"]
    for arm in out["arms"]:
        assert set(arm) >= {"n_examples", "n_tokens", "steps", "metrics"}
        assert set(arm["metrics"]["planted-test"]) == {"nll"}
    c = out["comparisons"]["planted-test"]
    assert set(c) >= {"metric", "selection_minus_random", "ci95", "verdict"} and set(c["others"]) == {"full"}
    assert any(line.startswith("  selection ") for line in lines)  # the arms table
    assert cli.main(argv) == 0  # cached: printed again without training
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert cli.main(["--cache", str(cache.root), "status", "planted"]) == 0
    status = capsys.readouterr().out
    assert f"evaluation {out['job']} of clean on planted-test: nll selection" in status
    manifest = export_selection(cache, "planted", "clean", "jsonl").manifest  # the export records the evaluation
    (recorded,) = manifest["evaluations"]
    assert recorded["job"] == out["job"] and recorded["comparisons"] == out["comparisons"]
    assert [a["name"] for a in recorded["arms"]] == ["selection", "random-0", "full"]
    assert all(len(a["model_fingerprint"]) >= 16 for a in recorded["arms"])


def test_random_arms_differ_by_seed_and_match_size_and_tokens(cache, scored):
    job = runner.run(cache, runner.enqueue(cache, _request(cache, against=["random"], seeds=3, epochs=1))[0].id)
    assert job.state == "done", job.error
    arms = job.result["arms"]
    assert len({a["model"]["path"] for a in arms}) == 4  # four different subsets, four trained models
    assert {a["n_examples"] for a in arms} == {N_KEPT}


def test_holdout_is_an_eval_set_no_arm_trains_on(cache, scored):
    job = runner.run(cache, runner.enqueue(cache, _request(cache, holdout=0.25, seeds=1, epochs=1,
                                                           against=["random"]))[0].id)  # fmt: skip
    assert job.state == "done", job.error
    out = report(job)
    assert set(out["comparisons"]) == {"planted-test", "planted-holdout"}
    assert "one random seed" in out["comparisons"]["planted-holdout"]["verdict"]
    held = out["comparisons"]["planted-holdout"]["n_eval"]
    assert held == round(0.25 * (N_CLEAN + N_BAD))
    assert out["notes"]  # says the scores saw the held-out rows


def test_sweep_runs_the_rule_at_each_budget(cache, scored):
    request = evaluate_request(cache, "planted", rule_of="clean", budgets=["10%", "25%"], against=["random", "full"],
                               seeds=1, evals=["planted-test"], epochs=1, lr=LR)  # fmt: skip
    job = runner.run(cache, runner.enqueue(cache, request)[0].id)
    assert job.state == "done", job.error
    out = report(job)
    assert [a["name"] for a in out["arms"]] == ["rule@10%", "random-0@10%", "rule@25%", "random-0@25%", "full"]
    points = out["sweep"]["planted-test"]
    assert [p["budget"] for p in points] == ["10%", "25%"]
    assert [p["n_examples"] for p in points] == [round(0.1 * 64), 16]
    assert all("ci95" in p and "full" in p for p in points)


def test_requests_are_checked_before_queueing(cache, scored):
    with pytest.raises(UserError, match="eval set"):
        evaluate_request(cache, "planted", "clean")
    with pytest.raises(UserError, match="No saved selection"):
        evaluate_request(cache, "planted", "nope", evals=["planted-test"])
    with pytest.raises(UserError, match="holdout"):
        _request(cache, holdout=1.5)
    with pytest.raises(UserError, match="objective"):
        _request(cache, objective="dpo")
    with pytest.raises(UserError, match="--budgets"):
        evaluate_request(cache, "planted", rule_of="clean", evals=["planted-test"])


def test_kill_9_resumes_at_the_next_arm(cache, scored, tmp_path):
    """A worker killed mid-evaluation: the rerun reuses every finished arm (its values file is not rewritten)."""
    job, _ = runner.enqueue(cache, _request(cache, seeds=2, epochs=2))
    cmd = [sys.executable, "-m", "scoring", "--cache", str(cache.root), "evaluate", "planted", "clean", "--against",
           "random,full", "--seeds", "2", "--eval", "planted-test", "--epochs", "2", "--lr", str(LR), "--wait"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        record = read_json(cache.jobs_dir() / f"{job.id}.json") or {}
        if len((record.get("result") or {}).get("arms", [])) >= 1:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the first arm never finished")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = load_job(cache, job.id).result["arms"][0]["name"]
    finished = values(cache, load_job(cache, job.id), first)
    path = next(p for p in (cache.root / "evaluations" / job.id).glob("*.parquet") if finished.equals(pd.read_parquet(p)))
    stamp = path.stat().st_mtime_ns
    done = runner.run(cache, job.id)
    assert done.state == "done", done.error
    assert path.stat().st_mtime_ns == stamp
    assert [a["name"] for a in done.result["arms"]] == ["selection", "random-0", "random-1", "full"]



# ---------------------------------------------------------------- preference pairs


def test_pair_evaluation_from_theta_measures_preference_accuracy(cache, tmp_path, model):
    """Pairs: arms continue from the warm-up θ (2 more DPO epochs by default); the eval pairs give preference
    accuracy (π_ref itself: 0.5, every margin 0) and DPO loss; a band rule has no bottom arm."""
    from scoring.selection.pairs import lossdiff_irm_spec
    from scoring.selection.saved import save_spec
    from scoring.train.dpo import DPOTrainConfig
    from tests.jobs.test_pairs import arithmetic_pairs

    rows = arithmetic_pairs(40)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    catalog.ingest(str(tmp_path / "p.jsonl"), cache, name="pp", progress=False)
    pass_config = PassConfig(max_length=64, chunk_size=16, dtype="fp32", embed=False, alone=False)
    dpo = DPOTrainConfig(precision="fp32", learning_rate=2e-3)
    score = runner.run(cache, runner.enqueue(cache, score_request(cache, "pp", str(model), pass_config=pass_config,
                                                                  dpo=dpo, val_fraction=0.2))[0].id)  # fmt: skip
    assert score.state == "done", score.error
    save_spec(cache, lossdiff_irm_spec("pp", (12, 88), "100%", False, None, None), "band")
    with pytest.raises(UserError, match="bottom"):
        evaluate_request(cache, "pp", "band", against=["bottom"], evals=[str(tmp_path / "e.jsonl")])
    request = evaluate_request(cache, "pp", "band", against=["random", "full"], seeds=2,
                               evals=[str(tmp_path / "e.jsonl")], epochs=1)  # fmt: skip
    assert request.evaluation["start"] == "theta" and request.evaluation["train"]["min_steps"] == 0
    job = runner.run(cache, runner.enqueue(cache, request)[0].id)
    assert job.state == "done", job.error
    out = report(job)
    (name,) = out["comparisons"]
    assert name.endswith("-e") and out["primary"] == {name: "preference_accuracy"}  # ingested under its default name
    c = out["comparisons"][name]
    assert c["metric"] == "preference_accuracy" and c["n_eval"] == 8 and set(c["also"]) == {"dpo_loss"}
    assert out["start"][name]["preference_accuracy"] != 0.5  # θ already moved away from π_ref
    pool = 32 - len(score.val_ids)
    arms = {a["name"]: a for a in out["arms"]}
    assert arms["full"]["n_examples"] == pool and arms["selection"]["n_examples"] < pool
    assert all(0 <= a["metrics"][name]["preference_accuracy"] <= 1 for a in out["arms"])
    ref = evaluate_request(cache, "pp", "band", against=["random"], seeds=1, evals=[name], epochs=1,
                           start_from="ref")  # fmt: skip
    job = runner.run(cache, runner.enqueue(cache, ref)[0].id)
    assert job.state == "done", job.error
    assert report(job)["start"][name]["preference_accuracy"] == 0.5  # π_ref against itself: all ties


def test_eval_set_with_answers_measures_greedy_accuracy(cache, scored, tmp_path):
    """Rows with a computed ``answer`` (the demo's held-out tasks carry one) add exact-match accuracy of greedy
    answers, judged first; the generations are cached by content, so a second evaluation sharing arms reuses them."""
    qa = [{**r, "answer": "42"} for r in planted_rows(8, 0, 2, "qa")]
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    catalog.ingest(str(tmp_path / "qa.json"), cache, name="planted-qa", progress=False)
    job = runner.run(cache, runner.enqueue(cache, _request(cache, evals=["planted-qa"], seeds=1, epochs=2,
                                                           against=["random"]))[0].id)  # fmt: skip
    assert job.state == "done", job.error
    c = report(job)["comparisons"]["planted-qa"]
    assert c["metric"] == "accuracy" and set(c["also"]) == {"nll"} and 0 <= c["selection"] <= 1
    generations = sorted((cache.root / "evaluations" / "generations").glob("*.parquet"))
    assert len(generations) == 3  # start, selection, random-0
    assert all(len(pd.read_parquet(p)) == 8 for p in generations)
    stamps = [p.stat().st_mtime_ns for p in generations]
    again = runner.run(cache, runner.enqueue(cache, _request(cache, evals=["planted-qa"], seeds=1, epochs=2,
                                                             against=["random", "full"]))[0].id)  # fmt: skip
    assert again.state == "done" and again.id != job.id
    assert [p.stat().st_mtime_ns for p in generations] == stamps  # reused, not generated again


def test_the_pool_is_what_the_rule_chose_from(cache, tmp_path, model):
    """Random and full arms draw from the rows the selection could have kept: unflagged ones, or with
    ``--include-flagged`` the flagged ones too (never a validation pair)."""
    from scoring.jobs.evaluate import pool_of
    from scoring.selection.saved import SelectionSpec, save_spec

    rows = planted_rows(12, 0, 3, "fl")
    rows += [dict(rows[0], id="fl-dup")]  # an exact duplicate: flagged at ingest
    (tmp_path / "fl.json").write_text(json.dumps(rows))
    catalog.ingest(str(tmp_path / "fl.json"), cache, name="fl", progress=False)
    score = runner.run(cache, runner.enqueue(cache, score_request(cache, "fl", str(model), ["ppl"], PassConfig(
        chunk_size=16, dtype="fp32", embed=False, max_length=96)))[0].id)  # fmt: skip
    assert score.state == "done", score.error
    for name, flagged in (("plain", False), ("all", True)):
        save_spec(cache, SelectionSpec("fl", ("ppl",), "4", ("bottom",), include_flagged=flagged), name)
    pools = {name: set(pool_of(cache, evaluate_request(cache, "fl", name, evals=["fl"]))[0]["id"])
             for name in ("plain", "all")}  # fmt: skip
    assert pools["all"] - pools["plain"] == {"fl-dup"} or pools["all"] - pools["plain"] == {rows[0]["id"]}
    assert len(pools["plain"]) == 12 and len(pools["all"]) == 13
