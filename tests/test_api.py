"""The Python API (``import scoring``): the notebook version of what the CLI does, on the tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import scoring
from scoring.errors import UserError
from scoring.selection.saved import load_selection
from scoring.train.sft_config import TrainConfig
from tests.helpers import ok

FIXTURE = Path(__file__).parent / "fixtures" / "golden20.json"
TRAIN = TrainConfig(precision="fp32", learning_rate=1e-3, batch_size=4, micro_batch_size=4, epochs=1)

pytestmark = pytest.mark.usefixtures("cpu_one_thread")  # tests/conftest.py


def test_ingest_score_select_export_from_python(tiny_model, tmp_path):
    cache = tmp_path / "cache"
    result = scoring.ingest(str(FIXTURE), name="g", cache=cache, progress=False)
    assert (result.name, result.n_rows) == ("g", 20)

    job = scoring.score("g", model=str(tiny_model), max_length=128, train=TRAIN, cache=cache)
    assert job.state == "done" and job.base_pass and job.ref_pass
    again = scoring.score("g", model=str(tiny_model), max_length=128, train=TRAIN, cache=cache)
    assert again.id == job.id and again.finished == job.finished  # the same request: the finished job, at once

    table = scoring.scores("g", cache=cache)
    assert len(table) == 20 and table["davir"].notna().sum() >= 18  # all but rows flagged before scoring
    assert ((1 - table["loss_ref"] / table["loss_base"]) - table["davir"]).abs().max() < 1e-12

    kept = scoring.select("g", scores=["davir"], budget="25%", save="top", cache=cache)
    assert len(kept.kept_ids) == 5
    # The CLI's select with the same rule saves the same ids.
    ok("--cache", str(cache), "select", "g", "--score", "davir", "--budget", "25%", "--save", "cli-top")
    assert load_selection(scoring.open_cache(cache), "g", "cli-top")[1].kept_ids == kept.kept_ids

    out = scoring.export("g", "top", format="jsonl", out=tmp_path / "top.jsonl", with_scores=True, cache=cache)
    rows = [json.loads(line) for line in out.path.read_text().splitlines()]
    source = json.loads(FIXTURE.read_text())  # no id column: ids are row numbers
    assert out.n_rows == 5
    assert sorted(r["instruction"] for r in rows) == sorted(source[int(i)]["instruction"] for i in kept.kept_ids)
    by_id = table.set_index("id")["davir"]
    assert sorted(r["davir"] for r in rows) == pytest.approx(sorted(by_id[i] for i in kept.kept_ids))


def test_api_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no dataset named"):
        scoring.scores("missing", cache=tmp_path / "cache")
