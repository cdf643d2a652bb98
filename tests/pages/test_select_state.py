"""pages._select_state: the Select controls as a dict, to and from the URL and saved selections (pure functions)."""
from __future__ import annotations

import pytest

from pages import _select_state as S

SCORES = ["davir", "ifd", "ppl", "rho"]


def test_defaults_then_round_trip_through_the_url():
    state = S.default_state(SCORES, 300)
    assert state["scores"] == ["davir"] and S.budget_text(state) == "6%"
    state.update(scores=["davir", "ifd"], rules={"davir": {"kind": "above", "value": 0.731},
                                                 "ifd": {"kind": "band", "lo": 25, "hi": 75}},
                 combine="or", flagged=True, quota="cluster", dedup=0.9, budget_kind="percent", pct=22.5)
    params = S.to_params(state)
    assert params == {"scores": "davir,ifd", "rules": "above:0.731,band:25-75", "budget": "22.5%", "combine": "or",
                      "flagged": "1", "quota": "cluster", "dedup": "0.9"}
    back, problem = S.from_params(params, SCORES, 300)
    assert problem is None
    assert S.to_params(back) == params and back["pct"] == 22.5


@pytest.mark.parametrize("text", ["top", "bottom", "band:10-90", "above:0.5", "below:-2", "band-values:-0.5--0.1",
                                  "band-values:0.001-25"])
def test_rule_texts_round_trip(text):
    assert S.rule_text(S.rule_state(text)) == text


@pytest.mark.parametrize("budget,kind", [("6%", "percent"), ("300", "count"), ("5000-tokens", "tokens"), ("all", "all")])
def test_budgets_round_trip(budget, kind):
    state = S.budget_state(budget, S.default_state(SCORES, 300))
    assert state["budget_kind"] == kind and S.budget_text(state) == budget


def test_a_bad_link_says_why_and_falls_back_to_the_default():
    state, problem = S.from_params({"scores": "nope"}, SCORES, 300)
    assert "nope" in problem and state["scores"] == ["davir"]
    state, problem = S.from_params({"scores": "davir", "rules": "sideways"}, SCORES, 300)
    assert "not valid" in problem and S.rule_text(state["rules"]["davir"]) == "top"
    assert S.from_params({"dataset": "x"}, SCORES, 300) == (S.default_state(SCORES, 300), None)


def test_a_saved_record_fills_the_controls():
    record = {"name": "x", "scores": ["ifd", "davir"], "rules": ["bottom", "top"], "budget": "300",
              "combine": "and", "include_flagged": False, "quota": None, "dedup": 0.95}
    state, problem = S.from_record(record, SCORES, 300)
    assert problem is None
    assert S.to_params(state) == {"scores": "ifd,davir", "rules": "bottom,top", "budget": "300", "combine": "and",
                                  "dedup": "0.95"}
    _, problem = S.from_record({"name": "hand", "manual": True, "scores": []}, SCORES, 300)
    assert "hand-picked" in problem
