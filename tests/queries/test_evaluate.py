"""The Evaluate page's queries on real tiny evaluations (tests.helpers.build_planted_evaluations: a plain evaluation
of the saved selection "clean" with 2 random seeds and full, and the sweep of its rule at 10 % and 25 % with 1 seed):
every frame holds exactly the report's numbers, the verdict lookup finds the evaluation of the very rule and budget
the Select page shows and nothing else, and the command lines parse back into the same request."""
from __future__ import annotations

import math
import shlex
from dataclasses import replace

import numpy as np
import pytest

from scoring.cli import build_parser
from scoring.cli.evaluate import evaluate_args
from scoring.errors import UserError
from scoring.jobs.evaluate import report
from scoring.queries import evaluate as q
from scoring.selection.saved import SelectionSpec
from scoring.store.cache import Cache
from scoring.store.jobs import load_job
from tests.helpers import PLANTED_N_KEPT, PLANTED_SWEEP


@pytest.fixture(scope="module")
def ev(planted_evaluations):
    cache = Cache(planted_evaluations["root"])
    return {"cache": cache, "plain": load_job(cache, planted_evaluations["plain"]),
            "sweep": load_job(cache, planted_evaluations["sweep"]), "score": planted_evaluations["score"]}


def spec_of(ev, **changes) -> SelectionSpec:
    """The saved selection's rule as the Select page would build it."""
    base = SelectionSpec(dataset="planted", scores=("ppl",), budget=str(PLANTED_N_KEPT), rules=("bottom",),
                         job=ev["score"])  # fmt: skip
    return replace(base, **changes)


def test_evaluation_jobs_newest_first(ev):
    jobs = q.evaluation_jobs(ev["cache"], "planted")
    assert [j.id for j in jobs] == [ev["sweep"].id, ev["plain"].id]
    assert q.pending_evaluations(ev["cache"], "planted") == []
    assert q.is_sweep(ev["sweep"]) and not q.is_sweep(ev["plain"])
    assert "clean" in q.evaluation_label(ev["plain"]) and "sweep of clean at 10%, 25%" in q.evaluation_label(ev["sweep"])


def test_arms_frame_matches_the_report(ev):
    out = report(ev["plain"])
    frame = q.arms_frame(ev["plain"])
    assert frame["arm"].tolist() == ["start", "selection", "random-0", "random-1", "full"]
    assert frame.columns.tolist() == ["arm", "examples", "tokens", "steps", "planted-test: nll"]
    assert frame["planted-test: nll"].iloc[0] == out["start"]["planted-test"]["nll"]
    assert frame["examples"].isna().iloc[0] and frame["steps"].isna().iloc[0]
    for row, arm in zip(frame.iloc[1:].itertuples(index=False), out["arms"]):
        assert (row.arm, row.examples, row.tokens, row.steps) == (arm["name"], arm["n_examples"], arm["n_tokens"],
                                                                  arm["steps"])  # fmt: skip
        assert row[4] == arm["metrics"]["planted-test"]["nll"]
    assert frame.set_index("arm").loc["selection", "examples"] == PLANTED_N_KEPT
    sweep = q.arms_frame(ev["sweep"])
    assert sweep["arm"].tolist() == ["start", "rule@10%", "random-0@10%", "rule@25%", "random-0@25%", "full"]


def test_comparisons_frame_matches_the_report(ev):
    c = report(ev["plain"])["comparisons"]["planted-test"]
    frame = q.comparisons_frame(ev["plain"])
    assert len(frame) == 1  # one eval set, one metric (no computed answers: nll only)
    row = frame.iloc[0]
    assert (row["eval set"], row["metric"], row["primary"], row["better when"]) == ("planted-test", "nll", True, "lower")
    assert row["selection"] == c["selection"] and row["random mean"] == c["random_mean"]
    assert row["random sd"] == c["random_sd"] and row["seeds"] == 2 and row["full"] == c["full"]
    assert row["selection − random"] == c["selection_minus_random"]
    assert [row["CI low"], row["CI high"]] == c["ci95"] and row["verdict"] == c["verdict"]
    assert row["eval examples"] == 16
    (line,) = q.comparison_lines(ev["plain"])
    assert line.startswith(f"planted-test: {c['verdict']} — nll selection {c['selection']:.4f} vs random ")
    assert "(2 seeds)" in line and f"; full {c['full']:.4f}" in line
    others = q.others_frame(ev["plain"])
    assert others["arm"].tolist() == ["full"] and others["value"].iloc[0] == pytest.approx(c["full"])
    assert q.comparisons_frame(ev["sweep"]).empty and q.others_frame(ev["sweep"]).empty
    assert q.sweep_frame(ev["plain"]).empty


