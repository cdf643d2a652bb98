"""``python -m scoring select``: cuts set as score values, ``--budget`` left out (all) for band and value rules,
``--replace``, the side of the cut in the drop reasons, and the refusals (no scores yet) and warnings (partial) of
a selection made before its score run has finished. On synthetic scored caches (no model), in-process."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from scoring.scores.tables import score_table
from scoring.selection.saved import load_selection, load_selection_record
from scoring.store.cache import Cache
from scoring.store.jobs import list_jobs, save_job
from tests import synthetic
from tests.helpers import ok
from tests.test_cli import assert_user_error, kept_line


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Cache:
    return synthetic.build(tmp_path_factory.mktemp("cli-select") / "cache", n=200, dataset="synth", part_rows=50,
                           layout=False)  # fmt: skip


def c(cache: Cache) -> list[str]:
    return ["--cache", str(cache.root)]


def test_above_a_value_without_a_budget_keeps_every_row_at_or_above_it(cache):
    table, _ = score_table(cache, "synth")
    cut = float(np.round(table["davir"].quantile(0.8), 3))
    out = ok(*c(cache), "select", "synth", "--score", "davir", "--rule", f"above:{cut}", "--save", "above")
    record, result = load_selection(cache, "synth", "above")
    want = table[(table["flag"] == "") & (table["davir"] >= cut)]
    assert sorted(result.kept_ids) == sorted(want["id"]) and kept_line(out, "above")[0] == len(want)
    assert record["budget"] == "all" and record["rules"] == [f"above:{cut}"]
    assert "below_value:davir" in out and "below_cut" not in out
    assert result.kept_ids == want.sort_values(["davir", "idx"], ascending=[False, True])["id"].tolist()


def test_value_band_with_negative_values_and_a_budget(cache):
    table, _ = score_table(cache, "synth")
    rho = table["rho"]
    lo, hi = float(-rho.abs().max()), float(rho.median())
    ok(*c(cache), "select", "synth", "--score", "rho", "--rule", f"band-values:{lo}-{hi}", "--save", "vband")
    _, result = load_selection(cache, "synth", "vband")
    inside = table[(table["flag"] == "") & (rho >= lo) & (rho <= hi)]
    assert sorted(result.kept_ids) == sorted(inside["id"])
    out = ok(*c(cache), "select", "synth", "--score", "rho", "--rule", f"band-values:{lo}-{hi}", "--budget", "5",
             "--save", "vband5")  # fmt: skip
    assert kept_line(out, "vband5")[0] == 5 and "over_budget" in out and "outside_band:rho" in out


def test_the_budget_is_required_for_top_and_bottom(cache):
    line = assert_user_error([*c(cache), "select", "synth", "--score", "davir", "--save", "nob"],
                             "--budget is required", "band-values:", "above:")  # fmt: skip
    assert "all" in line
    assert_user_error([*c(cache), "select", "synth", "--score", "davir", "--score", "ifd", "--rule", "above:0.1",
                       "--rule", "top", "--save", "nob"], "--budget is required")  # fmt: skip
    assert_user_error([*c(cache), "select", "synth", "--score", "davir", "--rule", "band-values:2-1", "--save",
                       "nob"], "LO < HI")  # fmt: skip
    assert not (cache.selections_dir("synth") / "nob.json").exists()


def test_bottom_names_the_rows_above_its_cut(cache):
    out = ok(*c(cache), "select", "synth", "--score", "ppl", "--rule", "bottom", "--budget", "10%", "--save", "low")
    record = load_selection_record(cache, "synth", "low")
    assert set(record["reason_counts"]) <= {"above_cut:ppl", "flagged:too_long"} and "above_cut:ppl" in out
    both = ok(*c(cache), "select", "synth", "--score", "ppl", "--score", "davir", "--rule", "bottom", "--rule", "top",
              "--budget", "10%", "--save", "mixed")  # fmt: skip
    assert "above_cut:ppl" in both and "below_cut:davir" in both


def test_an_existing_name_is_replaced_only_with_replace(cache):
    ok(*c(cache), "select", "synth", "--score", "davir", "--budget", "9", "--dedup", "0.9", "--save", "twice")
    line = assert_user_error([*c(cache), "select", "synth", "--score", "davir", "--budget", "30", "--save", "twice"],
                             "A selection named 'twice' already exists for dataset 'synth' (9 rows, saved ",
                             "pass --replace to overwrite it")  # fmt: skip
    assert "UTC)" in line
    assert load_selection_record(cache, "synth", "twice")["n_kept"] == 9  # untouched
    ok(*c(cache), "select", "synth", "--score", "davir", "--budget", "9", "--dedup", "0.9", "--save", "twice")  # same
    out = ok(*c(cache), "select", "synth", "--score", "davir", "--budget", "30", "--save", "twice", "--replace")
    assert kept_line(out, "twice")[0] == 30 and load_selection_record(cache, "synth", "twice")["dedup"] is None


def _running(tmp_path, drop: str) -> Cache:
    cache = synthetic.build(tmp_path / "cache", n=60, dataset="synth", part_rows=20, layout=False)
    job = list_jobs(cache, "synth")[0]
    parts = sorted(cache.parts_dir(job.ref_pass).glob("*.parquet"))
    for part in parts if drop == "all" else parts[:1]:
        part.unlink()
    job.state, job.finished, job.owner_pid = "running", None, os.getpid()
    save_job(cache, job)
    return cache


def test_no_selection_before_any_score_and_a_warning_while_parts_land(tmp_path):
    empty = _running(tmp_path / "a", "all")
    assert_user_error([*c(empty), "select", "synth", "--score", "davir", "--budget", "10%", "--save", "early"],
                      "has a davir score (0 of 60 rows scored)", "Wait for the score job or pick another score run")
    assert not (empty.selections_dir("synth") / "early.json").exists()
    landing = _running(tmp_path / "b", "some")
    out = ok(*c(landing), "select", "synth", "--score", "davir", "--budget", "10%", "--save", "early")
    assert out.splitlines()[-1] == ("partial selection: scores for 40 of 60 rows; re-run select when the job has "
                                    "finished")  # fmt: skip
    record = json.loads((landing.selections_dir("synth") / "early.json").read_text())
    assert record["partial"] == {"scored": 40, "rows": 60}


def test_lossdiff_irm_without_a_budget_keeps_the_whole_band(tmp_path):
    cache = synthetic.build_pairs(tmp_path / "cache", n=60, dataset="pairs")
    out = ok(*c(cache), "select", "pairs", "--rule", "lossdiff-irm", "--save", "band")
    record = load_selection_record(cache, "pairs", "band")
    assert record["budget"] == "all" and record["n_kept"] > 0 and "over_budget" not in out
    ok(*c(cache), "select", "pairs", "--rule", "lossdiff-irm", "--save", "band")  # the same selection again
    assert_user_error([*c(cache), "select", "pairs", "--rule", "lossdiff-irm", "--budget", "5", "--save", "band"],
                      "already exists")  # fmt: skip
    ok(*c(cache), "select", "pairs", "--rule", "lossdiff-irm", "--budget", "5", "--save", "band", "--replace")
    assert load_selection_record(cache, "pairs", "band")["n_kept"] == 5
