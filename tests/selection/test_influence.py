"""The agreement report of the influence check: Spearman, overlap with TIF, the auto band (scoring.selection.influence)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scoring.selection.influence import AUTO_KEEP, agreement, central, overlap, percentiles
from scoring.selection.pairs import DEFAULT_BAND, select_lossdiff_irm


def table(n: int = 200, seed: int = 0, noise: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    influence = rng.normal(size=n)
    return pd.DataFrame({
        "idx": np.arange(n), "id": [f"p{i}" for i in range(n)], "flag": "", "influence": influence,
        "lossdiff": influence + noise * rng.normal(size=n), "irm": influence + noise * rng.normal(size=n),
        "davir_dpo": rng.normal(size=n), "margin_base": -influence,
    })  # fmt: skip


def test_scores_equal_to_influence_agree_perfectly():
    report = agreement(table())
    assert report["spearman"]["lossdiff"] == 1.0 and report["spearman"]["lossdiff_irm"] == 1.0
    assert report["spearman"]["margin_base"] == -1.0 and abs(report["spearman"]["davir_dpo"]) < 0.2
    assert report["overlap"]["lossdiff_irm"] == 1.0 and report["overlap"]["irm"] == 1.0
    assert report["overlap"]["margin_base"] == 1.0  # the middle of -IF is the middle of IF
    assert report["kept"] == 152 and report["chance"] == 0.76  # 12-88 of both, which coincide here


def test_an_unrelated_score_overlaps_tif_about_by_chance():
    report = agreement(table())
    assert report["overlap"]["davir_dpo"] == pytest.approx(report["chance"], abs=0.12)


def test_the_band_rule_matches_the_selection_engine():
    t = table(noise=1.0)
    for band in (DEFAULT_BAND, (20.0, 70.0)):
        assert agreement(t, band)["kept"] == len(select_lossdiff_irm(t, band).kept_ids)


def test_auto_band_keeps_the_papers_share_and_beats_chance():
    best = agreement(table(noise=0.5))["auto_band"]
    assert AUTO_KEEP[0] <= best["kept"] / 200 <= AUTO_KEEP[1]
    assert best["overlap"] > best["chance"] and best["lift"] == pytest.approx(best["overlap"] - best["chance"], abs=1e-3)


def test_helpers():
    assert percentiles(np.array([3.0, 1.0, 2.0])).tolist() == [100.0, 0.0, 50.0]
    assert central(np.array([0.0, 50.0, 100.0, 45.0]), 2).tolist() == [False, True, False, True]
    assert overlap(np.array([True, True, False]), np.array([True, False, False])) == 1.0
    assert overlap(np.array([False]), np.array([False])) is None
    empty = agreement(table().assign(influence=np.nan))
    assert empty["n"] == 0 and empty["auto_band"] is None
