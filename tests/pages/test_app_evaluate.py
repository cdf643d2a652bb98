"""The Evaluate page, and the Select page's verdict line, through Streamlit's AppTest over real tiny evaluations
(tests.helpers.build_planted_evaluations: the saved selection "clean" of the planted dataset, a plain evaluation of it
with 2 random seeds and full, and the sweep of its rule at 10 % and 25 %). Every number shown is checked against
scoring.queries.evaluate; the Start button queues a job and asks for a worker (mocked: none is spawned)."""
from __future__ import annotations

import pytest

from scoring.queries import evaluate as q
from scoring.selection.saved import SelectionSpec, save_spec
from scoring.store.cache import Cache
from scoring.store.jobs import list_jobs, load_job
from tests import synthetic
from tests.helpers import open_app


@pytest.fixture
def app(planted_evaluations, monkeypatch):
    monkeypatch.setenv("DAVIR_CACHE", str(planted_evaluations["root"]))

    def make(page: str | None = None, **query):
        return open_app(page, {"dataset": "planted", **query})

    return make


@pytest.fixture
def jobs(planted_evaluations):
    cache = Cache(planted_evaluations["root"])
    return {"cache": cache, "plain": load_job(cache, planted_evaluations["plain"]),
            "sweep": load_job(cache, planted_evaluations["sweep"])}


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def test_page_with_no_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DAVIR_CACHE", str(tmp_path / "empty"))
    at = open_app("evaluate")
    assert at.title[0].value == "Evaluate" and not errors(at)
    assert any("No dataset in this cache yet" in i.value for i in at.info)


def test_page_with_no_saved_selection_says_how_to_make_one(app):
    at = app("evaluate", dataset="planted-test")  # ingested, never scored, nothing saved, never evaluated
    assert not errors(at), errors(at)
    info = [i.value for i in at.info]
    assert any("No saved selection of planted-test yet" in i and "--save NAME" in i for i in info)
    assert any("No evaluation of planted-test yet" in i for i in info)
    assert any(link.proto.page == "select" for link in at.get("page_link"))
    assert not at.dataframe and not at.get("plotly_chart")


