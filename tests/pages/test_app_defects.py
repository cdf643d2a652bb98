"""The page defects of issue 14, each through the app (Streamlit's AppTest) or the query behind it, against a small
synthetic scored cache (tests/synthetic.py) in which one row is flagged for two reasons.

Inspect: picking a table row opens it in the same run; the sorted-by column sits next to the id. Overview: flagged
rows counted once; log scale (bins on log10, on by default for ppl); every Spearman label; a message instead of a
blank scatter. Pairs: axis titles and the log switch. Jobs: each job's own log. Sidebar: a mistyped cache folder is
not created. Any page runs first, without app.py. The favicon is a local file. Select: a finished job's unscored
rows are not called a job still running.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from scoring.jobs import worker as worker_mod
from scoring.queries.jobs import log_tail
from scoring.queries.view import flag_counts, flagged_rows, histograms, log_default
from scoring.scores import views
from scoring.scores.tables import score_runs
from scoring.scores.view_reads import column
from scoring.store.cache import Cache, atomic_write_parquet
from scoring.store.jobs import load_job, save_job
from tests import synthetic
from tests.helpers import ok, open_app

ROOT = Path(__file__).resolve().parent.parent.parent
N = 120
TWO_REASONS = "ex-0000003"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("defects") / "cache"
    cache = synthetic.build(root, n=N, dataset="synth")
    path = cache.examples_path("synth")
    table = pq.read_table(path)
    flags = table.column("flag").to_pylist()
    flags[3] = "duplicate,too_long"  # one row, two reasons
    atomic_write_parquet(path, table.set_column(table.schema.get_field_index("flag"), "flag",
                                                 pa.array(flags, pa.string())))  # fmt: skip
    # "half": its reference pass has not landed yet (davir, rho: no value), as in the middle of a job
    synthetic.build(root, n=40, dataset="half")
    shutil.rmtree(cache.parts_dir(score_runs(cache, "half")[0].ref_pass))
    ok("--cache", str(root), "select", "synth", "--score", "davir", "--budget", "10%", "--save", "ten")
    return root


@pytest.fixture
def app(cache_root, monkeypatch):
    monkeypatch.setenv("DAVIR_CACHE", str(cache_root))

    def make(page: str | None = None, **query) -> AppTest:
        return open_app(page, {"dataset": "synth", **query})

    return make


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def chart_bytes(at: AppTest, i: int) -> bytes:
    return bytes(at.get("vega_lite_chart")[i].proto.data.data)


# ---------------------------------------------------------------- Inspect


def test_inspect_picking_a_row_opens_it_in_the_same_run(app):
    at = app("inspect")
    rows = at.dataframe[0].value
    picked = str(rows["id"].iloc[2])
    at.session_state["inspect_table"] = {"selection": {"rows": [2], "columns": [], "cells": []}}  # a click
    at.run()
    assert not at.exception
    assert at.subheader and at.subheader[0].value == f"Example {picked}"
    assert at.query_params["example"] == [picked] or at.query_params["example"] == picked
    at.text_input(key="inspect_open").set_value("ex-0000007").run()  # typing another id still works
    assert at.subheader[0].value == "Example ex-0000007"


def test_inspect_url_example_opens_and_the_sort_column_sits_next_to_the_id(app):
    at = app("inspect", example="ex-0000005")
    assert at.subheader[0].value == "Example ex-0000005"
    at.selectbox(key="inspect_sort").set_value("ppl").run()
    order = list(at.dataframe[0].proto.column_order)
    assert order[:2] == ["id", "ppl"]  # the sorted-by score next to the id, then the other scores, then the text
    assert max(order.index("davir"), order.index("ifd")) < order.index("flag") < order.index("prompt")


# ---------------------------------------------------------------- Overview


def test_overview_counts_flagged_rows_once(app, cache_root):
    view = views.score_view(Cache(cache_root), "synth")
    counts = flag_counts(view)
    assert counts["duplicate"] == 1 and sum(counts.values()) == flagged_rows(view) + 1
    at = app()
    shown = {m.label: m for m in at.metric}
    assert "Flag reasons" not in shown
    assert shown["Flagged rows"].value == f"{flagged_rows(view):,}"
    assert f"{len(counts)} distinct reason" in shown["Flagged rows"].proto.help


def test_log_histogram_bins_on_log10_and_counts_non_positive(cache_root):
    view = views.score_view(Cache(cache_root), "synth")
    assert log_default(view, "ppl") and not log_default(view, "davir")
    values = column(view, "davir")
    values = values[np.isfinite(values)]
    hist = histograms(view, ["ppl", "davir"], log=["davir"])
    logged = hist[hist["score"] == "davir (log10)"]
    positive = values[values > 0]
    assert logged["count"].sum() == len(positive)
    assert logged["lo"].iloc[0] == pytest.approx(np.log10(positive.min()))
    assert logged["hi"].iloc[-1] == pytest.approx(np.log10(positive.max()))
    assert hist.attrs["non_positive"] == {"davir": int((values <= 0).sum())}
    assert (hist["score"] == "ppl").sum() == 40  # the others keep the view's linear bins


def test_overview_charts_have_a_log_scale_on_by_default_for_ppl(app):
    at = app()
    assert at.multiselect(key="overview_log").value == ["ppl"]
    assert b"ppl (log10)" in chart_bytes(at, 0) and b"ppl (log10)" in chart_bytes(at, 1)  # histograms, ECDFs
    at.selectbox(key="overview_scatter_score").set_value("ppl").run()
    assert at.toggle(key="overview_scatter_log_ppl").value
    assert charts(at)[2]["encoding"]["y"]["scale"]["type"] == "log"
    at.multiselect(key="overview_log").set_value([]).run()
    assert b"ppl (log10)" not in chart_bytes(at, 0)


def test_spearman_heatmap_labels_every_row(app):
    heat = charts(app())[3]
    assert heat["encoding"]["y"]["axis"]["labelOverlap"] is False
    assert heat["encoding"]["x"]["axis"]["labelOverlap"] is False


def test_score_vs_length_says_when_its_score_is_not_computed(app):
    at = app(dataset="half")  # mid-job: no reference pass, so no davir yet
    at.selectbox(key="overview_scatter_score").set_value("davir").run()
    assert any("davir is not computed yet for this run" in i.value for i in at.info)
    assert len(at.get("vega_lite_chart")) == 3  # histograms, ECDFs, Spearman: no empty scatter


def band_scatter(at: AppTest) -> dict:
    """The LossDiff-IRM scatter's spec: the layered chart (band rectangles under the points)."""
    return next(spec for spec in charts(at) if "layer" in spec and "irm" in json.dumps(spec))


