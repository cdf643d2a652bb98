"""The Select page's linked views: a histogram per score (the cut drawn at its value, a band shaded, a brush sets the
cut or band), a two-score scatter and the map, all coloured kept / dropped by the current rule. Rows chosen on one
view (a box on the scatter, a lasso on the map) are marked on the others; clicking a point opens that example in
place. Below them: the rows at each edge of the cut and why each row went.

Only rendering and event handling live here; every number comes from ``scoring.queries``. Figures are plain
dicts handed to Streamlit as they are (:class:`pages._ui.Prebuilt`) over small aggregated frames or fixed-seed samples
drawn as SVG (a new WebGL context costs ~1 s in a browser without a GPU).
"""
from __future__ import annotations

import html

import numpy as np
import pandas as pd
import streamlit as st

from pages import _select_state as S
from pages import _ui
from pages._map_figure import chosen, is_new, map_figure, selection_of
from scoring.errors import UserError
from scoring.queries.map import map_points, save_hand_picked
from scoring.queries.select import (
    EDGE_ROWS,
    brush_rule,
    cuts,
    edge_rows,
    in_box,
    kept_bins,
    scatter_points,
    spec_rules,
)
from scoring.queries.view import example, log_default, neighbours, rows_at
from scoring.scores.view_reads import column
from scoring.selection.explain import group_counts, reason_of

KEPT, DROPPED, MARKED = "#1f77b4", "#c8c8c8", "#ff7f0e"
SCATTER_POINTS = 1000  # drawn as SVG: a new WebGL context costs ~1 s in a browser without a GPU
MAP_POINTS = 1000  # the Map page's default sample: SVG, cheap to redraw on every rule change
MARK_LIST = 200  # marked rows listed under the views


def marked(view) -> np.ndarray | None:
    """Positions marked on one of the views (a box, a lasso; a box or lasso on the Map page counts too), or None."""
    mark = st.session_state.get("sel_marked")
    if not mark or mark.get("view") != (view.dataset, view.job.id):
        chosen_on_map = st.session_state.get("map_chosen")
        if not chosen_on_map or (chosen_on_map.get("dataset"), chosen_on_map.get("job")) != (view.dataset, view.job.id):
            return None
        set_marked(view, chosen_on_map["pos"], "a box or lasso on the Map page")
        mark = st.session_state["sel_marked"]
    return np.asarray(mark["pos"], dtype=np.int64)


def set_marked(view, positions, source: str, box=None) -> None:
    st.session_state["sel_marked"] = {"view": (view.dataset, view.job.id), "pos": np.asarray(positions).tolist(),
                                      "source": source, "box": box}  # fmt: skip


def fresh(key: str, event) -> bool:
    """Whether a chart's selection or a table's pick is new (:func:`pages._map_figure.is_new`)."""
    return is_new(st.session_state, f"_seen_{key}", event)


# ---------------------------------------------------------------- histograms


def histogram_figure(bins: pd.DataFrame, score: str, log: bool, shapes: list[dict], has_marks: bool) -> dict:
    centre, width = ((bins["lo"] + bins["hi"]) / 2).tolist(), (bins["hi"] - bins["lo"]).tolist()
    traces = [{"type": "bar", "name": name, "x": centre, "y": bins[name].tolist(), "width": width,
               "marker": {"color": hue}, "hovertemplate": f"{name} %{{y}}<extra></extra>"}
              for name, hue in (("kept", KEPT), ("dropped", DROPPED))]  # fmt: skip
    if has_marks:
        traces.append({"type": "scatter", "mode": "lines", "line": {"shape": "hvh", "color": MARKED, "width": 2},
                       "name": "marked", "x": centre, "y": bins["marked"].tolist()})  # fmt: skip
    xaxis = {"title": {"text": f"log10 {score}" if log else score}}
    return {"data": traces, "layout": {
        "barmode": "stack", "bargap": 0, "height": 230, "margin": {"l": 40, "r": 10, "t": 10, "b": 40},
        "xaxis": xaxis, "yaxis": {"title": {"text": "rows"}}, "shapes": shapes, "dragmode": "select",
        "legend": {"orientation": "h", "y": -0.35, "x": 0}, "selectdirection": "h"}}  # fmt: skip