def test_form_on_a_pair_dataset_offers_the_dpo_recipe(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    synthetic.build_pairs(root, n=60, dataset="pairs")
    save_spec(Cache(root), SelectionSpec(dataset="pairs", scores=("irm",), budget="50%"), "half")
    monkeypatch.setenv("DAVIR_CACHE", str(root))
    at = open_app("evaluate", {"dataset": "pairs"})
    assert not errors(at), errors(at)
    assert at.selectbox(key="eval_selection").value == "half"
    assert at.selectbox(key="eval_objective").options == ["dpo", "davir-dpo"]
    assert not at.radio(key="eval_start_from").disabled and at.radio(key="eval_start_from").value == "theta"
    assert at.number_input(key="eval_epochs").value == 2.0
    assert at.multiselect(key="eval_sets").options == [] and at.number_input(key="eval_holdout").value == 0.1
    assert any("No other ingested dataset holds preference pairs" in c.value for c in at.caption)
    assert any("No evaluation of pairs yet" in i.value for i in at.info)


def test_finished_sweep_shows_its_chart(app, jobs):
    at = app("evaluate")
    assert not errors(at), errors(at)
    assert at.selectbox(key="eval_job").value == jobs["sweep"].id  # the newest finished evaluation
    arms = at.dataframe[0].value
    assert arms["arm"].tolist() == q.arms_frame(jobs["sweep"])["arm"].tolist()
    (chart,) = at.get("plotly_chart")
    spec = chart.proto.spec.replace(" ", "")
    assert '"fill":"tonexty"' in spec and '"name":"rule"' in spec and '"dash":"dash"' in spec  # band, rule, full
    assert "planted-test:nllvsbudget" in spec and "budget(%ofrows)" in spec
    table = at.dataframe[-1].value
    assert table["budget"].tolist() == ["10%", "25%"]
    assert table["rule"].tolist() == q.sweep_frame(jobs["sweep"])["rule"].tolist()


def test_finished_evaluation_shows_arms_comparisons_and_bars(app, jobs):
    at = app("evaluate")
    at.selectbox(key="eval_job").set_value(jobs["plain"].id).run()
    assert not at.exception and not errors(at), errors(at)
    shown = [d.value for d in at.dataframe]
    arms = q.arms_frame(jobs["plain"])
    assert shown[0]["arm"].tolist() == arms["arm"].tolist()
    assert shown[0]["planted-test: nll"].tolist() == arms["planted-test: nll"].tolist()
    comparisons = q.comparisons_frame(jobs["plain"])
    assert shown[1]["verdict"].tolist() == comparisons["verdict"].tolist()
    assert shown[1]["selection − random"].tolist() == comparisons["selection − random"].tolist()
    assert shown[2]["arm"].tolist() == ["full"]  # the other arm against the same random arms
    texts = [t.value for t in at.text]
    assert texts == q.comparison_lines(jobs["plain"]) and texts[0].startswith("planted-test: ")
    (chart,) = at.get("plotly_chart")
    spec = chart.proto.spec.replace(" ", "")
    assert '"type":"bar"' in spec and "planted-test:nllperarm" in spec and '"random-1"' in spec


def test_start_button_queues_an_evaluation(app, planted_evaluations, monkeypatch):
    asked = []
    monkeypatch.setattr("scoring.queries.evaluate.ensure_worker", lambda cache: asked.append(cache.root) or 4242)
    cache = Cache(planted_evaluations["root"])
    before = {j.id for j in list_jobs(cache)}
    at = app("evaluate")
    assert at.selectbox(key="eval_selection").value == "clean"
    assert at.multiselect(key="eval_sets").value == ["planted-test"]
    at.number_input(key="eval_seeds").set_value(1)
    at.number_input(key="eval_epochs").set_value(1.0)
    at.text_input(key="eval_budgets").set_value("50%")
    at.button(key="eval_start").click().run()
    new = [j for j in list_jobs(cache) if j.id not in before]
    try:
        assert not at.exception and not errors(at), errors(at)
        assert len(new) == 1 and new[0].state == "queued" and asked == [cache.root]
        job = new[0]
        assert job.evaluation["rule_of"] == "clean" and job.evaluation["budgets"] == ["50%"]
        assert any(f"Evaluation {job.id}: queued" in s.value for s in at.success)
        command = at.code[-1].value
        assert command == (f"python -m scoring --cache {cache.root} evaluate planted --against random,full --seeds 1 "
                           "--eval planted-test --epochs 1 --objective sft --rule-of clean --budgets 50%")
        progress = [p.proto.text for p in at.get("progress")]
        assert f"Evaluation {job.id[:8]}: queued" in progress
        assert at.selectbox(key="eval_job").value == job.id  # the results section follows the new job
        assert any("is queued" in i.value for i in at.info)
        at.button(key="eval_refresh").click().run()
        assert not at.exception
    finally:
        for job in new:
            (cache.jobs_dir() / f"{job.id}.json").unlink()
    at.multiselect(key="eval_sets").set_value([])
    at.button(key="eval_start").click().run()
    assert not at.exception and any("eval set" in e for e in errors(at)) and len(asked) == 1


def test_select_page_shows_the_verdict_of_this_rule(app, jobs):
    at = app("select")
    assert not errors(at), errors(at)
    at.multiselect(key="sel_scores").set_value(["ppl"]).run()
    assert not at.text  # top 6 % of ppl: never evaluated
    assert any(link.proto.page == "evaluate" for link in at.get("page_link"))
    assert any("evaluate planted NAME" in c.value and "--eval planted-test" in c.value for c in at.code)
    at.radio(key="sel_rule_ppl").set_value("bottom")
    at.radio(key="sel_budget_kind").set_value("count").run()
    at.number_input(key="sel_count").set_value(12).run()
    assert not at.exception and not errors(at), errors(at)
    c = jobs["plain"].result["comparisons"]["planted-test"]
    (line,) = [t.value for t in at.text]
    assert line.startswith(f"Evaluated (job {jobs['plain'].id[:8]}): {c['verdict']} on planted-test — nll selection")
    assert not any("evaluate planted" in code.value for code in at.code)
    at.radio(key="sel_budget_kind").set_value("percent").run()
    at.slider(key="sel_pct").set_value(25.0).run()
    (line,) = [t.value for t in at.text]
    assert line.startswith(f"Evaluated (sweep job {jobs['sweep'].id[:8]} at 25%): ")


def test_evaluation_charts_have_a_log_scale_switch(app, jobs):
    """Issue 14: a log-scale switch on every chart (the Evaluate page's bars and sweep too)."""
    at = app("evaluate")
    at.toggle(key=next(t.key for t in at.toggle if t.key.startswith("eval_sweep_log_"))).set_value(True).run()
    assert '"type":"log"' in at.get("plotly_chart")[0].proto.spec.replace(" ", "")
    at.selectbox(key="eval_job").set_value(jobs["plain"].id).run()
    at.toggle(key=next(t.key for t in at.toggle if t.key.startswith("eval_bars_log_"))).set_value(True).run()
    assert not at.exception and '"type":"log"' in at.get("plotly_chart")[0].proto.spec.replace(" ", "")
