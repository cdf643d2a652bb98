"""Why each row went: near duplicates name their kept twin (SelectionResult.duplicate_of, the saved duplicate_of
column), a row's reason in words (scoring.selection.explain.reason_of), and kept rows per quota group."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.selection.engine import select
from scoring.selection.explain import group_counts, kept_per_group, reason_of
from scoring.selection.rules import SelectionResult, parse_budget, parse_rule
from scoring.selection.saved import (
    SelectionSpec,
    load_selection,
    run_selection,
    save_selection,
    save_spec,
    select_table,
)
from scoring.store.cache import Cache
from tests import synthetic
from tests.selection.test_engine import ids, table

TOP = parse_rule("top")


def unit(rows) -> np.ndarray:
    emb = np.asarray(rows, dtype=np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


# e1 copies e0, e3 is close to both e0 and e2 (first kept: e0), e5 copies e2; e4 stands alone.
EMB = unit([[1, 0, 0], [0.999, 0.04, 0], [0, 1, 0], [0.7, 0.7, 0.1], [0, 0, 1], [0.03, 0.999, 0]])


def test_near_duplicates_name_their_first_kept_twin():
    t = table(6, a=[6, 5, 4, 3, 2, 1])
    result = select(t, ["a"], TOP, parse_budget("4"), embeddings=EMB, dedup=0.6)
    assert result.kept_ids == ids(0, 2, 4)  # the walk ran out of distinct rows
    assert result.duplicate_of.dtype == np.int64 and result.duplicate_of.tolist() == [-1, 0, -1, 0, -1, 2]
    assert reason_of(result, range(6)) == ["kept", "near_duplicate of e0", "kept", "near_duplicate of e0", "kept",
                                           "near_duplicate of e2"]  # fmt: skip
    assert select(t, ["a"], TOP, parse_budget("3")).duplicate_of is None  # no filter, no twins


def test_twins_across_blocks_and_within_one_match_a_plain_loop():
    rng = np.random.default_rng(7)
    n = 1500
    t = table(n, a=rng.normal(size=n))
    emb = unit(rng.normal(size=(n, 3)))  # 3 dims: many near duplicates, twins in earlier blocks and the same one
    result = select(t, ["a"], TOP, parse_budget("200"), embeddings=emb, dedup=0.97)
    kept, twins = [], {}
    for row in np.argsort(-t["a"].to_numpy(), kind="stable"):
        if len(kept) == 200:
            break
        close = [k for k in kept if emb[row] @ emb[k] > 0.97]
        if close:
            twins[int(row)] = close[0]
            continue
        kept.append(int(row))
    assert result.kept_ids == [f"e{i}" for i in kept]
    dup = result.duplicate_of
    assert {int(i): int(dup[i]) for i in np.flatnonzero(dup >= 0)} == twins and len(twins) > 50
    assert all(result.dropped[f"e{i}"] == "near_duplicate" for i in twins)


def test_reason_of_any_row():
    t = table(6, flags=["", "too_long", "", "", "", ""], a=[0.9, 0.95, np.nan, 0.2, 0.8, 0.7])
    result = select(t, ["a"], parse_rule("bottom"), parse_budget("2"))
    assert result.kept_ids == ids(3, 5)
    assert reason_of(result, [0, 1, 2, 3, 4, 5]) == ["above_cut:a", "flagged:too_long", "unscored", "kept",
                                                     "above_cut:a", "kept"]  # fmt: skip
    assert reason_of(result, np.array([3])) == ["kept"] and reason_of(result, []) == []
    with pytest.raises(ValueError, match="reason per row"):
        reason_of(SelectionResult(["x"], {}, 1, 0), [0])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Cache:
    return synthetic.build(tmp_path_factory.mktemp("reasons") / "cache", n=400, dataset="synth", part_rows=100,
                           layout=False)


def test_saved_duplicate_of_column_and_loading_it_back(cache):
    spec = SelectionSpec("synth", ("davir",), "30%", dedup=0.9)
    _, result = save_spec(cache, spec, "dd")
    assert (result.duplicate_of >= 0).sum() > 0
    rows = pq.read_table(cache.selections_dir("synth") / "dd.parquet").to_pandas()
    ids_ = select_table(run_selection(cache, spec)[1]).ids()
    want = np.where(result.duplicate_of >= 0, ids_[np.maximum(result.duplicate_of, 0)], "")
    assert rows["duplicate_of"].tolist() == want.tolist()
    assert set(rows.loc[rows["duplicate_of"] != "", "reason"]) == {"near_duplicate"}
    assert set(rows.loc[rows["duplicate_of"] != "", "duplicate_of"]) <= set(rows.loc[rows["kept"], "id"])
    record, loaded = load_selection(cache, "synth", "dd")
    positions = np.arange(len(rows))
    assert reason_of(loaded, positions) == reason_of(result, positions)  # the file is in score-table order
    assert loaded.duplicate_of.tolist() == result.duplicate_of.tolist()


def test_a_selection_saved_before_duplicate_of_still_loads(cache):
    res = SelectionResult(["a"], {"b": "near_duplicate", "c": "below_cut:davir"}, 3, 10)
    save_selection(cache, "synth", "old", res, {"dataset": "synth", "scores": ["davir"], "budget": "1", "dedup": 0.9})
    path = cache.selections_dir("synth") / "old.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["duplicate_of"]), path)  # as written by the last version
    record, loaded = load_selection(cache, "synth", "old")
    assert loaded.kept_ids == ["a"] and dict(loaded.dropped) == dict(res.dropped)
    assert loaded.duplicate_of.tolist() == [-1, -1, -1]
    assert reason_of(loaded, [0, 1, 2]) == ["kept", "near_duplicate", "below_cut:davir"]
    assert pa.types.is_string(pq.read_schema(path).field("reason").type)


def test_kept_and_candidates_per_quota_group(cache):
    spec = SelectionSpec("synth", ("davir",), "10%", quota="category")
    result, view = run_selection(cache, spec)
    counts = group_counts(cache, view, spec, result)
    kept = kept_per_group(cache, view, spec, result)
    assert kept == {g: c["kept"] for g, c in counts.items()} and sum(kept.values()) == len(result.kept_ids) == 40
    categories = select_table(view).table["id"].map(dict(zip(*_categories(cache))))
    unflagged = select_table(view).table["flag"].fillna("") == ""
    assert {g: c["candidates"] for g, c in counts.items()} == categories[unflagged].value_counts().to_dict()
    assert kept_per_group(cache, view, SelectionSpec("synth", ("davir",), "10%"), result) == {}


def _categories(cache: Cache) -> tuple[list[str], list[str]]:
    import json

    from scoring.ingest.catalog import load_examples

    examples = load_examples(cache, "synth")
    return examples["id"].tolist(), [json.loads(o)["category"] for o in examples["original"]]
