"""scoring.queries.select (what the Select workbench shows about a rule) against a synthetic scored cache, each
number checked against a plain recomputation."""
from __future__ import annotations

import numpy as np
import pytest

from scoring.queries import select as q
from scoring.scores import views
from scoring.scores.reports import mann_whitney_auroc
from scoring.scores.view_reads import column
from scoring.selection.saved import SelectionSpec, run_selection
from tests import synthetic

N = 300


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("qs") / "cache"
    cache = synthetic.build(root, n=N, dataset="synth")
    synthetic.build_pairs(root, n=200, dataset="pairs")
    return cache


@pytest.fixture(scope="module")
def view(cache):
    return views.score_view(cache, "synth")


def run(cache, view, **kw):
    spec = SelectionSpec(dataset=view.dataset, job=view.job.id, **{"scores": ("davir",), "budget": "10%", **kw})
    return spec, run_selection(cache, spec, view)[0]


def test_cut_values_are_the_kept_rows_edges(cache, view):
    values = column(view, "davir")
    spec, result = run(cache, view)
    (cut,) = q.cuts(view, spec, result)
    kept = values[result.kept_pos]
    assert cut.op == "≥" and cut.lo == kept.min() and cut.text == f"davir ≥ {kept.min():.4g}"
    assert cut.edges() == [kept.min()]
    # every unflagged scored row above the edge is kept: the cut is a value cut in disguise
    spec_b, bottom = run(cache, view, rules=("bottom",))
    (cut_b,) = q.cuts(view, spec_b, bottom)
    assert cut_b.op == "≤" and cut_b.hi == values[bottom.kept_pos].max() and cut_b.edges() == [cut_b.hi]
    spec_band, band = run(cache, view, rules=("band:40-60",), budget="all")
    (cut_band,) = q.cuts(view, spec_band, band)
    assert cut_band.op == "between" and len(cut_band.edges()) == 2 and cut_band.lo < cut_band.hi


def test_a_value_cut_at_the_percent_cuts_edge_keeps_the_same_rows(cache, view):
    """The cut shown as a value means what it says: "davir ≥ edge" with every row admitted keeps what 10 % kept."""
    spec, result = run(cache, view)
    (cut,) = q.cuts(view, spec, result)
    _, by_value = run(cache, view, rules=(f"above:{float(cut.lo)!r}",), budget="all")
    assert set(by_value.kept_ids) == set(result.kept_ids)


def test_edge_rows_are_nearest_the_edge_on_each_side(cache, view):
    values = column(view, "davir")
    spec, result = run(cache, view)
    (cut,) = q.cuts(view, spec, result)
    inside, outside = q.edge_rows(view, "davir", cut.lo, result.kept_pos, 5)
    kept = set(result.kept_pos.tolist())
    assert len(inside) == 5 and all(int(p) in kept for p in inside)
    assert len(outside) == 5 and not any(int(p) in kept for p in outside)
    gaps = np.abs(values - cut.lo)
    kept_gaps = np.sort(gaps[result.kept_pos])[:5]
    assert np.allclose(gaps[inside], kept_gaps)  # nearest first
    others = np.setdiff1d(np.flatnonzero(np.isfinite(values)), result.kept_pos)
    assert np.allclose(gaps[outside], np.sort(gaps[others])[:5])


def test_goodness_orders_like_the_rule(cache, view):
    values = column(view, "davir")
    spec, _ = run(cache, view)
    good = q.goodness(view, spec)
    finite = np.isfinite(values)
    assert np.array_equal(np.argsort(good[finite], kind="stable"), np.argsort(values[finite], kind="stable"))
    spec_b, _ = run(cache, view, rules=("bottom",))
    assert np.allclose(q.goodness(view, spec_b)[finite], 100 - good[finite])
    lo, hi = (float(v) for v in np.nanpercentile(values, [30, 70]))
    spec_v, _ = run(cache, view, rules=(f"band-values:{lo!r}-{hi!r}",), budget="all")
    gv = q.goodness(view, spec_v)
    outside = finite & ((values < lo) | (values > hi))
    assert np.isneginf(gv[outside]).all() and np.isfinite(gv[finite & ~outside]).all()