def cut_shapes(view, spec, result, score: str, log: bool) -> list[dict]:
    """The cut at its value (a line), a band's edges shaded (a rectangle), on the histogram's x axis."""
    to_x = (lambda v: float(np.log10(v)) if v > 0 else None) if log else float
    rule = dict(zip(spec.scores, spec_rules(spec)))[score]
    cut = next(c for c in cuts(view, spec, result) if c.score == score)
    if rule.kind in ("band", "vband") and cut.lo is not None:
        lo, hi = (rule.lo, rule.hi) if rule.kind == "vband" else (cut.lo, cut.hi)
        x0, x1 = to_x(lo), to_x(hi)
        if x0 is None or x1 is None:
            return []
        return [{"type": "rect", "xref": "x", "yref": "paper", "x0": x0, "x1": x1, "y0": 0, "y1": 1,
                 "fillcolor": KEPT, "opacity": 0.12, "line": {"width": 1, "color": KEPT}}]  # fmt: skip
    edges = [rule.lo] if rule.kind == "above" else [rule.hi] if rule.kind == "below" else cut.edges()  # a value rule
    return [{"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,  # at its own value
             "line": {"color": "#d62728", "width": 2, "dash": "dash"}}
            for x in map(to_x, edges) if x is not None]  # fmt: skip


def histograms(ctx, view, spec, result) -> None:
    """One histogram per score of the rule; a brush on one sets that score's cut (or band) to the brushed values."""
    marks = marked(view)
    as_band = st.radio("A brush on a histogram sets", ["a cut", "a band"], horizontal=True, key="sel_brush_mode",
                       help="Drag across a histogram: a range touching one end sets a value cut (≥ or ≤), "
                            "else a value band; 'a band' always sets a band") == "a band"  # fmt: skip
    cols = st.columns(min(len(spec.scores), 2))
    for i, score in enumerate(spec.scores):
        with cols[i % len(cols)]:
            log = st.toggle("log scale", key=f"sel_log_{score}", value=log_default(view, score),
                            help="bins equal-width in log10 of the positive values")  # fmt: skip
            bins = kept_bins(view, score, result.kept_pos, log=log, marked=marks)
            if bins.attrs.get("left_out"):
                st.caption(f"{bins.attrs['left_out']:,} rows at or below 0 are not on the log axis.")
            fig = _ui.Prebuilt(histogram_figure(bins, score, log, cut_shapes(view, spec, result, score, log),
                                                marks is not None))  # fmt: skip
            key = f"sel_hist_{score}"
            event = st.plotly_chart(fig, key=key, on_select="rerun", selection_mode=("box",), width="stretch")
            box = (selection_of(event).get("box") or [None])[0]
            if box and fresh(key, box):
                x0, x1 = box["x"][0], box["x"][-1]
                lo, hi = float(bins["lo"].iloc[0]), float(bins["hi"].iloc[-1])
                text = brush_rule(x0, x1, lo, hi, as_band)
                if log:
                    text = brush_rule(10**x0, 10**x1, 10**lo, 10**hi, as_band)
                apply_rule(score, text)


def apply_rule(score: str, text: str) -> None:
    """A brushed rule replaces the score's rule in the controls; a value rule keeps all it admits."""
    state = dict(st.session_state["sel"])
    state["rules"] = dict(state["rules"], **{score: S.rule_state(text)})
    state["budget_kind"] = "all"
    st.session_state["sel"] = state
    st.session_state["sel_flash"] = f"{score}: the brush set the rule to {text} (budget: all the rule admits)."
    reset_widgets()
    st.rerun()


WIDGETS = ("sel_scores", "sel_combine", "sel_budget_kind", "sel_pct", "sel_count", "sel_tokens", "sel_flagged",
           "sel_quota", "sel_dedup_on", "sel_tau")  # fmt: skip
RULE_WIDGETS = ("sel_rule_", "sel_band_", "sel_val_", "sel_vlo_", "sel_vhi_")


def reset_widgets() -> None:
    """Forget every control's widget state, so the next run reseeds them from ``st.session_state["sel"]``."""
    for key in list(st.session_state.keys()):
        if key in WIDGETS or str(key).startswith(RULE_WIDGETS):
            del st.session_state[key]


# ---------------------------------------------------------------- the scatter and the map


