"""The Pairs page and the SFT pages on a preference-pair dataset, through Streamlit's AppTest, against a synthetic
scored pair cache written in the real schemas (tests/synthetic.build_pairs: examples, ref / theta / val pair-pass
parts, a finished pair_score job). The app's LossDiff-IRM selection is checked against the CLI's, id for id."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from scoring.scores import views
from scoring.selection.saved import load_selection
from scoring.store.cache import Cache
from tests import synthetic
from tests.helpers import ok, open_app

N = 150
XSS_CHOSEN = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> fine'
XSS = {"id": "xss", "prompt": synthetic.XSS_PROMPT, "chosen": XSS_CHOSEN, "rejected": "<b>no</b>"}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("app_pairs") / "cache"
    synthetic.build_pairs(root, n=N, dataset="pairs", extra_rows=[XSS])
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
    assert at.slider(key="pairs_band_lossdiff").value == (15, 85) == at.slider(key="pairs_band_irm").value
    assert "--rule lossdiff-irm --band 15-85" in at.code[0].value


def test_moving_the_band_changes_the_kept_count(app):
    at = app("pairs")
    kept, dropped = metric(at, "Kept"), metric(at, "Dropped")
    assert kept + dropped == N + 1 and 0 < kept < N
    at.slider(key="pairs_band_lossdiff").set_value((30, 70)).run()
    assert not at.exception
    narrower = metric(at, "Kept")
    assert narrower < kept
    assert "--rule band:30-70 --rule band:15-85" in at.code[0].value  # one band per score: the general rule
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
