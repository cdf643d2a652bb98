"""The Map page through AppTest (colour by a score, by the current rule, by a saved selection; a chosen set saved as a
selection; a clicked example opened in place with its neighbours highlighted) and its figure builder
(pages/_map_figure.py: legend placement, trace order, escaping, event handling)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest

from pages._map_figure import SVG_MAX, chosen, fresh_choice, log_ticks, map_figure
from scoring.queries.map import save_hand_picked
from scoring.scores.view_reads import column
from scoring.scores.views import score_view
from scoring.selection.saved import load_selection_record
from scoring.store.cache import Cache
from tests import synthetic
from tests.helpers import open_app

N = 120
XSS = {"id": "xss", "prompt": synthetic.XSS_PROMPT, "response": synthetic.XSS_RESPONSE}


def frame(n: int = 6, colour: str = "davir") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "pos": np.arange(n) * 2, "id": [f"r{i}" for i in range(n - 1)] + ["<img src=x onerror=alert(1)>"],
        "x": rng.normal(size=n).astype(np.float32), "y": rng.normal(size=n).astype(np.float32),
        "snippet": ["text <script>alert(1)</script>"] * n, colour: np.r_[rng.gamma(2, size=n - 1), np.nan],
        "kept": (["kept", "dropped"] * n)[:n],
    })  # fmt: skip


def spec(fig) -> dict:
    return json.loads(pio.to_json(fig.to_dict(), validate=False))


# ---------------------------------------------------------------- the figure


def test_legend_and_colour_bar_lie_under_the_plot_not_under_the_mode_bar():
    layout = spec(map_figure(frame(), "davir"))["layout"]
    assert layout["legend"]["orientation"] == "h" and layout["legend"]["y"] < 0 and layout["legend"]["yanchor"] == "top"
    bar = spec(map_figure(frame(), "davir"))["data"][-1]["marker"]["colorbar"]
    assert bar["orientation"] == "h" and bar["y"] < 0
    assert layout["margin"]["t"] >= 30  # room for the mode bar above the points
    assert layout["dragmode"] == "pan"  # Streamlit selects a clicked point only outside lasso / box mode


def test_kept_is_drawn_on_top_of_dropped():
    data = spec(map_figure(frame(), "kept", names=("kept by top6", "dropped")))["data"]
    assert [t["name"] for t in data] == ["dropped", "kept by top6"]
    assert all(t["type"] == "scatter" for t in data)
    assert spec(map_figure(frame(SVG_MAX + 1), "kept"))["data"][0]["type"] == "scattergl"


def test_score_colouring_puts_rows_without_a_value_beneath_and_logs_positive_values():
    data = spec(map_figure(frame(), "davir", log=True))["data"]
    assert [t["name"] for t in data] == ["no davir > 0", "davir"]
    bar = data[1]["marker"]["colorbar"]
    assert bar["title"]["text"] == "davir (log scale)" and bar["ticktext"]
    vals, text = log_ticks(0.0, 2.0)
    assert text == ["1", "2", "5", "10", "20", "50", "100"] and vals[3] == pytest.approx(1.0)


def test_highlight_dims_the_others_beneath():
    data = spec(map_figure(frame(), "kept", highlight=[0, 2]))["data"]
    assert data[0]["name"] == "others" and data[0]["marker"]["opacity"] < 1
    assert [t["name"] for t in data[1:]] == ["dropped (highlighted)", "kept (highlighted)"]
    assert all("line" in t["marker"] for t in data[1:])


def test_hover_text_is_escaped():
    text = pio.to_json(map_figure(frame(), "davir").to_dict(), validate=False)
    assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;" in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_events_give_view_positions_and_new_ones_only():
    lasso = {"selection": {"points": [{"customdata": [4, 0.5]}, {"customdata": [8, None]}], "lasso": [{"x": [1]}]}}
    click = {"selection": {"points": [{"customdata": {"0": 6, "1": 1.0}}], "box": [], "lasso": []}}  # as Chromium sends
    assert chosen(lasso) == ([4, 8], False)
    assert chosen(click) == ([6], True)
    state = {}
    assert fresh_choice(lasso, state, "seen") == ([4, 8], False)
    assert fresh_choice(lasso, state, "seen") is None  # handed back on the next rerun
    assert fresh_choice({"selection": {}}, state, "seen") is None  # a redrawn chart: no selection
    assert fresh_choice(lasso, state, "seen") == ([4, 8], False)  # the same points chosen again after a redraw


# ---------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("appmap") / "cache"
    cache = synthetic.build(root, n=N, dataset="synth", extra_rows=[XSS])
    save_hand_picked(cache, score_view(cache, "synth"), "picked", [1, 2, 3])
    return root


@pytest.fixture
def app(cache_root, monkeypatch):
    monkeypatch.setenv("DAVIR_CACHE", str(cache_root))
    return lambda page="map": open_app(page)


def chart(at) -> dict:
    return json.loads(at.get("plotly_chart")[0].proto.spec)


def names(at) -> list[str]:
    return [t["name"] for t in chart(at)["data"]]


def test_colours_by_a_score_with_log_for_ppl(app):
    at = app()
    assert any(f"{N + 1:,} points drawn with a fixed seed" in c.value for c in at.caption)
    assert names(at) == ["davir"] and chart(at)["layout"]["legend"]["y"] < 0
    at.selectbox(key="map_colour").set_value("ppl").run()
    assert not at.exception
    assert chart(at)["data"][-1]["marker"]["colorbar"]["title"]["text"] == "ppl (log scale)"
    at.toggle(key="map_log_ppl").set_value(False).run()
    assert chart(at)["data"][-1]["marker"]["colorbar"]["title"]["text"] == "ppl"


def test_colours_by_a_saved_selection(app):
    at = app()
    at.selectbox(key="map_colour").set_value("saved selection: picked").run()
    assert not at.exception
    assert names(at) == ["dropped", "kept by picked"]
    kept = chart(at)["data"][1]
    assert kept["text"] and len(kept["text"]) == 3


def test_colours_by_the_current_rule(app):
    at = app("select")
    at.switch_page("pages/map.py").run()
    assert "kept / dropped (current selection)" in at.selectbox(key="map_colour").options
    at.selectbox(key="map_colour").set_value("kept / dropped (current selection)").run()
    assert not at.exception and names(at) == ["dropped", "kept"]


def test_a_chosen_set_is_listed_and_saved_as_a_hand_picked_selection(app, cache_root):
    at = app()
    view = score_view(Cache(cache_root), "synth")
    at.session_state["map_chosen"] = {"dataset": "synth", "job": view.job.id, "pos": [4, 5, 6]}
    at.run()
    assert any("3 examples chosen" in s.value for s in at.subheader)
    at.text_input(key="map_save_name").set_value("picked").run()
    at.button(key="map_save").click().run()
    assert any("already exists" in e.value for e in at.error)
    assert load_selection_record(Cache(cache_root), "synth", "picked")["n_kept"] == 3  # still the fixture's set
    at.text_input(key="map_save_name").set_value("lasso-a").run()
    at.button(key="map_save").click().run()
    assert any("Saved 3 hand-picked" in s.value for s in at.success), [e.value for e in at.error]
    record = load_selection_record(Cache(cache_root), "synth", "lasso-a")
    assert record["manual"] is True and record["rule"] == "manual" and record["n_kept"] == 3


def test_a_clicked_example_opens_in_place_and_its_neighbours_light_up(app, cache_root):
    at = app()
    view = score_view(Cache(cache_root), "synth")
    pos = int(np.flatnonzero(column(view, "id") == "xss")[0])
    at.session_state["map_open"] = {"dataset": "synth", "job": view.job.id, "pos": pos}
    at.run()
    assert not at.exception
    assert any(s.value == "Example xss" for s in at.subheader)
    assert [c.value for c in at.code][:2] == [synthetic.XSS_PROMPT, synthetic.XSS_RESPONSE]  # plain text
    assert any("/inspect?" in m.value and "example=xss" in m.value for m in at.markdown)
    at.button(key="map_show_near").click().run()
    assert not at.exception
    assert names(at)[0] == "others" and names(at)[1].endswith("(highlighted)")
    lit = sum(len(t["text"]) for t in chart(at)["data"][1:])
    assert lit == 1 + 8  # the example and its 8 neighbours
    assert any("highlighted" in i.value for i in at.info)
    at.button(key="map_highlight_clear").click().run()
    assert names(at) == ["davir"]
