"""Selection rules on small hand-computed score tables, budgets, rules and saved selections."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from scoring.errors import UserError
from scoring.selection.engine import select
from scoring.selection.rules import DroppedReasons, Rule, SelectionResult, parse_budget, parse_rule
from scoring.selection.saved import (
    delete_selection,
    list_selections,
    load_selection,
    reproduce_command,
    save_selection,
)
from scoring.store.cache import Cache


def table(n: int, flags=None, tokens=None, **scores) -> pd.DataFrame:
    """A score table of n rows with ids e0..e{n-1}; each keyword is a score column."""
    tok = np.full(n, 10) if tokens is None else np.asarray(tokens)
    data = {
        "idx": np.arange(n, dtype=np.int64),
        "id": [f"e{i}" for i in range(n)],
        "flag": list(flags) if flags is not None else [""] * n,
        "n_prompt_tokens": tok // 2,
        "n_response_tokens": tok - tok // 2,
    }
    data.update({name: np.asarray(values, dtype=float) for name, values in scores.items()})
    return pd.DataFrame(data)


def ids(*numbers: int) -> list[str]:
    return [f"e{i}" for i in numbers]


TOP = parse_rule("top")
BOTTOM = parse_rule("bottom")


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("6%", "fraction", 0.06),
        ("6.5%", "fraction", 0.065),
        ("100%", "fraction", 1.0),
        ("3000", "count", 3000),
        ("1", "count", 1),
        ("6", "count", 6),
        ("2M-tokens", "tokens", 2_000_000),
        ("500k-tokens", "tokens", 500_000),
        ("1200-tokens", "tokens", 1200),
        ("1.5M-tokens", "tokens", 1_500_000),
        (" 2m-tokens ", "tokens", 2_000_000),
    ],
)
def test_parse_budget_valid(text, kind, value):
    budget = parse_budget(text)
    assert budget.kind == kind
    assert budget.value == pytest.approx(value)
    assert budget.text == text.strip()


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "0%", "150%", "6%%", "1.5", "2M", "tokens", "2X-tokens", "-3-tokens"])
def test_parse_budget_invalid(text):
    with pytest.raises(UserError) as err:
        parse_budget(text)
    assert "6%" in str(err.value) and "2M-tokens" in str(err.value)  # the message shows valid forms


def test_parse_rule_valid():
    assert parse_rule("top") == Rule("top", text="top")
    assert parse_rule("bottom").kind == "bottom"
    band = parse_rule("band:25-75")
    assert (band.kind, band.lo, band.hi, band.text) == ("band", 25.0, 75.0, "band:25-75")
    assert parse_rule("band:0-100").hi == 100.0
    assert parse_rule("band:12.5-87.5").lo == 12.5


@pytest.mark.parametrize("text", ["", "best", "band", "band:75-25", "band:50-50", "band:-5-50", "band:10-120", "band:a-b", "top5"])
def test_parse_rule_invalid(text):
    with pytest.raises(UserError) as err:
        parse_rule(text)
    assert "band:25-75" in str(err.value)


# ------------------------------------------------------------------ top / bottom / band


def test_top_keeps_highest_and_names_the_cut():
    t = table(5, a=[0.1, 0.5, 0.3, 0.9, 0.7])
    res = select(t, ["a"], TOP, parse_budget("2"))
    assert res.kept_ids == ids(3, 4)  # best first
    assert dict(res.dropped) == {"e0": "below_cut:a", "e1": "below_cut:a", "e2": "below_cut:a"}
    assert res.n_total == 5
    assert res.tokens_kept == 20
    assert res.reason_counts() == {"below_cut:a": 3}


def test_bottom_keeps_lowest():
    t = table(5, a=[0.1, 0.5, 0.3, 0.9, 0.7])
    assert select(t, ["a"], BOTTOM, parse_budget("3")).kept_ids == ids(0, 2, 1)


def test_two_scores_intersection():
    # e0 is best on a but worst on b: combined goodness = min -> dropped, limited by b.
    t = table(5, a=[5, 4, 3, 2, 1], b=[1, 5, 4, 3, 2])
    res = select(t, ["a", "b"], TOP, parse_budget("2"))
    # percentiles a: e0 100, e1 75, e2 50, e3 25, e4 0 ; b: e0 0, e1 100, e2 75, e3 50, e4 25
    # min: e0 0, e1 75, e2 50, e3 25, e4 0
    assert res.kept_ids == ids(1, 2)
    assert res.dropped["e0"] == "below_cut:b"
    assert res.dropped["e4"] == "below_cut:a"
    assert res.dropped["e3"] == "below_cut:a"


def test_bottom_with_two_scores():
    t = table(5, a=[5, 4, 3, 2, 1], b=[1, 5, 4, 3, 2])
    res = select(t, ["a", "b"], BOTTOM, parse_budget("1"))
    # 100 - pct: a: e0 0, e1 25, e2 50, e3 75, e4 100 ; b: e0 100, e1 0, e2 25, e3 50, e4 75 ; min: e4 75 best
    assert res.kept_ids == ids(4)
    assert res.dropped["e1"] == "above_cut:b"  # bottom keeps the low end: the dropped rows are above the cut
    assert res.dropped["e0"] == "above_cut:a"


def test_band_keeps_middle_closest_to_centre_first():
    t = table(5, a=[10, 20, 30, 40, 50])  # percentiles 0, 25, 50, 75, 100
    res = select(t, ["a"], parse_rule("band:25-75"), parse_budget("100%"))
    assert res.kept_ids == ids(2, 1, 3)  # centre first, then ties by idx
    assert dict(res.dropped) == {"e0": "outside_band:a", "e4": "outside_band:a"}


def test_band_budget_and_two_scores():
    t = table(5, a=[10, 20, 30, 40, 50], b=[50, 40, 30, 20, 10])
    res = select(t, ["a", "b"], parse_rule("band:25-75"), parse_budget("1"))
    assert res.kept_ids == ids(2)
    assert res.dropped == {"e0": "outside_band:a", "e4": "outside_band:a", "e1": "over_budget", "e3": "over_budget"}
    t2 = table(5, a=[10, 20, 30, 40, 50], b=[30, 50, 10, 20, 40])  # b pct: 50, 100, 0, 25, 75
    res2 = select(t2, ["a", "b"], parse_rule("band:25-75"), parse_budget("5"))
    assert res2.kept_ids == ids(3)
    assert res2.dropped["e1"] == "outside_band:b"
    assert res2.dropped["e2"] == "outside_band:b"
    assert res2.dropped["e0"] == "outside_band:a"


def test_band_with_fractional_edges():
    t = table(9, a=np.arange(9))  # percentiles 0, 12.5, ..., 100
    res = select(t, ["a"], parse_rule("band:12.5-37.5"), parse_budget("9"))
    assert res.kept_ids == ids(2, 1, 3)


# ------------------------------------------------------------------ eligibility


def test_flagged_excluded_by_default_and_included_on_request():
    t = table(4, flags=["", "too_long,duplicate", "", "empty_response"], a=[1, 4, 2, 3])
    res = select(t, ["a"], TOP, parse_budget("4"))
    assert res.kept_ids == ids(2, 0)
    assert res.dropped == {"e1": "flagged:too_long", "e3": "flagged:empty_response"}
    res2 = select(t, ["a"], TOP, parse_budget("4"), include_flagged=True)
    assert res2.kept_ids == ids(1, 3, 2, 0)
    assert not res2.dropped


def test_nan_is_unscored():
    t = table(4, flags=["", "", "bad", ""], a=[1.0, np.nan, np.nan, 3.0], b=[1.0, 2.0, 3.0, np.nan])
    res = select(t, ["a", "b"], TOP, parse_budget("4"))
    assert res.kept_ids == ids(0)
    assert res.dropped == {"e1": "unscored", "e2": "flagged:bad", "e3": "unscored"}
    assert select(t, ["a", "b"], TOP, parse_budget("4"), include_flagged=True).dropped["e2"] == "unscored"
    # Only the requested scores count: e3 is fine when selecting on a alone.
    assert select(t, ["a"], TOP, parse_budget("4")).kept_ids == ids(3, 0)


def test_percentiles_are_among_eligible_rows_only():
    # Unscored / flagged rows must not shift the band: eligible a = 10, 20, 30 -> pct 0, 50, 100.
    t = table(5, flags=["", "x", "", "", ""], a=[10, 0, 20, np.nan, 30])
    res = select(t, ["a"], parse_rule("band:40-60"), parse_budget("5"))
    assert res.kept_ids == ids(2)


def test_fraction_uses_all_rows():
    a = np.arange(10, dtype=float)
    a[:5] = np.nan  # half unscored
    t = table(10, a=a)
    assert len(select(t, ["a"], TOP, parse_budget("30%")).kept_ids) == 3  # 30 % of 10 rows, not of 5
    assert select(t, ["a"], TOP, parse_budget("30%")).kept_ids == ids(9, 8, 7)
    assert len(select(t, ["a"], TOP, parse_budget("25%")).kept_ids) == 3  # 2.5 rounds half up
    assert len(select(t, ["a"], TOP, parse_budget("100%")).kept_ids) == 5  # never more than eligible


def test_token_budget_skip_and_stop():
    t = table(5, tokens=[10, 20, 30, 40, 50], a=[5, 4, 3, 2, 1])
    res = select(t, ["a"], TOP, parse_budget("35-tokens"))
    assert res.kept_ids == ids(0, 1)  # 10 + 20 = 30; + 30 would exceed 35: stop (e3 alone would fit, skipped)
    assert res.tokens_kept == 30
    assert res.dropped["e2"] == "below_cut:a"
    assert select(t, ["a"], TOP, parse_budget("30-tokens")).kept_ids == ids(0, 1)  # exactly at the budget
    assert select(t, ["a"], TOP, parse_budget("5-tokens")).kept_ids == []
    assert select(t, ["a"], TOP, parse_budget("1M-tokens")).tokens_kept == 150


def test_token_budget_on_a_larger_table_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    n = 5000
    tok = rng.integers(1, 400, n)
    t = table(n, tokens=tok, a=rng.random(n), b=rng.random(n))
    res = select(t, ["a", "b"], TOP, parse_budget("100k-tokens"))
    full = select(t, ["a", "b"], TOP, parse_budget(str(n)))  # the whole ranking
    running, expected = 0, []
    by_id = dict(zip(t["id"], tok))
    for i in full.kept_ids:
        if running + by_id[i] > 100_000:
            break
        running += by_id[i]
        expected.append(i)
    assert res.kept_ids == expected
    assert res.tokens_kept == running


def test_ties_are_deterministic_by_idx():
    t = table(6, a=[1, 1, 1, 1, 0, 0])
    assert select(t, ["a"], TOP, parse_budget("2")).kept_ids == ids(0, 1)
    assert select(t, ["a"], BOTTOM, parse_budget("3")).kept_ids == ids(4, 5, 0)
    shuffled = t.iloc[[3, 5, 1, 0, 4, 2]].reset_index(drop=True)  # row order must not matter
    assert select(shuffled, ["a"], TOP, parse_budget("2")).kept_ids == ids(0, 1)
    assert select(shuffled, ["a"], BOTTOM, parse_budget("3")).kept_ids == ids(4, 5, 0)


def test_missing_score_column_is_a_user_error():
    t = table(3, a=[1, 2, 3], davir=[1, 2, 3])
    with pytest.raises(UserError) as err:
        select(t, ["a", "rho"], TOP, parse_budget("1"))
    msg = str(err.value)
    assert "missing_score:rho" in msg and "a, davir" in msg


def test_empty_table_and_nothing_eligible():
    t = table(0, a=[])
    res = select(t, ["a"], TOP, parse_budget("10%"))
    assert (res.kept_ids, len(res.dropped), res.n_total) == ([], 0, 0)
    t2 = table(2, a=[np.nan, np.nan])
    assert select(t2, ["a"], parse_rule("band:25-75"), parse_budget("2")).dropped == {"e0": "unscored", "e1": "unscored"}


def test_large_table_is_consistent():
    rng = np.random.default_rng(0)
    n = 50_000
    t = table(n, flags=np.where(rng.random(n) < 0.02, "too_long", ""), a=rng.random(n), b=rng.normal(size=n))
    res = select(t, ["a", "b"], TOP, parse_budget("6%"))
    assert len(res.kept_ids) == 3000
    assert len(res.kept_ids) + len(res.dropped) == n
    assert not set(res.kept_ids) & set(res.dropped)
    # Every kept row beats every dropped eligible row on combined goodness (= min percentile).
    elig = t[t["flag"] == ""].copy()
    pct = elig[["a", "b"]].rank(method="average").sub(1).mul(100 / (len(elig) - 1))
    combined = pct.min(axis=1).to_numpy()
    kept = elig["id"].isin(res.kept_ids).to_numpy()
    assert combined[kept].min() >= combined[~kept].max()


# ------------------------------------------------------------------ saved selections


def spec_for(name: str, **extra) -> dict:
    spec = {"dataset": "alpaca", "dataset_fingerprint": "fp1", "scores": ["davir"], "rule": "top",
            "budget": "40%", "include_flagged": False, "runs": ["run-abc"], "name": name}
    spec.update(extra)
    return spec


def test_save_load_list_delete_round_trip(tmp_path):
    cache = Cache(tmp_path / "cache")
    t = table(5, flags=["", "", "", "dup", ""], davir=[0.1, 0.5, 0.3, 0.9, 0.7])
    res = select(t, ["davir"], TOP, parse_budget("40%"))
    path = save_selection(cache, "alpaca", "top40", res, spec_for("top40"))
    assert path == cache.selections_dir("alpaca") / "top40.json"
    assert (cache.selections_dir("alpaca") / "top40.parquet").exists()

    record, loaded = load_selection(cache, "alpaca", "top40")
    assert loaded.kept_ids == res.kept_ids == ids(4, 1)
    assert dict(loaded.dropped) == dict(res.dropped)
    assert (loaded.n_total, loaded.tokens_kept) == (5, 20)
    assert record["n_kept"] == 2 and record["n_total"] == 5 and record["tokens_kept"] == 20
    assert record["reason_counts"] == {"below_cut:davir": 2, "flagged:dup": 1}
    assert record["kept_sha256"] == hashlib.sha256("\n".join(sorted(res.kept_ids)).encode()).hexdigest()
    assert record["scores"] == ["davir"] and record["runs"] == ["run-abc"] and record["created"]

    frame = pd.read_parquet(cache.selections_dir("alpaca") / "top40.parquet")
    assert list(frame.columns) == ["id", "kept", "order", "reason", "duplicate_of"]
    assert set(frame["duplicate_of"]) == {""}  # no near-duplicate filter
    assert frame.set_index("id").loc["e4", "order"] == 0 and frame.set_index("id").loc["e3", "reason"] == "flagged:dup"
    assert frame.set_index("id").loc["e0", "order"] == -1

    save_selection(cache, "alpaca", "a-first", res, spec_for("a-first"))
    assert [r["name"] for r in list_selections(cache, "alpaca")] == ["a-first", "top40"]
    assert list_selections(cache, "other") == []

    delete_selection(cache, "alpaca", "top40")
    assert [r["name"] for r in list_selections(cache, "alpaca")] == ["a-first"]
    assert not (cache.selections_dir("alpaca") / "top40.parquet").exists()
    with pytest.raises(UserError) as err:
        load_selection(cache, "alpaca", "top40")
    assert "a-first" in str(err.value)
    with pytest.raises(UserError):
        delete_selection(cache, "alpaca", "top40")


def test_save_a_plain_dict_result(tmp_path):
    cache = Cache(tmp_path)
    res = SelectionResult(kept_ids=["x", "y"], dropped={"z": "below_cut:a"}, n_total=3, tokens_kept=7)
    save_selection(cache, "d", "s", res, spec_for("s", dataset="d"))
    record, loaded = load_selection(cache, "d", "s")
    assert loaded.kept_ids == ["x", "y"] and dict(loaded.dropped) == {"z": "below_cut:a"}
    assert isinstance(loaded.dropped, DroppedReasons) and loaded.dropped == {"z": "below_cut:a"}
    assert json.loads((cache.selections_dir("d") / "s.json").read_text())["n_dropped"] == 1


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../up", "has space", "x" * 65])
def test_bad_selection_names(tmp_path, name):
    res = SelectionResult(["x"], {}, 1, 0)
    with pytest.raises(UserError):
        save_selection(Cache(tmp_path), "d", name, res, spec_for(name))


def test_reproduce_command():
    assert reproduce_command(spec_for("top6", scores=["davir", "ifd"], budget="6%")) == (
        "python -m scoring select alpaca --score davir --score ifd --budget 6% --rule top --job run-abc --save top6"
    )
    cmd = reproduce_command(spec_for("mid", rule="band:25-75", include_flagged=True, runs=["r1", "r2"], budget="2M-tokens"))
    assert cmd == ("python -m scoring select alpaca --score davir --budget 2M-tokens --rule band:25-75 "
                   "--include-flagged --job r1 --save mid")
    assert "'my data'" in reproduce_command(spec_for("s", dataset="my data", runs=[]))


# ------------------------------------------------------------------ combine, per-score rules, quotas, dedup


def test_or_is_a_union_of_the_top_sets():
    t = table(6, a=[6, 5, 1, 2, 3, 4], b=[1, 2, 6, 5, 4, 3])
    result = select(t, ["a", "b"], TOP, parse_budget("2"), combine="or")
    assert sorted(result.kept_ids) == ids(0, 2)  # each score's best row
    and_result = select(t, ["a", "b"], TOP, parse_budget("2"))
    assert set(and_result.kept_ids).isdisjoint({"e0", "e2"})  # AND prefers rows good on both
    assert result.dropped["e1"] == "below_cut:a"


def test_or_band_admits_a_row_inside_any_band():
    t = table(5, a=[1, 2, 3, 4, 5], b=[5, 4, 3, 2, 1])
    band = parse_rule("band:0-30")
    result = select(t, ["a", "b"], band, parse_budget("100%"), combine="or")
    assert sorted(result.kept_ids) == ids(0, 1, 3, 4)
    assert result.dropped["e2"] == "outside_band:all"


def test_one_rule_per_score():
    t = table(5, a=[1, 2, 3, 4, 5], b=[1, 2, 3, 4, 5])
    result = select(t, ["a", "b"], [TOP, BOTTOM], parse_budget("5"))
    assert len(result.kept_ids) == 5 and result.kept_ids[0] == "e2"  # the middle row is the best compromise
    with pytest.raises(UserError, match="one per score"):
        select(t, ["a", "b"], [TOP, BOTTOM, TOP], parse_budget("1"))
    with pytest.raises(UserError, match="Combine"):
        select(t, ["a"], TOP, parse_budget("1"), combine="xor")


def test_quota_keeps_each_groups_share():
    n = 40
    groups = ["x"] * 30 + ["y"] * 10
    t = table(n, a=list(range(n)))  # higher a is better: every y row is better than every x row
    result = select(t, ["a"], TOP, parse_budget("8"), groups=groups)
    kept = result.kept_ids
    assert len(kept) == 8
    assert sum(1 for i in kept if int(i[1:]) >= 30) == 2  # y has 10/40 of the pool -> 2 of 8
    assert kept[:2] == ids(39, 38)  # ordered by the global ranking
    assert result.dropped["e37"] == "over_quota:y"
    plain = select(t, ["a"], TOP, parse_budget("8"))
    assert all(int(i[1:]) >= 32 for i in plain.kept_ids)


def test_quota_with_a_token_budget():
    t = table(20, tokens=[10] * 20, a=list(range(20)))
    groups = ["x"] * 10 + ["y"] * 10
    result = select(t, ["a"], TOP, parse_budget("100-tokens"), groups=groups)
    assert len(result.kept_ids) == 10 and result.tokens_kept == 100
    assert sorted(int(i[1:]) for i in result.kept_ids) == list(range(5, 10)) + list(range(15, 20))


def test_dedup_skips_near_copies_and_fills_the_budget():
    t = table(6, a=[6, 5, 4, 3, 2, 1])
    emb = np.array([[1, 0], [0.999, 0.04], [0, 1], [0.7, 0.7], [-1, 0], [0, -1]], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    result = select(t, ["a"], TOP, parse_budget("3"), embeddings=emb, dedup=0.95)
    assert result.kept_ids == ids(0, 2, 3)
    assert result.dropped["e1"] == "near_duplicate"
    assert result.dropped["e4"] == "below_cut:a"
    same = select(t, ["a"], TOP, parse_budget("3"), embeddings=emb, dedup=1.0)
    assert same.kept_ids == select(t, ["a"], TOP, parse_budget("3")).kept_ids
    with pytest.raises(UserError, match="needs embeddings"):
        select(t, ["a"], TOP, parse_budget("3"), dedup=0.9)


def test_dedup_matches_a_plain_loop_with_quotas_and_tokens():
    rng = np.random.default_rng(3)
    n = 400
    t = table(n, tokens=rng.integers(5, 30, n), a=rng.normal(size=n))
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    groups = rng.choice(["p", "q", "r"], n)
    result = select(t, ["a"], TOP, parse_budget("1500-tokens"), groups=groups, embeddings=emb, dedup=0.9)
    # The same walk written as a plain loop.
    tok = t["n_prompt_tokens"].to_numpy() + t["n_response_tokens"].to_numpy()
    share = {g: 1500 * tok[groups == g].sum() / tok.sum() for g in "pqr"}
    used, stopped, kept = {g: 0 for g in "pqr"}, set(), []
    for row in np.argsort(-t["a"].to_numpy(), kind="stable"):
        g = groups[row]
        if g in stopped:
            continue
        if any(emb[row] @ emb[k] > 0.9 for k in kept):
            continue
        if used[g] + tok[row] > share[g]:
            stopped.add(g)
            continue
        used[g] += tok[row]
        kept.append(row)
    assert result.kept_ids == [f"e{i}" for i in kept]


def test_select_table_gives_the_same_result_as_a_dataframe():
    from scoring.selection.engine import SelectTable

    rng = np.random.default_rng(5)
    n = 2000
    flags = np.where(rng.random(n) < 0.05, "too_long,x", "")
    t = table(n, flags=flags, a=rng.integers(0, 50, n), b=rng.normal(size=n))
    prepared = SelectTable(t)
    for rule, budget, combine in [(TOP, "10%", "and"), (parse_rule("band:20-60"), "100", "or"),
                                  ([BOTTOM, TOP], "3000-tokens", "and")]:
        want = select(t, ["a", "b"], rule, parse_budget(budget), combine=combine)
        for _ in range(2):  # the second call reuses the cached ranks
            got = select(prepared, ["a", "b"], rule, parse_budget(budget), combine=combine)
            assert got.kept_ids == want.kept_ids and dict(got.dropped) == dict(want.dropped)
            assert got.reason_counts() == want.reason_counts()


def test_next_pos_lists_the_best_rows_below_the_cut():
    t = table(10, a=list(range(10)))
    result = select(t, ["a"], TOP, parse_budget("3"))
    assert result.kept_pos.tolist() == [9, 8, 7] and result.next_pos.tolist() == [6, 5, 4, 3, 2]


def test_reproduce_command_with_the_new_options():
    spec = {"dataset": "d", "scores": ["davir", "ifd"], "rules": ["top", "band:10-90"], "combine": "or",
            "budget": "6%", "quota": "cluster", "dedup": 0.95, "runs": ["j1"], "name": "x"}
    assert reproduce_command(spec) == ("python -m scoring select d --score davir --score ifd --budget 6% --rule top "
                                       "--rule band:10-90 --combine or --quota cluster --dedup 0.95 --job j1 --save x")
