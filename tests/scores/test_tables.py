"""scoring.scores.tables (was scoring.results): which run a table comes from, the loss table of a job, and the score
table of both dataset kinds, on synthetic caches written in the real schemas (tests/synthetic.py)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from scoring.errors import UserError
from scoring.schema import decode_f16
from scoring.scores.registry import ALWAYS
from scoring.ingest.catalog import dataset_kind
from scoring.scores.tables import loss_table, pick_job, score_columns, score_runs, score_table
from scoring.store.cache import atomic_write_json
from scoring.store.parts import read_pass
from tests import synthetic

N = 70


def _job_record(cache) -> dict:
    (path,) = cache.jobs_dir().glob("*.json")
    return json.loads(path.read_text())


def _add_job(cache, record: dict, **changes) -> dict:
    new = dict(record, **changes)
    atomic_write_json(cache.jobs_dir() / f"{new['id']}.json", new)
    return new


def test_sft_score_table_has_one_row_per_example_and_the_job_scores(cache):
    synthetic.build(cache.root, n=N, dataset="synth", part_rows=16)
    job = _job_record(cache)
    table, picked = score_table(cache, "synth")
    assert picked.id == job["id"] and dataset_kind(cache, "synth") == "sft"
    assert list(table.columns[:3]) == ["idx", "id", "flag"]
    assert score_columns(table) == [*ALWAYS["sft"], "davir", "rho", "ifd", "ppl"]
    assert table["idx"].tolist() == list(range(N)) and table["id"].tolist() == [f"ex-{i:07d}" for i in range(N)]
    examples = pd.read_parquet(cache.examples_path("synth"))
    assert table["flag"].tolist() == examples["flag"].tolist()

    base = read_pass(cache, job["base_pass"], ["idx", "loss_sum", "alone_loss_sum", "n_response_tokens",
                                               "n_prompt_tokens"])  # fmt: skip
    ref = read_pass(cache, job["ref_pass"], ["idx", "loss_sum"])
    loss_base = base["loss_sum"] / base["n_response_tokens"]
    loss_ref = ref["loss_sum"] / base["n_response_tokens"]
    np.testing.assert_allclose(table["loss_base"], loss_base)
    np.testing.assert_allclose(table["loss_ref"], loss_ref)
    np.testing.assert_allclose(table["davir"], 1 - loss_ref / loss_base)
    np.testing.assert_allclose(table["rho"], loss_base - loss_ref)
    np.testing.assert_allclose(table["ppl"], np.exp(loss_base))
    np.testing.assert_allclose(table["ifd"], loss_base / (base["alone_loss_sum"] / base["n_response_tokens"]))
    assert table["n_prompt_tokens"].tolist() == base["n_prompt_tokens"].astype(float).tolist()
    assert table[score_columns(table)].notna().all().all()


def test_pair_score_table_has_one_row_per_pair_and_the_pair_scores(cache):
    synthetic.build_pairs(cache.root, n=N, dataset="pairs", part_rows=16)
    job = _job_record(cache)
    table, picked = score_table(cache, "pairs")
    assert picked.id == job["id"] and picked.is_pair and dataset_kind(cache, "pairs") == "pair"
    assert list(table.columns[:3]) == ["idx", "id", "flag"]
    assert set(score_columns(table)) == set(ALWAYS["pair"]) | set(job["scores"])
    assert "loss_base" not in table and "davir" not in table  # no SFT scores on pairs
    assert table["idx"].tolist() == list(range(N)) and table["id"].tolist() == [f"p-{i:06d}" for i in range(N)]
    assert table["flag"].tolist()[:3] == ["", "duplicate", ""]

    cols = ["idx", "chosen_logp", "rejected_logp", "n_chosen_tokens", "n_rejected_tokens"]
    ref, theta, val = (read_pass(cache, job[f"{r}_pass"], cols) for r in ("ref", "theta", "val"))
    np.testing.assert_allclose(table["logp_chosen"], ref["chosen_logp"])
    np.testing.assert_allclose(table["margin_base"], ref["chosen_logp"] - ref["rejected_logp"])
    beta = job["dpo"]["beta"]
    irm = beta * ((theta["chosen_logp"] - ref["chosen_logp"]) - (theta["rejected_logp"] - ref["rejected_logp"]))
    np.testing.assert_allclose(table["irm"], irm)
    val_margin = beta * ((val["chosen_logp"] - ref["chosen_logp"]) - (val["rejected_logp"] - ref["rejected_logp"]))
    np.testing.assert_allclose(table["lossdiff"], np.logaddexp(0, -irm) - np.logaddexp(0, -val_margin))
    np.testing.assert_allclose(table["len_diff"], ref["n_chosen_tokens"] - ref["n_rejected_tokens"])
    np.testing.assert_allclose(table["n_response_tokens"], ref["n_chosen_tokens"] + ref["n_rejected_tokens"])
    # the token losses in a part decode to the summed log-probability stored beside them
    one = read_pass(cache, job["ref_pass"], ["idx", "chosen_token_losses", "chosen_logp"]).iloc[5]
    assert -decode_f16(one["chosen_token_losses"]).astype(np.float64).sum() == pytest.approx(one["chosen_logp"])


def test_pick_job_prefers_the_latest_finished_job(cache):
    synthetic.build(cache.root, n=N, dataset="synth")
    first = _job_record(cache)
    later = _add_job(cache, first, id="later00000000000", finished="2999-01-01T00:00:00", created="2000-01-01")
    _add_job(cache, first, id="running000000000", state="running", owner_pid=None, finished=None, created="3000-01-01")
    _add_job(cache, first, id="failed0000000000", state="failed", finished="3001-01-01T00:00:00")
    assert pick_job(cache, "synth").id == later["id"]
    assert pick_job(cache, "synth", first["id"]).id == first["id"]  # a named job wins
    assert pick_job(cache, "synth", "running0").id == "running000000000"  # by unique prefix too
    assert score_table(cache, "synth")[1].id == later["id"]


def test_pick_job_falls_back_to_the_newest_job_with_a_pass(cache):
    synthetic.build(cache.root, n=N, dataset="synth")
    first = _job_record(cache)
    (cache.jobs_dir() / f"{first['id']}.json").unlink()
    _add_job(cache, first, id="old0000000000000", state="failed", created="2020-01-01")
    _add_job(cache, first, id="new0000000000000", state="cancelled", created="2021-01-01")
    _add_job(cache, first, id="nopass0000000000", state="queued", base_pass=None, created="2022-01-01")
    assert [j.id for j in score_runs(cache, "synth")] == ["old0000000000000", "new0000000000000"]
    assert pick_job(cache, "synth").id == "new0000000000000"


def test_pick_job_refuses_a_job_of_another_dataset(cache):
    synthetic.build(cache.root, n=N, dataset="a")
    job_a = _job_record(cache)
    synthetic.build(cache.root, n=N, dataset="b", seed=1)
    assert pick_job(cache, "a", job_a["id"]).dataset == "a"
    with pytest.raises(UserError, match=f"job {job_a['id']} scores 'a', not 'b'"):
        pick_job(cache, "b", job_a["id"])
    with pytest.raises(UserError, match="no job"):
        pick_job(cache, "a", "nosuchjob")


def test_a_dataset_without_runs_is_a_user_error(cache):
    synthetic.build(cache.root, n=N, dataset="synth")
    (job_file,) = cache.jobs_dir().glob("*.json")
    job_file.unlink()
    assert score_runs(cache, "synth") == []
    with pytest.raises(UserError, match="has no scores yet"):
        pick_job(cache, "synth")


def test_a_missing_reference_pass_leaves_loss_ref_nan_and_keeps_the_base_scores(cache):
    synthetic.build(cache.root, n=N, dataset="synth")
    record = _job_record(cache)
    shutil.rmtree(cache.parts_dir(record["ref_pass"]))  # the reference pass has not written a part yet
    job = pick_job(cache, "synth")
    losses = loss_table(cache, "synth", job)
    assert len(losses) == N and losses["ref_loss_sum"].isna().all()
    assert losses["base_loss_sum"].notna().all() and losses["n_response_tokens"].notna().all()
    table, _ = score_table(cache, "synth")
    assert table["loss_ref"].isna().all() and table["davir"].isna().all() and table["rho"].isna().all()
    for name in ("loss_base", "ifd", "ppl", "n_prompt_tokens", "n_response_tokens"):
        assert table[name].notna().all(), name
    np.testing.assert_allclose(table["loss_base"], losses["base_loss_sum"] / losses["n_response_tokens"])


def test_a_base_only_job_has_no_reference_columns(cache):
    synthetic.build(cache.root, n=N, dataset="synth")
    record = _job_record(cache)
    _add_job(cache, record, passes=["base"], ref_pass=None, scores=["ifd", "ppl"])
    losses = loss_table(cache, "synth", pick_job(cache, "synth"))
    assert "ref_loss_sum" not in losses
    table, _ = score_table(cache, "synth")
    assert score_columns(table) == ["loss_base", "n_prompt_tokens", "n_response_tokens", "ifd", "ppl"]


def test_score_runs_ignore_jobs_on_replaced_data(cache):
    synthetic.build(cache.root, n=N, dataset="synth")
    current = _job_record(cache)
    _add_job(cache, current, id="stale00000000000", dataset_fingerprint="f" * 64, finished="2999-01-01T00:00:00")
    _add_job(cache, current, id="pairkind00000000", kind="pair_score", ref_pass=current["base_pass"])
    assert [j.id for j in score_runs(cache, "synth")] == [current["id"]]
    assert pick_job(cache, "synth").id == current["id"]  # not the newer run on the old content
    assert pick_job(cache, "synth", "stale00000000000").id == "stale00000000000"  # named, it is still there
