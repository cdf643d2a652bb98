"""scoring.selection.saved (was scoring.selections): running a SelectionSpec against the cache, saving and loading
selections, the CLI line that reproduces one, and comparing two, on a synthetic scored cache."""
from __future__ import annotations

import json
import shlex

import pyarrow.parquet as pq
import pytest

from scoring.errors import UserError
from scoring.scores.views import score_view
from scoring.selection.rules import SelectionResult
from scoring.selection.saved import (
    SelectionSpec,
    compare_selections,
    delete_selection,
    list_selections,
    load_selection,
    load_selection_record,
    reproduce_command,
    run_selection,
    save_selection,
    save_spec,
)
from scoring.store.cache import Cache
from tests import synthetic
from tests.helpers import run

N = 200


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One scored synthetic dataset; each test saves under its own names."""
    path = tmp_path_factory.mktemp("saved") / "cache"
    synthetic.build(path, n=N, dataset="synth", part_rows=50)
    return path


def test_save_spec_then_load_gives_the_same_ids_and_reasons(root):
    cache = Cache(root)
    spec = SelectionSpec("synth", ("davir", "ifd"), "15%", rules=("top", "band:20-80"), quota="category")
    path, result = save_spec(cache, spec, "mixed")
    assert path == cache.selections_dir("synth") / "mixed.json"
    assert len(result.kept_ids) == 30 and len(result.kept_ids) + len(result.dropped) == N
    record, loaded = load_selection(cache, "synth", "mixed")
    assert loaded.kept_ids == result.kept_ids  # same ids, same (best-first) order
    assert dict(loaded.dropped) == dict(result.dropped)
    assert loaded.n_total == N and loaded.tokens_kept == result.tokens_kept > 0
    assert loaded.kept_sha256 == result.kept_sha256 == record["kept_sha256"]
    assert record["reason_counts"] == result.reason_counts() and sum(record["reason_counts"].values()) == N - 30
    assert any(reason.startswith("flagged") for reason in record["reason_counts"])  # synthetic flags some rows
    view = score_view(cache, "synth")
    assert record["runs"] == [view.job.id] and record["quota"] == "category"
    assert record["rules"] == ["top", "band:20-80"] and record["scores"] == ["davir", "ifd"]
    meta = json.loads(cache.dataset_meta_path("synth").read_text())
    assert record["dataset_fingerprint"] == meta["fingerprint"]
    again, _ = run_selection(cache, spec)
    assert again.kept_ids == result.kept_ids  # a spec gives one result


def test_a_saved_record_round_trips(root):
    cache = Cache(root)
    result = SelectionResult(["ex-0000003", "ex-0000001"], {"ex-0000000": "below_cut:davir", "ex-0000002": "flagged:x"},
                             n_total=4, tokens_kept=77)  # fmt: skip
    spec = {"dataset": "synth", "scores": ["davir"], "rule": "top", "rules": ["top"], "budget": "2", "combine": "and",
            "include_flagged": False, "quota": None, "dedup": None, "runs": ["job1"], "note": "kept as given"}
    save_selection(cache, "synth", "hand", result, spec)
    record = load_selection_record(cache, "synth", "hand")
    assert {k: record[k] for k in spec} == spec  # the spec as given, keys this version does not use included
    assert (record["name"], record["n_total"], record["n_kept"], record["n_dropped"], record["tokens_kept"]) == (
        "hand", 4, 2, 2, 77)
    assert record["reason_counts"] == {"below_cut:davir": 1, "flagged:x": 1}
    rec2, loaded = load_selection(cache, "synth", "hand")
    assert rec2 == record
    assert loaded.kept_ids == ["ex-0000003", "ex-0000001"]
    assert dict(loaded.dropped) == {"ex-0000000": "below_cut:davir", "ex-0000002": "flagged:x"}
    rows = pq.read_table(cache.selections_dir("synth") / "hand.parquet").to_pylist()
    assert {(r["id"], r["kept"], r["order"], r["reason"]) for r in rows} == {
        ("ex-0000003", True, 0, ""), ("ex-0000001", True, 1, ""), ("ex-0000000", False, -1, "below_cut:davir"),
        ("ex-0000002", False, -1, "flagged:x")}  # fmt: skip


def test_list_and_delete(tmp_path):
    cache = Cache(tmp_path / "c")
    assert list_selections(cache, "d") == []
    res = SelectionResult(["a"], {"b": "below_cut:davir"}, 2, 10)
    for name in ("zeta", "alpha", "mid.v2"):
        save_selection(cache, "d", name, res, {"dataset": "d", "scores": ["davir"], "budget": "1"})
    save_selection(cache, "other", "alpha", res, {"dataset": "other"})
    assert [r["name"] for r in list_selections(cache, "d")] == ["alpha", "mid.v2", "zeta"]
    assert all(r["n_kept"] == 1 for r in list_selections(cache, "d"))
    delete_selection(cache, "d", "mid.v2")
    assert [r["name"] for r in list_selections(cache, "d")] == ["alpha", "zeta"]
    assert not (cache.selections_dir("d") / "mid.v2.parquet").exists()
    assert [r["name"] for r in list_selections(cache, "other")] == ["alpha"]  # per dataset
    with pytest.raises(UserError, match="No saved selection 'mid.v2'.*alpha, zeta"):
        load_selection(cache, "d", "mid.v2")
    with pytest.raises(UserError, match="No saved selection"):
        delete_selection(cache, "d", "mid.v2")
    with pytest.raises(UserError, match="No saved selection"):
        load_selection(cache, "d", "../other/alpha")  # never a path
    with pytest.raises(UserError, match="is not valid"):
        save_selection(cache, "d", "../escape", res, {})


def test_reproduce_command_through_the_cli_saves_the_same_ids(root):
    cache = Cache(root)
    spec = SelectionSpec("synth", ("davir", "ifd"), "40", rules=("top", "band:10-90"), combine="or",
                         quota="category", dedup=0.9)  # fmt: skip
    _, result = save_spec(cache, spec, "orig")
    record = load_selection_record(cache, "synth", "orig")
    line = reproduce_command(dict(record, name="again"))
    assert line.startswith("python -m scoring select synth --score davir --score ifd --budget 40 ")
    assert "--combine or" in line and "--quota category" in line and "--dedup 0.9" in line
    assert f"--job {record['runs'][0]}" in line and line.endswith("--save again")
    code, out, err = run("--cache", str(root), *shlex.split(line)[3:])
    assert code == 0, out + err
    again_record, again = load_selection(cache, "synth", "again")
    assert again.kept_ids == result.kept_ids and len(again.kept_ids) == 40
    assert dict(again.dropped) == dict(result.dropped)
    assert again_record["kept_sha256"] == record["kept_sha256"]
    assert reproduce_command(again_record) == line  # the copy reproduces itself


def test_compare_two_saved_selections(root):
    cache = Cache(root)
    _, small = save_spec(cache, SelectionSpec("synth", ("davir",), "10%"), "top10")
    _, big = save_spec(cache, SelectionSpec("synth", ("davir",), "25%"), "top25")
    _, other = save_spec(cache, SelectionSpec("synth", ("davir",), "10%", rules=("bottom",)), "bottom10")
    assert set(small.kept_ids) < set(big.kept_ids)  # a top-k is nested in a larger top-k

    cmp = compare_selections(cache, "synth", "top10", "top25", show=1000)
    assert (cmp.n_a, cmp.n_b, cmp.overlap) == (20, 50, 20)
    assert cmp.jaccard == pytest.approx(20 / 50)
    assert cmp.only_a == [] and cmp.only_b == [i for i in big.kept_ids if i not in set(small.kept_ids)]
    assert cmp.left_because == {}
    reasons = {}
    for i in cmp.only_b:  # why top10 dropped what top25 kept
        reasons[small.dropped[i]] = reasons.get(small.dropped[i], 0) + 1
    assert cmp.joined_because == reasons and sum(reasons.values()) == 30

    disjoint = compare_selections(cache, "synth", "top10", "bottom10", show=5)
    assert disjoint.overlap == 0 and disjoint.jaccard == 0.0
    assert disjoint.only_a == small.kept_ids[:5] and disjoint.only_b == other.kept_ids[:5]  # best first, capped
    assert sum(disjoint.left_because.values()) == 20 and sum(disjoint.joined_because.values()) == 20
    same = compare_selections(cache, "synth", "top25", "top25")
    assert same.jaccard == 1.0 and same.only_a == same.only_b == []
    with pytest.raises(UserError, match="No saved selection 'nope'"):
        compare_selections(cache, "synth", "top10", "nope")
