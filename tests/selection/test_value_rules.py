"""Cuts set as score values (above:V, below:V, band-values:LO-HI), the budget "all", and which side of the cut a
dropped row's reason names (below_cut / above_cut / over_budget), on small hand-computed score tables."""
from __future__ import annotations

import numpy as np
import pytest

from scoring.errors import UserError
from scoring.selection.engine import select
from scoring.selection.rules import Budget, Rule, default_budget, parse_budget, parse_rule
from tests.selection.test_engine import ids, table

ALL = parse_budget("all")


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text, rule", [
    ("above:0.731", Rule("above", lo=0.731, text="above:0.731")),
    ("below:-2.5", Rule("below", hi=-2.5, text="below:-2.5")),
    ("above:1e-3", Rule("above", lo=0.001, text="above:1e-3")),
    ("above:+4", Rule("above", lo=4.0, text="above:+4")),
    ("below:.5", Rule("below", hi=0.5, text="below:.5")),
    ("band-values:0.2-0.8", Rule("vband", 0.2, 0.8, "band-values:0.2-0.8")),
    ("band-values:-0.5--0.1", Rule("vband", -0.5, -0.1, "band-values:-0.5--0.1")),
    ("band-values:1e-3-2.5e1", Rule("vband", 0.001, 25.0, "band-values:1e-3-2.5e1")),
    ("band-values:-1E+2-3", Rule("vband", -100.0, 3.0, "band-values:-1E+2-3")),
    (" Band-Values: -3 - 7 ", Rule("vband", -3.0, 7.0, "Band-Values: -3 - 7")),
])  # fmt: skip
def test_parse_value_rules(text, rule):
    assert parse_rule(text) == rule


@pytest.mark.parametrize("text, says", [
    ("band-values:0.8-0.2", "LO < HI"),
    ("band-values:1-1", "LO < HI"),
    ("band-values:a-b", "band-values:-0.5--0.1"),
    ("band-values:0.5", "band-values:1e-3-2.5e1"),
    ("above:", "above:0.731"),
    ("above:x", "above:0.731"),
    ("below:1-2", "above:0.731"),
])  # fmt: skip
def test_bad_value_rules_say_what_is_valid(text, says):
    with pytest.raises(UserError, match=text.replace("+", r"\+").replace(".", r"\.")) as err:
        parse_rule(text)
    assert says in str(err.value)


def test_budget_all_and_its_default():
    assert parse_budget("all") == Budget("fraction", 1.0, "all") and parse_budget(" ALL ").value == 1.0
    assert default_budget(["above:0.5"]) == default_budget(["band:10-90", "band-values:1-2", "below:3"]) == "all"
    assert default_budget(["top"]) is None and default_budget(["above:0.5", "bottom"]) is None
    assert default_budget([parse_rule("below:1")]) == "all"
    with pytest.raises(UserError, match="'nonsense' is not understood"):
        default_budget(["nonsense"])


# ------------------------------------------------------------------ value rules


def test_above_keeps_values_at_least_v_best_first():
    t = table(6, a=[0.1, 0.5, 0.3, 0.9, 0.7, 0.5])
    res = select(t, ["a"], parse_rule("above:0.5"), ALL)
    assert res.kept_ids == ids(3, 4, 1, 5)  # ranked like top; the edge value 0.5 is kept, ties by idx
    assert dict(res.dropped) == {"e0": "below_value:a", "e2": "below_value:a"}
    cut = select(t, ["a"], parse_rule("above:0.5"), parse_budget("2"))
    assert cut.kept_ids == ids(3, 4)
    assert cut.dropped["e1"] == cut.dropped["e5"] == "below_cut:a" and cut.dropped["e0"] == "below_value:a"