def test_quality_against_labels_matches_a_recount(cache):
    view = views.score_view(cache, "pairs")
    spec = SelectionSpec(dataset="pairs", scores=("margin_base",), budget="50%", job=view.job.id)
    result = run_selection(cache, spec, view)[0]
    got = q.quality(cache, view, spec, result)
    labels = q.labels(cache, view)
    assert got is not None and set(labels) >= {"", "swapped_pair"}
    clean = labels == ""
    kept = np.zeros(view.n_rows, bool)
    kept[result.kept_pos] = True
    assert got.precision == pytest.approx((kept & clean).sum() / kept.sum())
    assert got.recall == pytest.approx((kept & clean).sum() / clean.sum())
    values = column(view, "margin_base")
    ok = np.isfinite(values)
    assert got.auroc == pytest.approx(mann_whitney_auroc(values[ok & clean], values[ok & ~clean]))
    assert got.base_rate == pytest.approx(clean.mean())


def test_quality_is_none_without_labels(cache, view):
    spec, result = run(cache, view)
    assert q.quality(cache, view, spec, result) is None


def test_scatter_points_mark_and_colour(cache, view):
    spec, result = run(cache, view)
    marks = result.kept_pos[:3]
    frame = q.scatter_points(view, "davir", "ifd", 100, result.kept_pos, marks)
    assert len(frame) == 100 and list(frame["pos"]) == sorted(frame["pos"])
    kept = set(result.kept_pos.tolist())
    assert all((r == "kept") == (int(p) in kept) for p, r in zip(frame["pos"], frame["rows"]))
    assert set(frame.loc[frame["marked"], "pos"]) <= set(marks.tolist())
    assert np.allclose(frame["davir"], column(view, "davir")[frame["pos"]])


def test_in_box_finds_every_row_not_just_the_sample(view):
    x, y = column(view, "davir"), column(view, "ifd")
    xr, yr = np.nanpercentile(x, [20, 80]), np.nanpercentile(y, [10, 90])
    got = q.in_box(view, "davir", "ifd", xr[::-1], yr)
    want = np.flatnonzero((x >= xr[0]) & (x <= xr[1]) & (y >= yr[0]) & (y <= yr[1]))
    assert np.array_equal(got, want) and len(got) > 50


def test_brush_rule_reads_the_range():
    assert q.brush_rule(0.5, 1.0, 0.0, 1.0) == "above:0.5"
    assert q.brush_rule(0.3, 0.0, 0.0, 1.0) == "below:0.3"
    assert q.brush_rule(0.2, 0.4, 0.0, 1.0) == "band-values:0.2-0.4"
    assert q.brush_rule(0.5, 1.0, 0.0, 1.0, as_band=True) == "band-values:0.5-1"
    assert q.brush_rule(-0.4, -0.1, -1.0, 1.0) == "band-values:-0.4--0.1"


def test_kept_bins_add_up(cache, view):
    spec, result = run(cache, view)
    bins = q.kept_bins(view, "davir", result.kept_pos, marked=result.kept_pos[:4])
    assert bins["kept"].sum() == len(result.kept_pos) and bins["marked"].sum() == 4
    assert bins["kept"].sum() + bins["dropped"].sum() == np.isfinite(column(view, "davir")).sum()
    logged = q.kept_bins(view, "ppl", result.kept_pos, log=True)
    ppl = column(view, "ppl")
    assert logged["lo"].iloc[0] == pytest.approx(np.log10(ppl[ppl > 0].min()))
    assert logged["kept"].sum() + logged["dropped"].sum() + logged.attrs["left_out"] == np.isfinite(ppl).sum()


def test_edge_rows_match_a_full_scan_at_every_edge(cache, view):
    """The windowed search equals a scan of every row, wherever the edge falls (ends, middle, between values)."""
    values = column(view, "davir")
    spec, result = run(cache, view, budget="30%")
    kept = np.zeros(len(values), bool)
    kept[result.kept_pos] = True
    finite = np.isfinite(values)
    for edge in [*np.nanpercentile(values, [0, 1, 37.5, 50, 99, 100]), -5.0, 5.0]:
        inside, outside = q.edge_rows(view, "davir", float(edge), result.kept_pos, 5)
        gaps = np.abs(values - edge)
        assert np.allclose(gaps[inside], np.sort(gaps[kept])[:5])
        assert np.allclose(gaps[outside], np.sort(gaps[~kept & finite])[:5])
