"""scoring.scores.views and scoring.queries against a synthetic scored cache, each checked against a plain
recomputation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scoring.queries import map as map_queries
from scoring.queries import select as select_queries
from scoring.queries import view as queries
from scoring.queries.jobs import log_tail, progress
from scoring.queries.tokens import token_view
from scoring.scores import view_reads, views
from scoring.scores.tables import score_table
from scoring.store.parts import read_pass
from scoring.schema import decode_f16
from tests import synthetic

N = 300


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic.build(tmp_path_factory.mktemp("q") / "cache", n=N, dataset="synth",
                           extra_rows=[{"id": "xss", "prompt": synthetic.XSS_PROMPT, "response": synthetic.XSS_RESPONSE}])


@pytest.fixture(scope="module")
def view(cache):
    return views.score_view(cache, "synth")


@pytest.fixture(scope="module")
def table(cache):
    return score_table(cache, "synth")[0]


def test_view_holds_exactly_the_score_table(view, table):
    frame = view_reads.frame(view, list(table.columns))
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), table.reset_index(drop=True), check_dtype=False)
    assert view.n_rows == N + 1 and view.n_scored == N + 1
    assert view.group_columns == ["cluster", "category"]


def test_view_is_reused_and_rebuilt_when_parts_change(cache, view):
    again = views.score_view(cache, "synth")
    assert again.key == view.key
    parts = sorted(cache.parts_dir(view.job.ref_pass).glob("part-*.parquet"))
    moved = parts[0].with_name(".hidden")
    parts[0].rename(moved)
    try:
        partial = views.score_view(cache, "synth")
        assert partial.key != view.key
        assert np.isnan(view_reads.column(partial, "davir")).sum() == 64  # one part of 64 rows not there yet
        assert views.score_view(cache, "synth", max_age_s=60).key == partial.key
    finally:
        moved.rename(parts[0])
    assert views.score_view(cache, "synth").n_scored == N + 1


def test_histograms_match_numpy(view, table):
    hist = queries.histograms(view, ["davir", "ppl"])
    for name in ("davir", "ppl"):
        h = hist[hist["score"] == name]
        assert h["count"].sum() == table[name].notna().sum()
        expected, _ = np.histogram(table[name].dropna(), bins=40)
        # DuckDB's and numpy's edge rounding may move a value sitting exactly on an edge by one bin
        assert np.abs(h["count"].to_numpy() - expected).sum() <= 2


def test_ecdf_runs_from_min_to_max(view, table):
    curve = queries.ecdf(view, ["rho"])
    assert curve["value"].iloc[0] == pytest.approx(table["rho"].min())
    assert curve["value"].iloc[-1] == pytest.approx(table["rho"].max())
    assert curve["value"].is_monotonic_increasing and curve["fraction"].iloc[-1] == 1.0


def test_sample_is_fixed_and_nested(view):
    a = queries.sample(view, 50, ["davir"])
    b = queries.sample(view, 50, ["davir"])
    big = queries.sample(view, 120, ["davir"])
    assert a["idx"].tolist() == b["idx"].tolist()
    assert set(a["idx"]) < set(big["idx"]) and len(big) == 120


def test_spearman_matches_pandas(view, table):
    matrix = queries.spearman(view)
    expected = table["davir"].rank().corr(table["ifd"].rank())
    assert matrix.loc["davir", "ifd"] == pytest.approx(expected, abs=1e-4)
    assert matrix.loc["davir", "davir"] == pytest.approx(1.0)


def test_table_page_sorts_filters_and_pages_like_pandas(cache, view, table):
    rows, total = queries.table_page(cache, view, queries.TableFilter(), "davir", True, page=1, page_size=20)
    expected = table.sort_values(["davir", "idx"], ascending=[False, True])
    assert total == N + 1
    assert rows["idx"].tolist() == expected["idx"].iloc[20:40].tolist()
    f = queries.TableFilter(flag="clean", score="ifd", lo=0.8, hi=0.9)
    rows, total = queries.table_page(cache, view, f, "ifd", False, page_size=500)
    mask = (table["flag"] == "") & table["ifd"].between(0.8, 0.9)
    assert total == mask.sum() and rows["idx"].tolist() == table[mask].sort_values(["ifd", "idx"])["idx"].tolist()
    flagged, n_flagged = queries.table_page(cache, view, queries.TableFilter(flag="too_long"), page_size=500)
    assert n_flagged == (table["flag"] == "too_long").sum() and set(flagged["flag"]) <= {"too_long"}


def test_text_search_is_a_case_insensitive_substring(cache, view):
    rows, total = queries.table_page(cache, view, queries.TableFilter(text="<SCRIPT>"), page_size=50)
    assert total == 1 and rows["id"].tolist() == ["xss"]
    rows, total = queries.table_page(cache, view, queries.TableFilter(text="answer 29"), page_size=50)
    assert total == 11  # "Answer 29:" and "Answer 290..299:"
    assert queries.table_page(cache, view, queries.TableFilter(text="100%_"), page_size=50)[1] == 0


def test_example_and_percentiles(cache, view, table):
    idx = queries.find_example(view, "xss")
    assert idx == N and queries.find_example(view, "nope") is None
    ex = queries.example(cache, view, idx)
    assert ex["prompt"] == synthetic.XSS_PROMPT and ex["response"] == synthetic.XSS_RESPONSE
    got = ex["scores"].set_index("score")
    for name in ("davir", "ppl"):
        values = table[name].dropna()
        assert got.loc[name, "percentile"] == pytest.approx(100 * (values < table[name].iloc[idx]).mean())


def test_token_view_is_base_minus_reference(cache, view):
    tokens = token_view(cache, view, 7)
    base = read_pass(cache, view.job.base_pass, ["idx", "token_losses"]).set_index("idx")
    ref = read_pass(cache, view.job.ref_pass, ["idx", "token_losses"]).set_index("idx")
    want = decode_f16(base.loc[7, "token_losses"]).astype(np.float32) - decode_f16(ref.loc[7, "token_losses"]).astype(np.float32)
    np.testing.assert_allclose(tokens["reduction"].to_numpy(), want, rtol=1e-6)
    assert len(tokens) == int(view_reads.column(view, "n_response_tokens")[7])


def test_neighbours_match_brute_force(cache, view):
    near = queries.neighbours(cache, view, 11, k=5)
    vectors = np.stack([decode_f16(b).astype(np.float64) for b in
                        read_pass(cache, view.job.base_pass, ["idx", "embedding"])["embedding"]])
    vectors -= vectors.mean(axis=0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors @ vectors[11]
    sims[11] = -np.inf
    assert near["idx"].tolist() == np.argsort(-sims, kind="stable")[:5].tolist()
    np.testing.assert_allclose(near["cosine"], np.sort(sims)[::-1][:5], rtol=1e-4)


def test_kept_bins_and_map_points(cache, view):
    kept = np.arange(0, N, 3)
    hist = select_queries.kept_bins(view, "davir", kept)
    assert hist["kept"].sum() == len(kept) and (hist["kept"] + hist["dropped"]).sum() == N + 1
    points = map_queries.map_points(cache, view, 100, "kept", kept)
    assert len(points) == 100 and set(points["kept"]) == {"kept", "dropped"}
    assert (points["kept"] == "kept").sum() == np.isin(points["pos"], kept).sum()


def test_progress_and_log_tail(cache):
    assert not progress(cache, "synth").active
    (cache.logs_dir()).mkdir(parents=True, exist_ok=True)
    (cache.logs_dir() / "worker.log").write_text("a\nb\r\nstep 3\n")
    assert log_tail(cache, None, lines=2) == "step 3" or log_tail(cache, None, lines=2).endswith("step 3")


def test_group_values_clusters_and_columns(cache, view):
    clusters = view_reads.group_values(cache, view, "cluster")
    assert len(clusters) == N + 1 and len(clusters.categories) == views.N_CLUSTERS
    cats = view_reads.group_values(cache, view, "category")
    assert set(cats.categories) == set(synthetic.CATEGORIES)
    with pytest.raises(Exception, match="no column 'nope'"):
        view_reads.group_values(cache, view, "nope")