def points_figure(frame: pd.DataFrame, x: str, y: str, xlog: bool = False, ylog: bool = False) -> dict:
    """An SVG scatter (a fixed-seed sample of SCATTER_POINTS rows): dropped under kept, the marked rows ringed on top;
    customdata is the table position."""
    traces = []
    for name, hue, part in (("dropped", DROPPED, frame[frame["rows"] == "dropped"]),
                            ("kept", KEPT, frame[frame["rows"] == "kept"])):  # fmt: skip
        traces.append({"type": "scatter", "mode": "markers", "name": name, "x": part[x].tolist(),
                       "y": part[y].tolist(), "customdata": part["pos"].tolist(),
                       "text": [html.escape(str(i)) for i in part["id"]], "marker": {"color": hue, "size": 5},
                       "hovertemplate": "%{text}<br>" + f"{x} %{{x:.4g}}<br>{y} %{{y:.4g}}<extra>{name}</extra>"})
    ring = frame[frame["marked"]]
    if len(ring):
        traces.append({"type": "scatter", "mode": "markers", "name": "marked", "x": ring[x].tolist(),
                       "y": ring[y].tolist(), "customdata": ring["pos"].tolist(),
                       "hoverinfo": "skip",
                       "marker": {"color": "rgba(0,0,0,0)", "size": 9, "line": {"color": MARKED, "width": 2}}})
    return {"data": traces, "layout": {
        "height": 380, "margin": {"l": 50, "r": 10, "t": 10, "b": 40}, "dragmode": "zoom",
        "xaxis": {"title": {"text": x}, "type": "log" if xlog else "linear"},
        "yaxis": {"title": {"text": y}, "type": "log" if ylog else "linear"},
        "legend": {"orientation": "h", "y": -0.18, "x": 0}}}  # fmt: skip


def on_points(view, key: str, event, source: str, mark_box=None) -> None:
    """A new selection event of a points chart: a click opens the example in place; a box goes to ``mark_box`` when
    given (else it marks the drawn points inside, like a lasso); a lasso marks the drawn points inside it."""
    if not fresh(key, selection_of(event)):
        return
    pos, click = chosen(event)
    box = (selection_of(event).get("box") or [None])[0]
    if click:
        st.session_state["sel_open"] = pos[0]
    elif box and mark_box is not None:
        mark_box(box)
    elif pos:
        set_marked(view, pos, source)


def scatter(ctx, view, spec, result) -> None:
    """Any two scores against each other, kept / dropped coloured; a box marks every row inside it (not just the
    drawn sample), a lasso the drawn points inside it, a click opens the example."""
    scores = view.score_columns
    c1, c2 = st.columns(2)
    x = c1.selectbox("x", scores, index=scores.index(spec.scores[0]), key="sel_sc_x")
    y_default = next((s for s in spec.scores[1:]), next((s for s in scores if s != x), x))
    y = c2.selectbox("y", scores, index=scores.index(y_default), key="sel_sc_y")
    frame = scatter_points(view, x, y, SCATTER_POINTS, result.kept_pos, marked(view))
    if not len(frame):
        st.caption(f"No row has both {x} and {y} yet.")
        return
    st.caption(f"{len(frame):,} rows drawn with a fixed seed. Click a point to open it below; with the box tool "
               "(toolbar) mark every row inside the box, with the lasso the drawn points inside.")  # fmt: skip
    l1, l2 = st.columns(2)
    xlog = l1.toggle(f"log {x}", value=log_default(view, x), key=f"sel_sc_xlog_{x}")
    ylog = l2.toggle(f"log {y}", value=log_default(view, y), key=f"sel_sc_ylog_{y}")
    fig = _ui.Prebuilt(points_figure(frame, x, y, xlog, ylog))
    event = st.plotly_chart(fig, key="sel_scatter", on_select="rerun", selection_mode=("points", "box", "lasso"),
                            width="stretch")  # fmt: skip
    def mark_box(box: dict) -> None:  # every row inside, in score units (on log axes too: Plotly reports values)
        xr, yr = box["x"], box["y"]
        set_marked(view, in_box(view, x, y, xr, yr), f"a box on {x} × {y}", {"x": x, "y": y, "xr": xr, "yr": yr})

    on_points(view, "sel_scatter", event, f"a lasso on {x} × {y}", mark_box)


