"""Every page of the app through Streamlit's AppTest, against a small synthetic scored cache (tests/synthetic.py).

Nothing is mocked: the pages read the cache through scoring's views and queries, selections are saved and exported
to files, and the CLI runs in-process for the app-vs-CLI check.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from scoring.jobs.runner import cancel
from scoring.jobs.worker import live_workers
from scoring.store.cache import Cache, atomic_write_json
from scoring.store.jobs import list_jobs
from tests import synthetic
from tests.helpers import ok, open_app

N = 240
XSS = {"id": "xss", "prompt": synthetic.XSS_PROMPT, "response": synthetic.XSS_RESPONSE}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("app") / "cache"
    synthetic.build(root, n=N, dataset="synth", extra_rows=[XSS])
    return root


@pytest.fixture
def app(cache_root, monkeypatch):
    """An AppTest of app.py on the fixture cache (the cache comes from $DAVIR_CACHE, as for the CLI)."""
    monkeypatch.setenv("DAVIR_CACHE", str(cache_root))

    def make(page: str | None = None, **query) -> AppTest:
        return open_app(page, query)

    return make


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.info]
    return "\n".join(str(p) for p in parts)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


@pytest.mark.parametrize("page", ["overview", "inspect", "map", "select", "export", "jobs"])
def test_every_page_renders_without_exception(app, page):
    at = app(page)
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value.lower() == page


def test_sidebar_shows_cache_dataset_and_run(app, cache_root):
    at = app()
    assert at.sidebar.text_input(key="cache_root").value == str(cache_root)
    assert at.sidebar.selectbox(key="dataset").value == "synth"
    assert at.sidebar.selectbox(key="job_id").value
    assert at.query_params["dataset"] == "synth"


def test_overview_counts_and_charts(app):
    at = app()
    assert metric(at, "Examples") == f"{N + 1:,}"
    assert metric(at, "Scored") == f"{N + 1:,}"
    assert len(at.get("vega_lite_chart")) >= 4  # histograms, ECDFs, scatter, Spearman
    assert "drawn with a fixed seed" in texts(at)
    before = at.get("vega_lite_chart")[2].proto.spec
    at.selectbox(key="overview_scatter_score").set_value("rho").run()
    assert at.get("vega_lite_chart")[2].proto.spec != before


def test_unknown_dataset_gives_a_clear_message(app):
    at = app(dataset="nope")
    assert any("No dataset named 'nope'" in e.value for e in at.error)
    assert at.sidebar.selectbox(key="dataset").value == "synth"


def test_inspect_deep_link_opens_the_example_as_text(app):
    at = app("inspect", dataset="synth", example="xss")
    assert at.subheader[0].value == "Example xss"
    code = [c.value for c in at.code]
    assert synthetic.XSS_PROMPT in code and synthetic.XSS_RESPONSE in code
    tokens = [h for h in at.get("html")]
    assert tokens, "the token view is drawn"
    body = tokens[0].proto.body
    assert "<script" not in body.lower() and "onerror=" not in body.lower().replace("onerror=&quot;", "")
    scores = at.dataframe[1].value
    assert set(scores["score"]) >= {"davir", "ifd"} and scores["percentile"].between(0, 100).all()


def test_inspect_sort_and_filters_change_the_table(app):
    at = app("inspect")
    first = at.dataframe[0].value
    assert len(first) == 50
    at.toggle(key="inspect_desc").set_value(False).run()
    ascending = at.dataframe[0].value
    assert ascending["davir"].iloc[0] < first["davir"].iloc[0]
    at.text_input(key="inspect_text").set_value("answer 12").run()
    matched = at.dataframe[0].value
    assert 0 < len(matched) < 50
    assert all("answer 12" in (r.lower() + i) for r, i in zip(matched["response"], matched["id"]))


def test_inspect_unknown_example_is_a_warning(app):
    at = app("inspect", example="no-such-id")
    assert any("No example with id 'no-such-id'" in w.value for w in at.warning)


def test_select_budget_changes_the_kept_count(app):
    at = app("select")
    kept = metric(at, "Kept")
    at.slider(key="sel_pct").set_value(25.0).run()
    assert not at.exception
    assert int(metric(at, "Kept").replace(",", "")) > int(kept.replace(",", ""))
    assert "--budget 25%" in at.code[0].value


def test_select_controls_or_band_quota_dedup(app):
    at = app("select")
    at.multiselect(key="sel_scores").set_value(["davir", "ifd"]).run()
    and_kept = metric(at, "Kept")
    at.radio(key="sel_rule_ifd").set_value("band").run()
    at.radio(key="sel_combine").set_value("or").run()
    assert not at.exception and "--combine or" in at.code[0].value and "band:25-75" in at.code[0].value
    assert metric(at, "Kept") == and_kept  # the same budget is filled either way
    at.selectbox(key="sel_quota").set_value("category").run()
    assert "--quota category" in at.code[0].value
    at.checkbox(key="sel_dedup_on").check().run()
    assert not at.exception and "--dedup 0.95" in at.code[0].value
    at.radio(key="sel_budget_kind").set_value("tokens").run()
    assert not at.exception and "-tokens" in at.code[0].value


def test_select_save_compare_delete(app, cache_root):
    at = app("select")
    at.text_input(key="sel_name").set_value("six").run()
    at.button(key="sel_save").click().run()
    at.slider(key="sel_pct").set_value(12.0).run()
    at.text_input(key="sel_name").set_value("twelve").run()
    at.button(key="sel_save").click().run()
    assert any("Saved twelve" in s.value for s in at.success)
    at.selectbox(key="sel_cmp_a").set_value("six")
    at.selectbox(key="sel_cmp_b").set_value("twelve")
    at.toggle(key="sel_cmp_on").set_value(True).run()
    assert metric(at, "Jaccard") == "0.500" or float(metric(at, "Jaccard")) == pytest.approx(0.5, abs=0.05)
    at.selectbox(key="sel_delete_name").set_value("twelve")
    at.button(key="sel_delete").click().run()
    assert not (cache_root / "selections" / "synth" / "twelve.json").exists()


def test_app_select_and_export_match_the_cli(app, cache_root):
    """Done-when: selecting with a budget and exporting from the app gives the same ids as the CLI."""
    at = app("select")
    at.multiselect(key="sel_scores").set_value(["davir", "ifd"]).run()
    at.radio(key="sel_rule_ifd").set_value("bottom").run()
    at.radio(key="sel_budget_kind").set_value("count").run()
    at.number_input(key="sel_count").set_value(40).run()
    at.selectbox(key="sel_quota").set_value("category").run()
    at.text_input(key="sel_name").set_value("app40").run()
    at.button(key="sel_save").click().run()
    command = at.code[0].value
    at.switch_page("pages/export.py").run()
    at.selectbox(key="export_selection").set_value("app40").run()
    at.radio(key="export_format").set_value("jsonl").run()
    at.button(key="export_go").click().run()
    assert not at.exception and any("Wrote 40 rows" in s.value for s in at.success)
    app_file = cache_root / "exports" / "synth-app40" / "synth-app40.jsonl"
    app_ids = [json.loads(line)["id"] for line in app_file.read_text().splitlines()]

    argv = command.replace("python -m scoring select ", "").replace("--save NAME", "--save cli40").split()
    ok("--cache", str(cache_root), "select", *argv)
    ok("--cache", str(cache_root), "export", "synth", "cli40", "--format", "jsonl")
    cli_file = cache_root / "exports" / "synth-cli40" / "synth-cli40.jsonl"
    cli_ids = [json.loads(line)["id"] for line in cli_file.read_text().splitlines()]
    assert len(app_ids) == 40 and app_ids == cli_ids


def test_export_writes_only_under_the_exports_folder(app, cache_root):
    at = app("select")
    at.text_input(key="sel_name").set_value("exp").run()
    at.button(key="sel_save").click().run()
    at.switch_page("pages/export.py").run()
    at.selectbox(key="export_selection").set_value("exp")
    at.radio(key="export_format").set_value("csv")
    at.checkbox(key="export_scores").check()
    at.text_input(key="export_name").set_value("../../escape/../x").run()
    at.button(key="export_go").click().run()
    assert not at.exception
    written = list((cache_root / "exports").rglob("*.csv"))
    assert written and all(p.resolve().is_relative_to((cache_root / "exports").resolve()) for p in written)
    assert not (cache_root.parent / "escape").exists()
    header = written[0].read_text().splitlines()[0]
    assert "davir" in header and "category" in header
    assert any("--with-scores" in c.value for c in at.code)
    assert at.get("download_button")


def test_map_colours_by_score_and_by_kept(app):
    at = app("select")  # a current selection, so the map can colour kept / dropped
    at.switch_page("pages/map.py").run()
    assert not at.exception
    chart = at.get("plotly_chart")[0]
    assert "\"type\":\"scatter\"" in chart.proto.spec.replace(" ", "")
    assert f"{N + 1:,} points drawn with a fixed seed" in texts(at)
    at.selectbox(key="map_colour").set_value("kept / dropped (current selection)").run()
    assert not at.exception and '"name":"kept"' in at.get("plotly_chart")[0].proto.spec.replace(" ", "")


def test_jobs_page_lists_the_job_and_queues_one(app, cache_root, tiny_model):
    job_path = next((cache_root / "jobs").glob("*.json"))
    original = job_path.read_text()
    record = dict(json.loads(original), timings={"base pass": 1.5, "ref training": 9.0}, peak_mb={"base pass": 900.0},
                  processes=2)  # fmt: skip
    atomic_write_json(job_path, record)
    try:
        at = app("jobs")
    finally:
        job_path.write_text(original)
    assert any("score" in m.value and "synth" in m.value and "on 2 processes" in m.value for m in at.markdown)
    steps = [d.value for d in at.dataframe if "peak MB" in d.value.columns]  # each step's time and peak memory
    assert len(steps) == 1 and steps[0]["peak MB"].tolist()[0] == 900.0 and steps[0]["peak MB"].isna().tolist()[1]
    at.text_input(key="job_model").set_value(str(tiny_model))
    at.multiselect(key="job_scores").set_value(["ppl"])
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception
    assert any("queued" in s.value for s in at.success), [e.value for e in at.error]
    queued = [j for j in list_jobs(Cache(cache_root)) if j.state in ("queued", "running")]
    for job in queued:  # leave nothing running behind the test
        cancel(Cache(cache_root), job.id)
    for pid in live_workers(Cache(cache_root)):
        os.kill(pid, 15)


def test_jobs_page_queues_a_job_with_its_training_and_speed_options(app, cache_root, tiny_model):
    """The form's "Training and speed" options reach the job as the CLI's flags do: score --train-method lora
    --epochs 2 --train-batch 16 --train-tokens 2048 --batch-tokens 4096 --pack off --compile."""
    before = {j.id for j in list_jobs(Cache(cache_root))}
    at = app("jobs")
    at.text_input(key="job_model").set_value(str(tiny_model))
    at.multiselect(key="job_scores").set_value(["davir"])
    at.radio(key="job_train_method").set_value("lora")
    at.number_input(key="job_epochs").set_value(2.0)
    at.number_input(key="job_train_batch").set_value(16)
    at.number_input(key="job_train_tokens").set_value(2048)
    at.number_input(key="job_batch_tokens").set_value(4096)
    at.selectbox(key="job_pack").set_value("off")
    at.checkbox(key="job_compile").check()
    at.button[0].click()
    at.run()
    assert not at.exception and any("queued" in s.value for s in at.success), [e.value for e in at.error]
    cache = Cache(cache_root)
    try:
        (job,) = [j for j in list_jobs(cache) if j.id not in before]
        assert (job.train["method"], job.train["epochs"], job.train["batch_size"]) == ("lora", 2.0, 16)
        assert (job.train["micro_batch_tokens"], job.train["pack"]) == (2048, "off")
        assert job.pass_config["batch_tokens"] == 4096 and job.pass_config["pack"] == "off"
        assert job.pass_config["compile"] is True
    finally:
        for j in list_jobs(cache):  # leave nothing running behind the test
            if j.id not in before and j.state in ("queued", "running"):
                cancel(cache, j.id)
        for pid in live_workers(cache):
            os.kill(pid, 15)


def test_overview_banner_while_a_job_runs(app, cache_root):
    job_path = next((cache_root / "jobs").glob("*.json"))
    job = json.loads(job_path.read_text())
    running = dict(job, id="runningjob0000", state="running", stage="scoring (base model)", done=120, total=N + 1,
                   owner_pid=os.getpid(), created="9999")  # fmt: skip
    atomic_write_json(cache_root / "jobs" / "runningjob0000.json", running)
    try:
        at = app()
        assert any(f"120 of {N + 1:,}" in i.value for i in at.info)
        assert not at.exception
    finally:
        (cache_root / "jobs" / "runningjob0000.json").unlink()



