"""Saving a spec: never over an existing name without replace, never over scores that do not exist, partial while
the score run is unfinished; SelectionSpec.from_record and the rule comparison built on it; reproduce_command
without --job."""
from __future__ import annotations

import json
import os

import pytest

from scoring import api
from scoring.errors import UserError
from scoring.jobs.evaluate import _rule_record, _spec
from scoring.queries.evaluate import _same_rule
from scoring.selection.saved import (
    SelectionSpec,
    already_saved_message,
    load_selection,
    load_selection_record,
    reproduce_command,
    save_spec,
    selection_exists,
)
from scoring.store.cache import Cache
from scoring.store.jobs import list_jobs, save_job
from tests import synthetic


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Cache:
    return synthetic.build(tmp_path_factory.mktemp("saving") / "cache", n=120, dataset="synth", part_rows=40,
                           layout=False)


def test_saving_over_an_existing_name_needs_replace(cache):
    assert selection_exists(cache, "synth", "mine") is None
    _, first = save_spec(cache, SelectionSpec("synth", ("davir",), "15%", dedup=0.9), "mine")
    record = selection_exists(cache, "synth", "mine")
    assert record["n_kept"] == len(first.kept_ids) and record["dedup"] == 0.9 and record["name"] == "mine"
    with pytest.raises(UserError) as err:
        save_spec(cache, SelectionSpec("synth", ("davir",), "25%"), "mine")
    text = str(err.value)
    assert text.startswith(f"A selection named 'mine' already exists for dataset 'synth' ({len(first.kept_ids)} rows, "
                           "saved ") and text.endswith("UTC); pass --replace to overwrite it")  # fmt: skip
    assert text.startswith(already_saved_message(record, "synth", "mine"))
    assert load_selection_record(cache, "synth", "mine")["dedup"] == 0.9  # untouched
    save_spec(cache, SelectionSpec("synth", ("davir",), "15%", dedup=0.9), "mine")  # the very same one again: fine
    _, second = save_spec(cache, SelectionSpec("synth", ("davir",), "25%"), "mine", replace=True)
    assert load_selection(cache, "synth", "mine")[1].kept_ids == second.kept_ids and len(second.kept_ids) == 30
    assert selection_exists(cache, "synth", "../x") is None and selection_exists(cache, "other", "mine") is None


def test_api_select_defaults_the_budget_for_value_rules_and_asks_replace(cache):
    kept = api.select("synth", scores=["davir"], rule="above:0.3", save="above", cache=cache)
    record = load_selection_record(cache, "synth", "above")
    assert record["budget"] == "all" and record["rules"] == ["above:0.3"]
    assert kept.reason_counts().keys() <= {"below_value:davir", "flagged:too_long"}
    with pytest.raises(UserError, match="budget= is required unless every rule is a band or a value rule"):
        api.select("synth", scores=["davir"], rule="top", cache=cache)
    with pytest.raises(UserError, match="already exists"):
        api.select("synth", scores=["davir"], rule="above:0.5", save="above", cache=cache)
    again = api.select("synth", scores=["davir"], rule="above:0.5", save="above", replace=True, cache=cache)
    assert len(again.kept_ids) <= len(kept.kept_ids)


def _unfinished(tmp_path, drop_parts: str) -> Cache:
    """A synthetic cache whose score job is still running, its ref pass with ``drop_parts`` ("all" or "some")
    of its parts not landed yet."""
    cache = synthetic.build(tmp_path / "cache", n=90, dataset="synth", part_rows=30, layout=False)
    job = list_jobs(cache, "synth")[0]
    parts = sorted(cache.parts_dir(job.ref_pass).glob("*.parquet"))
    for part in parts if drop_parts == "all" else parts[:1]:
        part.unlink()
    job.state, job.finished = "running", None
    job.owner_pid = os.getpid()
    save_job(cache, job)
    return cache


def test_no_selection_over_scores_that_do_not_exist_yet(tmp_path):
    cache = _unfinished(tmp_path, "all")
    with pytest.raises(UserError) as err:
        save_spec(cache, SelectionSpec("synth", ("davir",), "10%"), "early")
    text = str(err.value)
    assert "no row of dataset 'synth' has a davir score (0 of 90 rows scored)" in text
    assert "Wait for the score job or pick another score run" in text and "nothing was saved" in text
    assert selection_exists(cache, "synth", "early") is None
    _, result = save_spec(cache, SelectionSpec("synth", ("ppl",), "10%"), "base-only")  # the base pass has landed
    assert len(result.kept_ids) == 9 and result.partial == {"scored": 90, "rows": 90}