def test_below_keeps_values_at_most_v_lowest_first():
    t = table(5, a=[-3.0, 2.0, -1.0, 0.5, 7.0])
    res = select(t, ["a"], parse_rule("below:0.5"), ALL)
    assert res.kept_ids == ids(0, 2, 3)  # ranked like bottom
    assert dict(res.dropped) == {"e1": "above_value:a", "e4": "above_value:a"}
    cut = select(t, ["a"], parse_rule("below:0.5"), parse_budget("1"))
    assert cut.dropped["e2"] == cut.dropped["e3"] == "above_cut:a"  # kept the low end: the rest lie above the cut


def test_value_band_keeps_lo_to_hi_closest_to_the_centre_first():
    t = table(7, a=[-1.25, -1.0, -0.875, -0.75, -0.5, -0.25, -0.8125])  # binary fractions: exact distances
    res = select(t, ["a"], parse_rule("band-values:-1--0.5"), ALL)  # centre -0.75
    assert res.kept_ids == ids(3, 6, 2, 1, 4)  # |v + 0.75|: 0, 0.0625, 0.125, 0.25, 0.25 (tie by idx); edges kept
    assert dict(res.dropped) == {"e0": "outside_band:a", "e5": "outside_band:a"}
    small = select(t, ["a"], parse_rule("band-values:-1--0.5"), parse_budget("2"))
    assert small.kept_ids == ids(3, 6) and small.dropped["e2"] == "over_budget"


def test_a_value_band_is_on_the_value_axis_not_the_percentile_axis():
    t = table(6, a=[1, 2, 3, 4, 100, 1000])  # skewed: the value centre of 1-100 is 50.5, near no row
    res = select(t, ["a"], parse_rule("band-values:1-100"), ALL)
    assert res.kept_ids == ids(3, 2, 1, 0, 4)  # by |value - 50.5|: 4 is closest, 100 farthest; 1000 is outside
    assert res.dropped == {"e5": "outside_band:a"}
    # A percentile band keeps the middle ranks instead: e2 and e3 are closest to the 50th percentile.
    assert select(t, ["a"], parse_rule("band:0-100"), ALL).kept_ids[:2] == ids(2, 3)


def test_mixed_value_and_percentile_rules_per_score():
    # a: above 0.3 excludes e0; b: top. Goodness on 0..100: a's percentile (like top), b's percentile; MIN.
    t = table(5, a=[0.1, 0.9, 0.5, 0.7, 0.3], b=[0.5, 0.1, 0.9, 0.7, 0.3])
    res = select(t, ["a", "b"], [parse_rule("above:0.3"), parse_rule("top")], parse_budget("2"))
    # pct a: e0 0, e1 100, e2 50, e3 75, e4 25 ; pct b: e0 50, e1 0, e2 100, e3 75, e4 25 ; min: e1 0, e2 50,
    # e3 75, e4 25
    assert res.kept_ids == ids(3, 2)
    assert res.dropped == {"e0": "below_value:a", "e1": "below_cut:b", "e4": "below_cut:a"}
    # bottom on b with a below: on a: the cut labels name the side per limiting score
    res2 = select(t, ["a", "b"], [parse_rule("below:0.7"), parse_rule("bottom")], parse_budget("1"))
    # a <= 0.7 keeps e0, e2, e3, e4 ; 100-pct a: e0 100, e2 50, e3 25, e4 75 ; 100-pct b: e0 50, e2 0, e3 25, e4 75
    assert res2.kept_ids == ids(4)
    assert res2.dropped == {"e1": "above_value:a", "e0": "above_cut:b", "e2": "above_cut:b", "e3": "above_cut:a"}


def test_mixed_value_band_and_top_share_the_0_to_100_scale():
    t = table(5, a=[0.0, 1.0, 2.0, 3.0, 4.0], b=[4.0, 3.0, 2.0, 1.0, 0.0])
    rules = [parse_rule("band-values:0-4"), parse_rule("top")]
    res = select(t, ["a", "b"], rules, parse_budget("2"))
    # a's goodness by value: 0, 50, 100, 50, 0 ; b's percentile: 100, 75, 50, 25, 0 ; min: 0, 50, 50, 25, 0
    assert res.kept_ids == ids(1, 2)
    assert res.dropped == {"e0": "below_cut:a", "e3": "below_cut:b", "e4": "below_cut:a"}