def map_view(ctx, view, spec, result) -> None:
    """The embedding map coloured kept / dropped, marked rows ringed; a lasso marks, a click opens the example."""
    if not view.has_layout:
        st.caption("No map for this score run yet (compute it on the Map page).")
        return
    marks = marked(view)
    points = map_points(ctx.cache, view, MAP_POINTS, "kept", result.kept_pos, extra=marks)
    fig = map_figure(points, "kept", highlight=None if marks is None else marks.tolist(), height=380,
                     highlight_name="marked")  # fmt: skip
    st.caption(f"{len(points):,} laid-out rows drawn with a fixed seed. Click a point to open it; lasso (toolbar) to "
               "mark the points inside.")  # fmt: skip
    event = st.plotly_chart(fig, key="sel_map", on_select="rerun", selection_mode=("points", "box", "lasso"),
                            width="stretch")  # fmt: skip
    on_points(view, "sel_map", event, "a lasso on the map")


def marked_panel(ctx, view, spec, result) -> None:
    """What was marked on a view: how many, kept how many, the rows with their reasons; a scatter box can become
    the rule (a value band on each of its two scores, keeping all it admits)."""
    marks = marked(view)
    if marks is None:
        return
    mark = st.session_state["sel_marked"]
    kept = np.isin(marks, np.asarray(result.kept_pos if result.kept_pos is not None else [], dtype=np.int64))
    st.markdown(f"**{len(marks):,} rows marked** by {mark['source']}: {int(kept.sum()):,} of them kept by the rule.")
    b1, b2 = st.columns(2)
    if b1.button("Clear the marks", key="sel_mark_clear"):
        st.session_state.pop("sel_marked", None)
        st.session_state.pop("map_chosen", None)
        st.rerun()
    box = mark.get("box")
    if box and b2.button(f"Make the box the rule ({box['x']} and {box['y']} value bands)", key="sel_mark_rule"):
        (x0, x1), (y0, y1) = sorted(box["xr"]), sorted(box["yr"])
        state = dict(st.session_state["sel"], scores=[box["x"], box["y"]], combine="and", budget_kind="all")
        state["rules"] = {box["x"]: {"kind": "vband", "lo": x0, "hi": x1},
                          box["y"]: {"kind": "vband", "lo": y0, "hi": y1}}  # fmt: skip
        st.session_state["sel"] = state
        reset_widgets()
        st.rerun()
    save_marked(ctx, view, spec, marks, mark["source"])
    table(ctx, view, result, marks[:MARK_LIST], spec.scores, key="sel_marked_rows")


def save_marked(ctx, view, spec, marks, source: str) -> None:
    """The marked rows as a saved, hand-picked selection (its record says so: no rule rebuilds it)."""
    m1, m2, m3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    name = m1.text_input("Save the marked rows as", key="sel_mark_name", placeholder="e.g. hand-picked-1")
    replace = m2.checkbox("Replace", key="sel_mark_replace", help="overwrite a saved selection of this name")
    if m3.button("Save marked", key="sel_mark_save") and name:
        try:
            _, saved = save_hand_picked(ctx.cache, view, name.strip(), marks, order_by=spec.scores[0],
                                        replace=replace, source=source)  # fmt: skip
            st.success(f"Saved {name.strip()}: {len(saved.kept_ids):,} hand-picked rows.")
        except UserError as error:
            st.error(str(error))


def reasoned_rows(ctx, view, result, positions, scores) -> pd.DataFrame:
    """Rows with their scores, a text preview and why the rule kept or dropped each."""
    rows = rows_at(ctx.cache, view, positions, list(scores))
    if len(rows):
        rows.insert(2, "reason", reasons_of(result, positions))
    return rows


def static_table(rows: pd.DataFrame, scores) -> None:
    """A few rows as a plain table (cheap for the browser to draw on every rerun, unlike an interactive grid)."""
    if not len(rows):
        st.caption("No rows.")
        return
    shown = rows.drop(columns=["idx"]).copy()
    for s in scores:
        shown[s] = [f"{v:.4g}" for v in shown[s]]
    st.table(shown.set_index("id"))


def table(ctx, view, result, positions, scores, key: str) -> None:
    """Rows with their scores, a text preview and why the rule kept or dropped each; a click opens the example."""
    rows = reasoned_rows(ctx, view, result, positions, scores)
    if not len(rows):
        st.caption("No rows.")
        return
    event = st.dataframe(rows, hide_index=True, on_select="rerun", selection_mode="single-row", key=key,
                         column_config={s: st.column_config.NumberColumn(format="%.4g") for s in scores})  # fmt: skip
    picked = event.selection.rows if event and hasattr(event, "selection") else []
    if picked and fresh(key, picked):
        st.session_state["sel_open"] = int(np.asarray(positions)[picked[0]])


