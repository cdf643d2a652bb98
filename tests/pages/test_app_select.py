"""The Select workbench through AppTest: the state survives every control switch, lives in the URL and comes back
from saved selections; value cuts; out-of-range numbers; saving asks before replacing; comparisons and reasons.

Each defect test here reproduces a defect an analyst hit (issue 14) and failed before its fix."""
from __future__ import annotations

import pytest

from scoring.selection.saved import load_selection_record
from scoring.store.cache import Cache
from tests import synthetic
from tests.helpers import open_app

N = 240


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("select") / "cache"
    synthetic.build(root, n=N, dataset="synth")
    return root


@pytest.fixture
def app(cache_root, monkeypatch):
    monkeypatch.setenv("DAVIR_CACHE", str(cache_root))
    return lambda page="select", **query: open_app(page, query)


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def kept(at) -> int:
    return int(metric(at, "Kept").replace(",", ""))


def cli(at) -> str:
    return next(c.value for c in at.code if c.value.startswith("python -m scoring select"))


def test_budget_survives_switching_budget_kinds(app):
    """Defect 2: 22.5 %, to count and back: the slider used to show 6.00 while Kept said 22.5 %."""
    at = app()
    at.slider(key="sel_pct").set_value(22.5).run()
    at.radio(key="sel_budget_kind").set_value("count").run()
    at.radio(key="sel_budget_kind").set_value("percent").run()
    assert at.slider(key="sel_pct").value == pytest.approx(22.5)
    assert "--budget 22.5%" in cli(at) and metric(at, "Of all rows").startswith("22.")
    at.multiselect(key="sel_scores").set_value(["davir", "ifd"]).run()  # another change keeps the budget
    assert "--budget 22.5%" in cli(at)


def test_out_of_range_rows_are_clamped_and_said(app):
    """Defect 7: rows 100000 or 0 turned red and were ignored while the metrics kept the old value."""
    at = app()
    at.radio(key="sel_budget_kind").set_value("count").run()
    at.number_input(key="sel_count").set_value(100000).run()
    assert kept(at) <= N and f"--budget {N} " in cli(at)
    assert any("between 1 and" in w.value for w in at.warning)
    at.number_input(key="sel_count").set_value(0).run()
    assert kept(at) == 1 and any("between 1 and" in w.value for w in at.warning)


def test_the_rule_lives_in_the_url(app):
    at = app(scores="davir,ifd", rules="top,band:10-90", budget="30", combine="or")
    assert "--budget 30" in cli(at) and "--combine or" in cli(at) and "--rule band:10-90" in cli(at)
    assert at.radio(key="sel_rule_ifd").value == "band" and at.slider(key="sel_band_ifd").value == (10, 90)
    at.slider(key="sel_band_ifd").set_value((20, 80)).run()
    assert at.query_params["rules"] == ["top,band:20-80"] or at.query_params["rules"] == "top,band:20-80"


def test_a_bad_link_is_reported(app):
    at = app(scores="nope")
    assert any("nope" in w.value for w in at.warning) and "--score davir" in cli(at)


def test_value_cut_shows_and_sets_the_cut_as_a_value(app):
    at = app()
    cut_line = next(m.value for m in at.markdown if m.value.startswith("**The cut as values:**"))
    edge = float(cut_line.split("≥")[1].strip(" `"))
    n = kept(at)
    at.radio(key="sel_rule_davir").set_value("above").run()  # the value starts at the current cut's edge
    assert at.number_input(key="sel_val_davir").value == pytest.approx(edge, rel=1e-3)
    at.radio(key="sel_budget_kind").set_value("all").run()
    assert "--rule above:" in cli(at) and "--budget all" in cli(at)
    assert kept(at) == n  # "davir ≥ edge" keeps what the percent cut kept


