"""The Pairs page and the SFT pages on a preference-pair dataset, through Streamlit's AppTest, against a synthetic
scored pair cache written in the real schemas (tests/synthetic.build_pairs: examples, ref / theta / val pair-pass
parts, a finished pair_score job with its warm-up report, and a finished influence job over it:
tests/synthetic.add_influence). The app's LossDiff-IRM selection is checked against the CLI's, id for id."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from scoring.errors import UserError
from scoring.scores import views
from scoring.selection.influence import AGREEMENT_SCORES, COMBINED
from scoring.selection.saved import load_selection
from scoring.store.cache import Cache
from scoring.store.jobs import list_jobs, save_job
from tests import synthetic
from tests.helpers import ok, open_app

N = 150
SAMPLE = 40  # pairs in the fixture's influence check
XSS_CHOSEN = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> fine'
XSS = {"id": "xss", "prompt": synthetic.XSS_PROMPT, "chosen": XSS_CHOSEN, "rejected": "<b>no</b>"}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("app_pairs") / "cache"
    synthetic.build_pairs(root, n=N, dataset="pairs", extra_rows=[XSS])
    synthetic.add_influence(root, "pairs", sample=SAMPLE, seed=0)
    synthetic.build(root, n=60, dataset="sft")  # an SFT dataset beside it: the Pairs page must say it is not one
    return root


@pytest.fixture
def app(cache_root, monkeypatch):
    monkeypatch.setenv("DAVIR_CACHE", str(cache_root))

    def make(page: str | None = None, **query) -> AppTest:
        return open_app(page, {"dataset": "pairs", **query})

    return make


def metric(at: AppTest, label: str) -> int:
    return int(next(m.value for m in at.metric if m.label == label).replace(",", ""))


def table_with(at: AppTest, column: str):
    """The first dataframe on the page that has ``column``."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def influence_jobs(cache_root: Path, unfinished: bool = False) -> list:
    return [j for j in list_jobs(Cache(cache_root), "pairs") if j.kind == "influence" and (j.unfinished or not unfinished)]


def test_pair_view_counts_pairs_as_scored(cache_root):
    view = views.score_view(Cache(cache_root), "pairs")
    assert view.n_rows == view.n_scored == N + 1
    assert view.stats["auroc"]["irm"]["swapped_pair"] > 0.9  # planted swaps move against DPO in the fixture
    assert view.stats["spearman"]["irm"]["lossdiff"] is not None


def test_pairs_page_renders_distributions_band_and_auroc(app):
    at = app("pairs")
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Pairs"
    assert metric(at, "Scored") == N + 1
    hist = at.get("vega_lite_chart")[0]
    shown = bytes(hist.proto.data.data)  # the pre-binned frame (Arrow IPC), not the rows
    assert all(s.encode() in shown for s in ("margin_base", "irm", "davir_dpo", "lossdiff")) and len(shown) < 60_000
    auroc = at.dataframe[0].value  # the AUROC table comes first
    assert auroc.loc["irm", "swapped_pair"] > 0.9
    captions = "\n".join(c.value for c in at.caption)
    assert f"{N + 1:,} of {N + 1:,} pairs drawn with a fixed seed" in captions
    scatter = at.get("vega_lite_chart")[1].proto.spec
    assert scatter.count('"rect"') == 2  # the two percentile bands
    assert at.slider(key="pairs_band_lossdiff").value == (12, 88) == at.slider(key="pairs_band_irm").value
    assert "--rule lossdiff-irm --band 12-88" in at.code[0].value


def test_moving_the_band_changes_the_kept_count(app):
    at = app("pairs")
    kept, dropped = metric(at, "Kept"), metric(at, "Dropped")
    assert kept + dropped == N + 1 and 0 < kept < N
    at.slider(key="pairs_band_lossdiff").set_value((30, 70)).run()
    assert not at.exception
    narrower = metric(at, "Kept")
    assert narrower < kept
    assert "--rule band:30-70 --rule band:12-88" in at.code[0].value  # one band per score: the general rule
    at.slider(key="pairs_band_irm").set_value((30, 70)).run()
    assert metric(at, "Kept") < narrower and "--rule lossdiff-irm --band 30-70" in at.code[0].value


def test_pair_view_deep_link_shows_escaped_text_and_token_colours(app):
    at = app("pairs", example="xss")
    assert any(s.value == "Pair xss" for s in at.subheader)
    code = [c.value for c in at.code]
    assert synthetic.XSS_PROMPT in code and XSS_CHOSEN in code and "<b>no</b>" in code  # shown as text
    bodies = [h.proto.body for h in at.get("html")]
    assert len(bodies) == 2  # chosen and rejected token views
    for body in bodies:
        assert "log π_θ" in body and "rgba(" in body
        assert "<script" not in body.lower() and "<img" not in body.lower()
    scores = at.dataframe[-1].value  # the pair scores come last
    assert {"irm", "lossdiff", "margin_base", "davir_dpo"} <= set(scores["score"])
    assert scores["percentile"].between(0, 100).all()
    at.text_input(key="pairs_open").set_value("nope").run()
    assert any("No pair with id 'nope'" in w.value for w in at.warning)