def example_panel(ctx, view) -> None:
    """The example clicked on a view, in place: text (plain), scores, nearest neighbours (which can be marked)."""
    pos = st.session_state.get("sel_open")
    if pos is None or pos >= view.n_rows:
        return
    idx = int(column(view, "idx")[pos])
    ex = example(ctx.cache, view, idx)
    h1, h2 = st.columns([4, 1])
    h1.subheader(f"Example {ex['id']}")
    if h2.button("Close", key="sel_open_close"):
        st.session_state.pop("sel_open", None)
        st.rerun()
    if ex["flag"]:
        st.warning(f"Flagged: {ex['flag']}")
    left, right = st.columns([3, 2])
    _ui.example_body(ex, left, right)
    near = neighbours(ctx.cache, view, idx)
    if len(near):
        right.markdown("**Nearest neighbours**")
        near["inspect"] = [_ui.example_link(view.dataset, i) for i in near["id"]]
        with right:
            st.caption("Click a neighbour to open it here; 'inspect' opens it on the Inspect page.")
            event = st.dataframe(near[["id", "cosine", "prompt", "inspect"]], hide_index=True, on_select="rerun",
                                 selection_mode="single-row", key=f"sel_near_{pos}", column_config={
                                     "cosine": st.column_config.NumberColumn(format="%.3f"),
                                     "inspect": st.column_config.LinkColumn(display_text="inspect")})  # fmt: skip
        picked = event.selection.rows if event and hasattr(event, "selection") else []
        if picked:
            st.session_state["sel_open"] = int(np.searchsorted(column(view, "idx"), near["idx"].iloc[picked[0]]))
            st.rerun()
        if right.button("Mark the neighbours on the views", key="sel_mark_near"):
            pos_near = np.searchsorted(column(view, "idx"), near["idx"].to_numpy())
            set_marked(view, np.r_[pos, pos_near], f"the neighbours of {ex['id']}")
            st.rerun()


def linked_views(ctx, view, spec, result) -> None:
    flash = st.session_state.pop("sel_flash", None)
    if flash:
        st.success(flash)
    st.subheader("Where the cut falls")
    histograms(ctx, view, spec, result)
    left, right = st.columns(2)
    with left:
        st.markdown("**Two scores**")
        scatter(ctx, view, spec, result)
    with right:
        st.markdown("**Map**")
        map_view(ctx, view, spec, result)
    marked_panel(ctx, view, spec, result)
    example_panel(ctx, view)


# ---------------------------------------------------------------- why each row went


def reasons_of(result, positions) -> list[str]:
    return reason_of(result, np.asarray(positions, dtype=np.int64))


def edge_table(ctx, view, spec, result) -> pd.DataFrame:
    """One table of the rows at every edge of the cut: for each edge, the kept rows nearest it, then the dropped rows
    nearest it, with their reasons (one query for the text of all of them)."""
    parts, labels = [], []
    for cut in cuts(view, spec, result):
        for edge in cut.edges():
            inside, outside = edge_rows(view, cut.score, edge, result.kept_pos, EDGE_ROWS)
            for side, rows in (("kept", inside), ("dropped", outside)):
                parts.append(rows)
                labels += [(f"{cut.score} at {edge:.4g}", side)] * len(rows)
    positions = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    rows = reasoned_rows(ctx, view, result, positions, spec.scores)
    if len(rows):
        rows.insert(0, "edge", [e for e, _ in labels])
        rows.insert(1, "side", [s for _, s in labels])
    return rows


def why(ctx, view, spec, result) -> None:
    """The rows at each edge of the cut (inside and just outside), the drop reasons, kept rows per quota group."""
    st.subheader("At the edges of the cut")
    st.caption(f"At each edge (two for a band): the {EDGE_ROWS} kept rows nearest it, then the {EDGE_ROWS} dropped "
               "rows nearest it, each with the reason the rule gives.")  # fmt: skip
    static_table(edge_table(ctx, view, spec, result), spec.scores)
    r1, r2 = st.columns(2)
    with r1:
        st.markdown("**Dropped by reason**")
        counts = result.reason_counts()
        st.table(pd.DataFrame({"rows": [f"{v:,}" for v in counts.values()]}, index=pd.Index(list(counts), name="reason")))
    if spec.quota:
        with r2:
            st.markdown(f"**Kept per {spec.quota}**")
            groups = group_counts(ctx.cache, view, spec, result)
            st.table(pd.DataFrame([{spec.quota: g, **c} for g, c in groups.items()]).set_index(spec.quota))