def test_pairs_scatter_axis_titles_and_log_switch(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    synthetic.build_pairs(root, n=40, dataset="pairs")
    monkeypatch.setenv("DAVIR_CACHE", str(root))
    at = open_app("pairs", {"dataset": "pairs"})
    assert at.multiselect(key="pairs_log").value == []  # signed margins: off by default
    scatter = band_scatter(at)
    titles = {axis: {layer["encoding"][axis]["title"] for layer in scatter["layer"] if axis in layer["encoding"]}
              for axis in ("x", "y")}  # fmt: skip
    assert titles == {"x": {"lossdiff (LossDiff)"}, "y": {"irm (IRM)"}}  # one title per axis, not "lo, hi, lossdiff"
    at.toggle(key="pairs_scatter_log").set_value(True).run()
    scatter = band_scatter(at)
    assert scatter["layer"][-1]["encoding"]["x"]["scale"]["type"] == "symlog"


def test_select_says_a_finished_job_left_rows_unscored_not_that_it_still_runs(tmp_path, monkeypatch):
    """A finished job whose some rows have nothing left to score (all of Alpaca: 700 of 52,002 rows with the tiny
    tokenizer at 256 tokens) is not "still running": the page says those rows have no score and are never kept."""
    root = tmp_path / "cache"
    cache = synthetic.build(root, n=40, dataset="cut")
    for folder in sorted((root / "passes").iterdir()):  # the first row of every pass: no response token scored
        part = sorted((folder / "parts").glob("part-*.parquet"))[0]
        table = pq.read_table(part)
        first = pa.array([i == 0 for i in range(table.num_rows)])
        for name, value in (("n_response_tokens", 0), ("loss_sum", float("nan")), ("alone_loss_sum", float("nan"))):
            column_at = table.schema.get_field_index(name)
            fresh = pc.if_else(first, pa.scalar(value, table.schema.field(name).type), table[name])
            table = table.set_column(column_at, name, fresh)
        atomic_write_parquet(part, table)
    monkeypatch.setenv("DAVIR_CACHE", str(root))
    at = open_app("select", {"dataset": "cut"})
    notes = [m.value for m in at.info] + [w.value for w in at.warning]
    assert not any("still running" in n for n in notes), notes
    assert any("1 of 40 rows have no score" in n for n in notes), notes
    assert load_job(cache, views.score_view(cache, "cut").job.id).state == "done"


# ---------------------------------------------------------------- Jobs


def test_each_job_shows_its_own_log(cache_root, monkeypatch, tmp_path):
    cache = Cache(tmp_path / "jobs-cache")
    synthetic.build(cache.root, n=20, dataset="synth")
    base = score_runs(cache, "synth")[0]
    ids = []
    for name in ("fine-tune", "layout"):
        job = load_job(cache, base.id)
        job.id, job.state, job.stage = f"job{name.replace('-', '')}", "queued", "queued"
        save_job(cache, job)
        ids.append(job.id)

    def fake_run(cache_, job_id, progress=False):  # what a real job prints, and output below Python
        print(f"step 1 of {job_id}")
        print(f"warning from {job_id}", file=sys.stderr)
        os.write(2, f"native output of {job_id}\n".encode())
        job = load_job(cache_, job_id)
        job.progress(state="done", stage="done")
        save_job(cache_, job)
        return job

    monkeypatch.setattr(worker_mod, "run", fake_run)
    (cache.logs_dir()).mkdir(parents=True, exist_ok=True)
    (cache.logs_dir() / "worker.log").write_text("shared worker line\n")
    worker_mod.worker(cache, once=True)
    for mine, other in (ids, ids[::-1]):
        tail = log_tail(cache, mine)
        assert f"step 1 of {mine}" in tail and f"warning from {mine}" in tail and f"native output of {mine}" in tail
        assert other not in tail and "shared worker line" not in tail
    assert log_tail(cache, "neverran") == ""  # never another job's (or the worker's) lines

    monkeypatch.setenv("DAVIR_CACHE", str(cache.root))
    at = open_app("jobs")
    shown = "\n".join(c.value for c in at.code)
    assert all(f"step 1 of {i}" in shown for i in ids)


# ---------------------------------------------------------------- sidebar, deep links, favicon


def test_a_mistyped_cache_folder_is_not_created(app, cache_root):
    at = app()
    typo = cache_root.parent / "cahce"
    at.sidebar.text_input(key="cache_root").set_value(str(typo)).run()
    assert not typo.exists()
    assert any(f"No cache at {typo}" in e.value for e in at.sidebar.error)
    assert at.sidebar.selectbox(key="dataset").value == "synth"  # still the previous folder
    assert at.metric[0].label == "Examples"


@pytest.mark.parametrize("page", ["evaluate", "inspect", "overview", "jobs"])
def test_a_page_runs_first_without_app_py(cache_root, monkeypatch, page):
    monkeypatch.setenv("DAVIR_CACHE", str(cache_root))
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=60)
    at.query_params.update({"dataset": "synth", "example": "ex-0000005"})
    at.run()
    assert not at.exception, at.exception[0].value
    assert at.title[0].value.lower() == page
    assert at.sidebar.selectbox(key="dataset").value == "synth"


def test_the_favicon_is_a_local_file():
    source = (ROOT / "app.py").read_text()
    assert ":material/" not in source.split("st.set_page_config")[1].split("\n")[0]
    assert (ROOT / "static" / "favicon.png").stat().st_size > 0