def test_sweep_frame_matches_the_report(ev):
    out = report(ev["sweep"])
    points = out["sweep"]["planted-test"]
    frame = q.sweep_frame(ev["sweep"])
    assert frame["budget"].tolist() == list(PLANTED_SWEEP)
    assert frame["budget_value"].tolist() == [10.0, 25.0] and set(frame["budget_unit"]) == {"% of rows"}
    assert frame["n_examples"].tolist() == [p["n_examples"] for p in points]
    assert frame["rule"].tolist() == [p["selection"] for p in points]
    assert frame["random_mean"].tolist() == [p["random_mean"] for p in points]
    assert frame["selection_minus_random"].tolist() == [p["selection_minus_random"] for p in points]
    assert frame[["ci_lo", "ci_hi"]].values.tolist() == [p["ci95"] for p in points]
    assert frame["full"].tolist() == [p["full"] for p in points] and frame["full"].nunique() == 1
    # one seed: no sd, so the band is the min and max over the (single) random arm
    arms = {a["name"]: a["metrics"]["planted-test"]["nll"] for a in out["arms"]}
    assert frame["random_sd"].isna().all() and set(frame["random_band"]) == {"min-max over seeds"}
    assert frame["random_lo"].tolist() == frame["random_hi"].tolist() == [arms["random-0@10%"], arms["random-0@25%"]]
    assert all("one random seed" in v for v in frame["verdict"])


def test_budget_values():
    assert q.budget_value("5%") == (5.0, "% of rows")
    assert q.budget_value("300") == (300.0, "rows")
    assert q.budget_value("2M-tokens") == (2_000_000.0, "tokens")
    assert q.split_budgets(" 5%, 10%  25% ") == ["5%", "10%", "25%"] and q.split_budgets("") == []
    with pytest.raises(UserError, match="Budget"):
        q.split_budgets("5%, lots")


def test_primary_bars(ev):
    bars = q.primary_bars(ev["plain"])
    assert bars["arm"].tolist() == ["start", "selection", "random-0", "random-1", "full"]
    assert bars["role"].tolist() == ["start", "selection", "random", "random", "full"]
    frame = q.arms_frame(ev["plain"])
    assert bars["value"].tolist() == frame["planted-test: nll"].tolist()


def test_verdict_for_finds_the_evaluation_of_this_rule(ev):
    cache = ev["cache"]
    c = report(ev["plain"])["comparisons"]["planted-test"]
    v = q.verdict_for(cache, spec_of(ev))
    assert list(v) == ["planted-test"]
    got = v["planted-test"]
    assert got["job"] == ev["plain"].id and not got["sweep"] and got["eval"] == "planted-test"
    for key in ("metric", "verdict", "selection_minus_random", "ci95", "selection", "random_mean", "full"):
        assert got[key] == c[key]
    assert q.verdict_for(cache, spec_of(ev, job=None)) == v  # None: the dataset's latest finished score job
    (line,) = q.verdict_lines(v)
    assert line.startswith(f"Evaluated (job {ev['plain'].id[:8]}): {c['verdict']} on planted-test — nll selection − "
                           "random ")  # fmt: skip
    # a sweep through the budget answers with that sweep point
    point = report(ev["sweep"])["sweep"]["planted-test"][1]
    s = q.verdict_for(cache, spec_of(ev, budget="25%"))["planted-test"]
    assert s["job"] == ev["sweep"].id and s["sweep"] and s["selection"] == point["selection"]
    assert s["verdict"] == point["verdict"] and s["ci95"] == point["ci95"]
    assert "sweep job" in q.verdict_lines({"planted-test": s})[0]
    # anything else is not this rule: another budget, rule, score job, flagged rows or dedup
    for other in (spec_of(ev, budget="50%"), spec_of(ev, budget="13"), spec_of(ev, rules=("top",)),
                  spec_of(ev, job="0" * 16), spec_of(ev, include_flagged=True), spec_of(ev, dedup=0.9),
                  spec_of(ev, quota="category")):  # fmt: skip
        assert q.verdict_for(cache, other) is None, other


