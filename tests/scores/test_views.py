"""scoring.scores.views and view_reads: a job's score table materialised once, rebuilt when the cache changes, and
the reads the app and selections make from it."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scoring.schema import decode_f16
from scoring.scores import view_reads, views
from scoring.scores.tables import pick_job, score_table
from scoring.store.parts import read_pass
from tests import synthetic

N, PART = 96, 16


@pytest.fixture
def built(cache, monkeypatch):
    """A synthetic scored cache and a list that records every view build."""
    synthetic.build(cache.root, n=N, dataset="synth", part_rows=PART)
    calls = []
    real = views.build_view

    def counting(cache_, dataset, job, key):
        calls.append(key)
        return real(cache_, dataset, job, key)

    monkeypatch.setattr(views, "build_view", counting)
    return cache, calls


def test_a_view_is_built_once_and_reused_while_nothing_changes(built):
    cache, calls = built
    first = views.score_view(cache, "synth")
    assert calls == [first.key]
    again = views.score_view(cache, "synth")
    assert again.key == first.key and again.path == first.path and calls == [first.key]  # no second build
    assert views.score_view(cache, "synth", again.job.id).key == first.key and len(calls) == 1
    assert first.path.parent == views.views_dir(cache, "synth", first.job.id)
    assert first.path.exists() and first.path.with_suffix(".json").exists()
    assert views.view_key(cache, "synth", first.job) == first.key


def test_a_new_part_file_rebuilds_the_view(built):
    cache, calls = built
    ref = pick_job(cache, "synth").ref_pass
    parts = sorted(cache.parts_dir(ref).glob("part-*.parquet"))
    aside = parts[-1].with_name(".aside")
    parts[-1].rename(aside)  # the reference pass is one part short
    partial = views.score_view(cache, "synth")
    assert calls == [partial.key]
    assert np.isnan(view_reads.column(partial, "davir")).sum() == PART
    assert views.score_view(cache, "synth").key == partial.key and len(calls) == 1
    aside.rename(parts[-1])  # its last part lands
    full = views.score_view(cache, "synth")
    assert full.key != partial.key and calls == [partial.key, full.key]
    assert not np.isnan(view_reads.column(full, "davir")).any()
    assert views.score_view(cache, "synth").key == full.key and len(calls) == 2
    # while parts keep landing, a caller may accept a view younger than max_age_s instead of a rebuild
    parts[0].unlink()
    assert views.score_view(cache, "synth", max_age_s=600).key == full.key and len(calls) == 2
    assert views.score_view(cache, "synth").key not in (full.key, partial.key) and len(calls) == 3


def test_the_view_holds_exactly_the_score_table(cache):
    synthetic.build(cache.root, n=N, dataset="synth", part_rows=PART)
    view = views.score_view(cache, "synth")
    table, job = score_table(cache, "synth")
    assert view.job == job and view.dataset == "synth"
    assert view.score_columns == [c for c in table.columns if c not in ("idx", "id", "flag")]
    assert view.n_rows == view.n_scored == N
    got = view_reads.frame(view, list(table.columns))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), table.reset_index(drop=True), check_dtype=False)
    assert view.has_layout and view.group_columns[0] == "cluster"


def test_column_is_numpy_memoised_and_nan_where_missing(cache):
    synthetic.build(cache.root, n=N, dataset="synth", part_rows=PART)
    base = views.score_view(cache, "synth").job.base_pass
    first_part = sorted(cache.parts_dir(base).glob("part-*.parquet"))[0]
    first_part.unlink()  # rows of this part are not scored by the base pass
    missing = sorted(set(range(N)) - set(read_pass(cache, base, ["idx"])["idx"]))
    assert len(missing) == PART
    view = views.score_view(cache, "synth")
    loss = view_reads.column(view, "loss_base")
    assert isinstance(loss, np.ndarray) and loss.dtype == np.float64 and loss.shape == (N,)
    assert np.flatnonzero(np.isnan(loss)).tolist() == missing
    assert view_reads.column(view, "loss_base") is loss  # memoised per view
    ids = view_reads.column(view, "id")
    assert ids.dtype == object and ids[3] == "ex-0000003"
    assert view.n_scored == N - PART
    assert (view_reads.column(view, "scored").astype(bool) == ~np.isnan(loss)).all()


def test_sample_order_is_a_fixed_permutation_whose_prefixes_are_the_samples(cache):
    synthetic.build(cache.root, n=N, dataset="synth", part_rows=PART)
    view = views.score_view(cache, "synth")
    order = view_reads.sample_order(view)
    assert sorted(order.tolist()) == list(range(N))  # every scored row once
    assert order.tolist() != list(range(N))  # shuffled
    keys = view_reads.column(view, "sample_key")
    assert (np.diff(keys[order]) >= 0).all()  # the order is the sample keys' order: a sample of n is its prefix
    assert view_reads.sample_order(view, scored_only=False).tolist() == order.tolist()

    # after a rebuild on fewer scored rows, the order of the rows still scored is unchanged
    ref = view.job.ref_pass
    base = view.job.base_pass
    for key in (base, ref):
        sorted(cache.parts_dir(key).glob("part-*.parquet"))[1].unlink()
    partial = views.score_view(cache, "synth")
    assert partial.key != view.key and partial.n_scored == N - PART
    scored = view_reads.column(partial, "scored").astype(bool)
    part_order = view_reads.sample_order(partial)
    assert part_order.tolist() == [p for p in order.tolist() if scored[p]]
    assert view_reads.sample_order(partial, scored_only=False).tolist() == order.tolist()


def test_embedding_matrix_rows_are_unit_or_zero(cache):
    synthetic.build(cache.root, n=N, dataset="synth", part_rows=PART, dim=12)
    base = views.score_view(cache, "synth").job.base_pass
    sorted(cache.parts_dir(base).glob("part-*.parquet"))[2].unlink()  # rows with no embedding yet
    view = views.score_view(cache, "synth")
    embedded = np.isin(np.arange(N), read_pass(cache, base, ["idx"])["idx"])
    assert embedded.sum() == N - PART
    matrix = view_reads.embedding_matrix(cache, view)
    assert matrix.shape == (N, 12) and matrix.dtype == np.float32
    norms = np.linalg.norm(matrix, axis=1)
    np.testing.assert_allclose(norms[embedded], 1.0, rtol=1e-5)
    assert (matrix[~embedded] == 0).all()
    # centred over the embedded rows, then normalised: cosines match a plain recomputation
    blobs = read_pass(cache, base, ["idx", "embedding"])["embedding"]
    raw = np.stack([decode_f16(b).astype(np.float32) for b in blobs])
    raw -= raw.mean(axis=0)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(matrix[embedded], raw, atol=1e-5)
    assert view_reads.embedding_matrix(cache, view) is matrix  # memoised (and saved beside the view)
    assert view.path.with_name(f"{view.key}.emb.npy").exists()


def test_embedding_matrix_is_none_when_the_pass_kept_no_embeddings(cache):
    synthetic.build(cache.root, n=N, dataset="synth", part_rows=PART, dim=0, layout=False)
    view = views.score_view(cache, "synth")
    assert view_reads.embedding_matrix(cache, view) is None
    assert not list(view.path.parent.glob(f"*{view.key}.emb*"))  # no matrix, and no temporary file left


def test_group_values_clusters_and_original_columns(cache):
    synthetic.build(cache.root, n=N, dataset="synth", part_rows=PART)
    view = views.score_view(cache, "synth")
    clusters = view_reads.group_values(cache, view, "cluster")
    assert len(clusters) == N and 1 < len(clusters.categories) <= views.N_CLUSTERS
    category = view_reads.group_values(cache, view, "category")
    originals = pd.read_parquet(cache.examples_path("synth"))["original"].map(json.loads)
    assert list(category.astype(str)) == [o["category"] for o in originals]
    with pytest.raises(Exception, match="no column 'nope'"):
        view_reads.group_values(cache, view, "nope")