def test_pairs_page_on_an_sft_dataset_says_so(app):
    at = app("pairs", dataset="sft")
    assert not at.exception and not at.error
    assert any("holds SFT examples" in i.value for i in at.info)


@pytest.mark.parametrize("page", ["overview", "inspect", "map", "select", "export", "jobs"])
def test_sft_pages_handle_a_pair_dataset(app, page):
    at = app(page)
    assert not at.error, [e.value for e in at.error]
    if page in ("overview", "inspect", "map", "select"):
        assert any("holds preference pairs" in i.value for i in at.info)
    if page == "inspect":  # stops before the SFT-only example panel
        assert not at.get("html") and not at.dataframe


def test_app_band_selection_and_export_match_the_cli(app, cache_root):
    """Done-when: the LossDiff-IRM selection and export give identical ids from the app and the CLI."""
    at = app("pairs")
    at.slider(key="pairs_band_lossdiff").set_value((20, 80))
    at.slider(key="pairs_band_irm").set_value((20, 80)).run()
    at.text_input(key="pairs_sel_name").set_value("appband").run()
    at.button(key="pairs_save").click().run()
    assert any("Saved appband" in s.value for s in at.success), [e.value for e in at.error]
    command = at.code[0].value
    assert "--band 20-80" in command and command.endswith("--save appband")
    argv = command.split(" select ", 1)[1].replace("--save appband", "--save cliband").split()
    ok("--cache", str(cache_root), "select", *argv)
    ok("--cache", str(cache_root), "select", "pairs", "--rule", "lossdiff-irm", "--band", "20-80", "--budget",
         "100%", "--save", "plain")  # fmt: skip
    app_rec, app_sel = load_selection(Cache(cache_root), "pairs", "appband")
    _, cli_sel = load_selection(Cache(cache_root), "pairs", "cliband")
    _, plain = load_selection(Cache(cache_root), "pairs", "plain")
    assert app_sel.kept_ids == cli_sel.kept_ids == plain.kept_ids and len(app_sel.kept_ids) == metric(at, "Kept")
    assert dict(app_sel.dropped) == dict(plain.dropped) and dict(app_sel.dropped)["p-000001"] == "flagged:duplicate"
    assert app_rec["scores"] == ["lossdiff", "irm"] and app_rec["rule"] == "band:20-80"

    at.switch_page("pages/export.py").run()
    at.selectbox(key="export_selection").set_value("appband").run()
    for fmt in ("jsonl", "parquet", "hf"):
        at.radio(key="export_format").set_value(fmt).run()
        at.button(key="export_go").click().run()
        assert not at.exception and any(f"Wrote {len(app_sel.kept_ids)} rows" in s.value for s in at.success)
    folder = cache_root / "exports" / "pairs-appband"
    rows = [json.loads(line) for line in (folder / "pairs-appband.jsonl").read_text().splitlines()]
    assert {"id", "prompt", "chosen", "rejected"} <= set(rows[0])
    assert sorted(r["id"] for r in rows) == sorted(app_sel.kept_ids)
    assert (folder / "pairs-appband.parquet").is_file() and (folder / "data").is_dir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == len(rows)
    ok("--cache", str(cache_root), "export", "pairs", "cliband", "--format", "jsonl")
    cli_rows = (cache_root / "exports" / "pairs-cliband" / "pairs-cliband.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in cli_rows] == [r["id"] for r in rows]


def test_pairs_page_shows_the_warmups_and_timings(app):
    at = app("pairs")
    assert not at.error, [e.value for e in at.error]
    heads = [s.value for s in at.subheader]
    assert heads.index("Margin distributions") < heads.index("Warm-ups") < heads.index("LossDiff-IRM band")
    warm = table_with(at, "reward accuracy after")
    assert warm[["warm-up", "trained from", "pairs"]].values.tolist() == [
        ["π_θ", "π_ref", "its training pairs"], ["π_θ", "π_ref", "validation pairs (unseen)"],
        ["θ_val", "π_θ", "validation pairs (its training pairs)"]]  # fmt: skip
    w = synthetic.WARMUPS
    assert warm["n"].tolist() == [120, 13, 13]
    assert warm["reward accuracy before"].tolist() == [0.0, 0.0, w["val"]["train"]["before"]["reward_accuracy"]]
    assert warm["reward accuracy after"].tolist() == [w["theta"]["train"]["after"]["reward_accuracy"],
                                                      w["theta"]["validation"]["after"]["reward_accuracy"],
                                                      w["val"]["train"]["after"]["reward_accuracy"]]  # fmt: skip
    assert warm["mean margin after"].tolist() == [0.1234, 0.0456, 0.2101]
    assert warm["preference accuracy before"].tolist() == [0.55, 0.5385, 0.5385]
    timings = table_with(at, "seconds")
    assert dict(zip(timings["step"], timings["seconds"])) == synthetic.TIMINGS
    captions = "\n".join(c.value for c in at.caption)
    assert "before π_θ it is 0 by definition" in captions
    assert any("Step timings" in m.value and "80 s in all" in m.value for m in at.markdown)


def test_pairs_page_shows_the_influence_check(app, cache_root):
    at = app("pairs")
    assert not at.error, [e.value for e in at.error]
    heads = [s.value for s in at.subheader]
    assert heads.index("LossDiff-IRM band") < heads.index("Influence check") < heads.index("Pair view")
    (check,) = influence_jobs(cache_root)
    r = check.result
    table = table_with(at, "spearman with IF")
    assert table["score"].tolist() == ["LossDiff", "IRM", "DAVIR-DPO", "base margin", "LossDiff-IRM (combined)"]
    names = [*AGREEMENT_SCORES, COMBINED]
    assert table["spearman with IF"].tolist() == [r["spearman"][s] for s in names]
    assert table["overlap with TIF"].tolist() == [r["overlap"][s] for s in names]
    assert table["overlap above chance"].tolist() == pytest.approx([r["overlap"][s] - r["chance"] for s in names])
    text = "\n".join(m.value for m in at.markdown)
    assert f"**{SAMPLE:,}** sampled pairs" in text and f"overlaps TIF by **{r['chance']:.2f}** (chance)" in text
    lo, hi = r["auto_band"]["band"]
    assert f"**Auto band {lo:g}-{hi:g}**" in text
    command = next(c.value for c in at.code if "--band auto" in c.value)
    assert command.startswith(f"python -m scoring --cache {cache_root} select pairs --rule lossdiff-irm --band auto "
                              "--budget 100% --job ")  # fmt: skip
    chart = at.get("vega_lite_chart")[2]  # after the margin histograms and the band scatter
    assert '"facet"' in chart.proto.spec and '"influence"' in chart.proto.spec
    points = pa.ipc.open_stream(bytes(chart.proto.data.data)).read_pandas()
    assert len(points) == SAMPLE * len(AGREEMENT_SCORES)  # one row per (sampled pair, score)
    assert not points.duplicated(["id", "score"]).any() and set(points["score"]) == set(AGREEMENT_SCORES)
    assert points.groupby("score")["id"].nunique().eq(SAMPLE).all()


def test_run_influence_check_queues_a_job_for_the_worker(app, cache_root, monkeypatch):
    asked = []
    monkeypatch.setattr("scoring.queries.influence.ensure_worker", lambda cache: asked.append(cache.root) or 4242)
    at = app("pairs")
    assert at.number_input(key="pairs_if_sample").value == 256 and at.number_input(key="pairs_if_seed").value == 0
    at.number_input(key="pairs_if_sample").set_value(32)
    at.number_input(key="pairs_if_seed").set_value(3)
    at.button(key="pairs_if_run").click().run()
    queued = influence_jobs(cache_root, unfinished=True)
    try:
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert len(queued) == 1 and queued[0].state == "queued" and queued[0].influence["sample"] == 32
        job = queued[0]
        assert job.influence["seed"] == 3 and job.source_job == views.score_view(Cache(cache_root), "pairs").job.id
        assert any(f"Influence job {job.id}: queued" in s.value for s in at.success)
        assert asked == [Cache(cache_root).root]  # the worker was asked for, not spawned
        progress = [p.proto.text for p in at.get("progress")]
        assert f"Influence job {job.id[:8]}: queued" in progress
        save_job(Cache(cache_root), replace(job, state="running", stage="influence of the sampled pairs", done=5,
                                            total=32, owner_pid=os.getpid()))  # fmt: skip
        at.run()
        progress = [p.proto.text for p in at.get("progress")]
        assert f"Influence job {job.id[:8]}: influence of the sampled pairs — 5 / 32" in progress
    finally:
        for job in queued:
            (Cache(cache_root).jobs_dir() / f"{job.id}.json").unlink()
    at.number_input(key="pairs_if_sample").set_value(SAMPLE)
    at.number_input(key="pairs_if_seed").set_value(0)
    at.button(key="pairs_if_run").click().run()  # the check the cache already has
    assert any("already done" in s.value for s in at.success) and len(asked) == 1
    assert not influence_jobs(cache_root, unfinished=True)


def test_run_influence_check_shows_a_refusal(app, cache_root, monkeypatch):
    refusal = "job x has no finished warm-ups with lossdiff; run `python -m scoring score pairs`"

    def refuse(*args, **kwargs):
        raise UserError(refusal)

    monkeypatch.setattr("scoring.queries.influence.influence_request", refuse)
    monkeypatch.setattr("scoring.queries.influence.ensure_worker", lambda cache: pytest.fail("no worker on a refusal"))
    at = app("pairs")
    at.button(key="pairs_if_run").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [refusal]
    assert not influence_jobs(cache_root, unfinished=True)