def test_a_selection_while_parts_are_landing_is_partial(tmp_path):
    cache = _unfinished(tmp_path, "some")
    path, result = save_spec(cache, SelectionSpec("synth", ("davir",), "10%"), "early")
    record = json.loads(path.read_text())
    assert record["partial"] == result.partial == {"scored": 60, "rows": 90}
    assert 25 <= result.reason_counts()["unscored"] <= 30  # the rows of the missing part (a flagged one says so)
    assert load_selection(cache, "synth", "early")[1].partial == {"scored": 60, "rows": 90}


def test_a_finished_run_is_not_partial(cache):
    _, result = save_spec(cache, SelectionSpec("synth", ("davir",), "10%"), "done")
    assert result.partial is None and "partial" not in load_selection_record(cache, "synth", "done")


# ------------------------------------------------------------------ from_record


def test_spec_from_a_saved_record_round_trips(cache):
    spec = SelectionSpec("synth", ("davir", "ifd"), "12%", rules=("top", "band-values:0.5-2"), combine="or",
                         include_flagged=True, quota="category", dedup=0.95)  # fmt: skip
    save_spec(cache, spec, "round")
    record = load_selection_record(cache, "synth", "round")
    back = SelectionSpec.from_record(record)
    assert back == SelectionSpec(**{**spec.__dict__, "job": record["runs"][0]})
    assert SelectionSpec.from_record({"dataset": "d", "scores": ["a"], "budget": "5", "rule": "top,bottom"}).rules == (
        "top", "bottom")  # a record with only the joined rule text
    legacy = SelectionSpec.from_record({"dataset": "d", "scores": ["a"]})
    assert (legacy.rules, legacy.budget, legacy.combine, legacy.job, legacy.dedup) == (("top",), "all", "and", None,
                                                                                         None)  # fmt: skip


def test_the_evaluation_spec_and_the_rule_comparison_use_from_record(cache):
    spec = SelectionSpec("synth", ("davir", "ifd"), "12%", rules=("above:0.2", "bottom"), quota="category")
    save_spec(cache, spec, "for-eval")
    record = load_selection_record(cache, "synth", "for-eval")
    rule = _rule_record(record)
    assert _spec("synth", rule) == SelectionSpec.from_record(record)
    assert _spec("synth", rule, "30%", ("top", "top")).budget == "30%"
    assert _spec("synth", rule, "30%", ("top", "top")).rules == ("top", "top")
    assert _same_rule(rule, spec)
    assert _same_rule(record, SelectionSpec("synth", ("davir", "ifd"), "50%", rules=("ABOVE:0.2", "bottom"),
                                            quota="category"))  # fmt: skip
    assert not _same_rule(rule, SelectionSpec("synth", ("davir", "ifd"), "12%", rules=("above:0.3", "bottom")))
    one = {"scores": ["a"], "rules": ["top"], "combine": "or"}
    assert _same_rule(one, SelectionSpec("synth", ("a",), "5%"))  # combine does not matter for one score
    assert _same_rule({"scores": ["a", "b"], "rules": ["top"]}, SelectionSpec("synth", ("a", "b"), "5", ("top", "top")))
    assert not _same_rule({"scores": ["a"], "combine": "xor"}, SelectionSpec("synth", ("a",), "5%"))


def test_reproduce_command_without_the_job():
    spec = {"dataset": "d", "scores": ["davir"], "rules": ["above:0.731"], "budget": "all", "runs": ["j1"],
            "name": "x"}
    assert reproduce_command(spec) == ("python -m scoring select d --score davir --budget all --rule above:0.731 "
                                       "--job j1 --save x")  # fmt: skip
    assert reproduce_command(spec, with_job=False) == ("python -m scoring select d --score davir --budget all "
                                                       "--rule above:0.731 --save x")  # fmt: skip
    assert "'band-values:-0.5--0.1'" not in reproduce_command({**spec, "rules": ["band-values:-0.5--0.1"]})