def test_saved_name_and_suggested_command(ev):
    cache = ev["cache"]
    assert q.saved_name_for(cache, spec_of(ev)) == "clean"
    assert q.saved_name_for(cache, spec_of(ev, budget="25%")) is None
    assert q.eval_choices(cache, "planted") == ["planted-test"]
    command = q.suggested_command(cache, spec_of(ev))
    assert command.startswith(f"python -m scoring --cache {cache.root} evaluate planted clean ")
    assert "--eval planted-test" in command
    assert " NAME " in q.suggested_command(cache, spec_of(ev, budget="25%"))


@pytest.mark.parametrize("selection, options", [
    ("clean", {"against": ["random", "full"], "seeds": 3, "evals": ["planted-test"]}),
    ("clean", {"against": ["random", "bottom", "other sel"], "seeds": 1, "evals": ["a", "b"], "holdout": 0.1,
               "epochs": 1.5, "objective": "dpo", "method": "lora", "lr": 3e-4, "start_from": "ref"}),
    ("clean", {"against": ["random"], "seeds": 2, "evals": [], "holdout": 0.2, "budgets": ["5%", "25%"]}),
])  # fmt: skip
def test_evaluate_command_parses_back_into_the_same_request(selection, options):
    command = q.evaluate_command("my data", selection, options, cache=Cache("/tmp/a cache"))
    argv = shlex.split(command)
    assert argv[:5] == ["python", "-m", "scoring", "--cache", "/tmp/a cache"]
    args = build_parser().parse_args(argv[3:])
    assert args.command == "evaluate" and args.name == "my data"
    got = evaluate_args(args)
    want = {"against": options["against"], "seeds": options["seeds"], "evals": options["evals"],
            "holdout": options.get("holdout"), "epochs": options.get("epochs"), "objective": options.get("objective"),
            "method": options.get("method", "full"), "lr": options.get("lr"),
            "start_from": options.get("start_from", "theta"), "budgets": options.get("budgets", []),
            "rule_of": "clean" if options.get("budgets") else None}  # fmt: skip
    assert got == want
    assert args.selection == (None if options.get("budgets") else selection)


def test_start_evaluation_queues_and_asks_for_a_worker(ev, monkeypatch):
    cache, asked = ev["cache"], []
    monkeypatch.setattr(q, "ensure_worker", lambda c: asked.append(c.root) or 4242)
    done = q.start_evaluation(cache, "planted", "clean", against=["random", "full"], seeds=2, evals=["planted-test"],
                              epochs=1, lr=3e-3)  # the fixture's plain evaluation: done at once  # fmt: skip
    assert done.id == ev["plain"].id and done.state == "done" and asked == []
    job = q.start_evaluation(cache, "planted", "clean", against=["random"], seeds=1, evals=["planted-test"], epochs=1,
                             budgets=["50%"], holdout=None)  # fmt: skip
    try:
        assert job.state == "queued" and asked == [cache.root]
        assert job.evaluation["rule_of"] == "clean" and job.evaluation["selection"] is None
        assert [j.id for j in q.pending_evaluations(cache, "planted")] == [job.id]
        assert q.arms_frame(job)["arm"].tolist() == [] and q.sweep_frame(job).empty  # nothing measured yet
    finally:
        (cache.jobs_dir() / f"{job.id}.json").unlink()
    with pytest.raises(UserError, match="eval set"):
        q.start_evaluation(cache, "planted", "clean", evals=[])
    assert len(asked) == 1


def test_frames_of_a_job_mid_run(ev):
    """While running, result["arms"] grows arm by arm and there are no comparisons yet."""
    job = replace(ev["plain"], state="running", result={**ev["plain"].result, "comparisons": None,
                                                        "arms": ev["plain"].result["arms"][:2]})  # fmt: skip
    assert q.arms_frame(job)["arm"].tolist() == ["start", "selection", "random-0"]
    assert q.comparisons_frame(job).empty and q.comparison_lines(job) == []
    assert math.isfinite(q.arms_frame(job)["planted-test: nll"].iloc[-1])
    early = q.arms_frame(replace(job, result={"arms": job.result["arms"][:1]}))  # before the start row is written
    assert early["arm"].tolist() == ["selection"] and not np.isnan(early["planted-test: nll"]).any()