def test_band_budget_all_keeps_the_whole_band(app):
    """Defect 11: a band with the default 6 % kept 18 rows from the band's middle."""
    at = app()
    at.radio(key="sel_rule_davir").set_value("band").run()
    at.radio(key="sel_budget_kind").set_value("all").run()
    assert kept(at) == pytest.approx(0.5 * N, abs=4)  # 25th to 75th percentile
    table = next(t.value for t in at.table if "edge" in getattr(t.value, "columns", []))
    assert len(set(table["edge"])) == 2  # both edges of the band are shown, each with kept and dropped rows
    assert set(table["side"]) == {"kept", "dropped"}


def test_saving_under_a_taken_name_asks_first(app, cache_root):
    """Defect 3: saving under an existing name overwrote it without a word."""
    at = app()
    at.text_input(key="sel_name").set_value("mine").run()
    at.button(key="sel_save").click().run()
    first = load_selection_record(Cache(cache_root), "synth", "mine")
    at.slider(key="sel_pct").set_value(30.0).run()
    at.button(key="sel_save").click().run()
    assert any("already exists" in w.value for w in at.warning)
    assert load_selection_record(Cache(cache_root), "synth", "mine")["n_kept"] == first["n_kept"]
    at.button(key="sel_replace_yes").click().run()
    assert load_selection_record(Cache(cache_root), "synth", "mine")["n_kept"] > first["n_kept"]


def test_compare_defaults_to_two_selections_and_reasons_read_as_text(app):
    """Defect 11: Compare defaulted to a selection against itself; drop reasons printed as a Python dict."""
    at = app()
    for name, pct in (("aa", 6.0), ("bb", 12.0)):
        at.slider(key="sel_pct").set_value(pct).run()
        at.text_input(key="sel_name").set_value(name).run()
        at.button(key="sel_save").click().run()
    at.toggle(key="sel_cmp_on").set_value(True).run()
    assert at.selectbox(key="sel_cmp_a").value != at.selectbox(key="sel_cmp_b").value
    why = [m.value for m in at.markdown if "dropped them" in m.value]
    assert why and not any("{" in w for w in why)


def test_load_a_saved_selection_back_into_the_controls(app):
    at = app()
    at.multiselect(key="sel_scores").set_value(["davir", "ifd"]).run()
    at.radio(key="sel_rule_ifd").set_value("bottom").run()
    at.text_input(key="sel_name").set_value("both").run()
    at.button(key="sel_save").click().run()
    saved_line = cli(at)
    at.multiselect(key="sel_scores").set_value(["rho"]).run()
    assert cli(at) != saved_line
    at.selectbox(key="sel_load_name").set_value("both")
    at.button(key="sel_load").click().run()
    assert cli(at) == saved_line and at.radio(key="sel_rule_ifd").value == "bottom"


def test_every_edge_row_has_a_reason(app):
    at = app()
    tables = [t.value for t in at.table if "reason" in getattr(t.value, "columns", [])]
    assert tables and all(t["reason"].str.len().gt(0).all() for t in tables)
    reasons = set().union(*(set(t["reason"]) for t in tables))
    assert "kept" in reasons and any(r.startswith("below_cut:davir") for r in reasons)


def test_bottom_rule_drops_above_the_cut(app):
    """Defect 11: the bottom rule labelled its dropped rows below_cut."""
    at = app()
    at.radio(key="sel_rule_davir").set_value("bottom").run()
    reasons = set().union(*(set(t.value["reason"]) for t in at.table
                            if "reason" in getattr(t.value, "columns", [])))  # fmt: skip
    assert any(r.startswith("above_cut:davir") for r in reasons) and not any(r.startswith("below_cut") for r in reasons)


def test_inspect_shows_why_the_current_rule_keeps_or_drops_each_row(app):
    """'A reason column in every table': Inspect reads the Select page's current rule."""
    at = app()
    at.switch_page("pages/inspect.py").run()
    table = at.dataframe[0].value
    assert "reason" in table.columns and table["reason"].iloc[0] == "kept"  # sorted by davir, the rule's top
    assert any(r.startswith("below_cut:davir") for r in table["reason"])