def test_or_with_value_rules():
    t = table(5, a=[1, 2, 3, 4, 5], b=[5, 1, 4, 2, 3])
    res = select(t, ["a", "b"], [parse_rule("above:4"), parse_rule("above:4")], ALL, combine="or")
    assert set(res.kept_ids) == set(ids(0, 2, 3, 4))
    assert res.dropped == {"e1": "below_value:all"}
    mixed = select(t, ["a", "b"], [parse_rule("above:4"), parse_rule("band-values:4-5")], ALL, combine="or")
    assert mixed.dropped == {"e1": "outside_rules:all"}
    both_and = select(t, ["a", "b"], [parse_rule("above:3"), parse_rule("below:3")], ALL)  # and: the first excluding
    assert both_and.kept_ids == ids(3, 4)  # min(pct a, 100 - pct b): e3 75, e4 50
    assert both_and.dropped == {"e0": "below_value:a", "e1": "below_value:a", "e2": "above_value:b"}


def test_value_rules_ignore_unscored_and_flagged_rows():
    t = table(5, flags=["", "too_long", "", "", ""], a=[0.9, 0.95, np.nan, 0.2, 0.8])
    res = select(t, ["a"], parse_rule("above:0.5"), ALL)
    assert res.kept_ids == ids(0, 4)
    assert res.dropped == {"e1": "flagged:too_long", "e2": "unscored", "e3": "below_value:a"}


def test_same_value_rule_on_every_score_matches_the_per_score_form():
    rng = np.random.default_rng(2)
    n = 3000
    t = table(n, a=rng.normal(size=n), b=rng.integers(0, 20, n).astype(float))
    for text in ("above:0.1", "below:0.5", "band-values:-1-1.5"):
        one = select(t, ["a", "b"], parse_rule(text), parse_budget("10%"))
        each = select(t, ["a", "b"], [parse_rule(text), parse_rule(text)], parse_budget("10%"))
        assert one.kept_ids == each.kept_ids and dict(one.dropped) == dict(each.dropped)
        assert len(one.kept_ids) + len(one.dropped) == n


def test_above_matches_a_filter_then_top():
    rng = np.random.default_rng(4)
    n = 5000
    values = rng.normal(size=n)
    t = table(n, a=values)
    res = select(t, ["a"], parse_rule("above:0.25"), parse_budget("300"))
    inside = np.flatnonzero(values >= 0.25)
    assert len(inside) > 300
    assert res.kept_ids == [f"e{i}" for i in inside[np.argsort(-values[inside], kind="stable")][:300]]
    assert res.reason_counts() == {"below_value:a": int((values < 0.25).sum()), "below_cut:a": len(inside) - 300}


# ------------------------------------------------------------------ the side of the cut


def test_cut_labels_name_the_side_of_the_cut():
    t = table(5, a=[0.1, 0.5, 0.3, 0.9, 0.7])
    assert set(select(t, ["a"], parse_rule("top"), parse_budget("2")).dropped.values()) == {"below_cut:a"}
    assert set(select(t, ["a"], parse_rule("bottom"), parse_budget("2")).dropped.values()) == {"above_cut:a"}
    assert set(select(t, ["a"], parse_rule("band:0-100"), parse_budget("2")).dropped.values()) == {"over_budget"}
    assert set(select(t, ["a"], parse_rule("band-values:0-1"), parse_budget("2")).dropped.values()) == {"over_budget"}
    t2 = table(5, a=[0.1, 0.5, 0.3, 0.9, 0.7], b=[1, 2, 3, 4, 5])
    bands = select(t2, ["a", "b"], [parse_rule("band:0-100"), parse_rule("band-values:0-10")], parse_budget("1"))
    assert set(bands.dropped.values()) == {"over_budget"}
