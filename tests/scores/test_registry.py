"""Scores: the registry, each formula on hand-made numbers, and golden values from the whole pipeline."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from scoring.scores import registry as scores  # importing scoring.scores registers every score
from scoring.errors import UserError
from tests import golden_pipeline

LOSSES = pd.DataFrame(
    {
        "base_loss_sum": [20.0, 9.0, 0.0, np.nan],
        "base_alone_loss_sum": [40.0, 9.0, 5.0, np.nan],
        "ref_loss_sum": [10.0, 9.0, 0.0, np.nan],
        "n_prompt_tokens": [7, 3, 2, np.nan],
        "n_response_tokens": [10, 3, 0, np.nan],
    }
)


def test_each_score_on_hand_made_numbers():
    out = scores.compute(LOSSES, list(scores.DEFAULT_SCORES))
    assert out["loss_base"].tolist()[:2] == [2.0, 3.0]
    assert out["loss_ref"].tolist()[:2] == [1.0, 3.0]
    assert out["davir"].tolist()[:2] == [0.5, 0.0]  # 1 - 1/2; nothing learned
    assert out["rho"].tolist()[:2] == [1.0, 0.0]
    assert out["ifd"].tolist()[:2] == [0.5, 1.0]  # 2 / 4; the prompt does not help
    assert out["ppl"][0] == pytest.approx(math.exp(2.0))
    assert out.iloc[2:].drop(columns=["n_prompt_tokens", "n_response_tokens"]).isna().all().all()  # no tokens: NaN
    assert out.iloc[3].isna().all()  # unscored row


def test_davir_is_the_relative_drop_and_rho_the_absolute_one():
    out = scores.compute(LOSSES.iloc[:2], ["davir", "rho"])
    np.testing.assert_allclose(out["davir"], 1 - out["loss_ref"] / out["loss_base"])
    np.testing.assert_allclose(out["rho"], out["loss_base"] - out["loss_ref"])


def test_scores_without_a_reference_skip_the_reference_columns():
    out = scores.compute(LOSSES.drop(columns=["ref_loss_sum"]), ["ifd", "ppl"])
    assert "loss_ref" not in out and "davir" not in out and "ifd" in out


def test_registry_rejects_a_second_score_of_the_same_name():
    with pytest.raises(ValueError, match="registered twice"):
        scores.register("davir", {"base"}, "x")(lambda t: t)


def test_every_score_is_documented():
    for score in scores.SCORES.values():
        assert score.doc and score.higher_is


def test_parse_scores_and_passes():
    assert scores.parse_scores(None) == list(scores.DEFAULT_SCORES)
    assert scores.passes_needed(["ifd", "ppl"]) == {"base"}
    assert scores.passes_needed(["davir"]) == {"base", "ref"}
    with pytest.raises(UserError, match="unknown score"):
        scores.parse_scores("davir,shininess")


def test_golden_values_from_the_whole_pipeline(tiny_model, cache):
    """Ingest -> base pass -> fine-tune -> ref pass -> scores on 20 fixed examples equals the frozen output."""
    table = golden_pipeline.run(cache, tiny_model)
    got = golden_pipeline.as_records(table)
    want = json.loads(golden_pipeline.GOLDEN.read_text())
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert [r["flag"] for r in got] == [r["flag"] for r in want]
    assert "empty_response" in want[16]["flag"] and "duplicate" in want[17]["flag"] and "too_long" in want[18]["flag"]
    for g, w in zip(got, want):
        for name in ("loss_base", "loss_ref", "davir", "rho", "ifd", "ppl", "n_prompt_tokens", "n_response_tokens"):
            if w[name] is None:
                assert g[name] is None, (g["id"], name)
            else:
                assert g[name] == pytest.approx(w[name], rel=1e-4, abs=1e-6), (g["id"], name)
    # fine-tuning on the data lowered the loss of the data
    assert np.nanmean([r["davir"] for r in got if r["davir"] is not None]) > 0
