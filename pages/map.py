"""Map: the UMAP layout of the embeddings as a WebGL scatter, coloured by a score or by kept / dropped under the
current selection (the Select page's rule). Box or lasso selection lists the chosen examples. Large datasets are
drawn from a fixed-seed sample whose size is stated.
"""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from scoring.errors import UserError
from scoring.jobs.requests import map_request
from scoring.jobs.runner import enqueue
from scoring.jobs.worker import ensure_worker
from scoring.queries.view import map_points, rows_at
from scoring.selection.saved import run_selection

ctx = _ui.ctx()
st.title("Map")
_ui.pair_notice(ctx, "the Map lays out SFT embeddings, and a pair score run keeps none.")
view = _ui.need_view(ctx)

if not view.has_layout:
    st.info("No map yet for this score run: the UMAP layout of its embeddings has not been computed.")
    if st.button("Compute the map (as a job)", key="map_compute"):
        try:
            job, _ = enqueue(ctx.cache, map_request(view.job))
            ensure_worker(ctx.cache)
            st.success(f"Map job {job.id} queued; follow it on the Jobs page.")
        except UserError as error:
            st.error(str(error))
    st.stop()

spec = st.session_state.get("selection_spec")
options = [*view.score_columns, *(["kept / dropped (current selection)"] if spec else [])]
c1, c2 = st.columns([2, 1])
colour = c1.selectbox("Colour by", options, index=options.index("davir") if "davir" in options else 0, key="map_colour")
limit = c2.select_slider("Points drawn", [1000, 5000, 20000, 50000], value=20000, key="map_points")
kept_pos = None
if colour.startswith("kept"):
    if spec.dataset != view.dataset:
        st.warning("The current selection belongs to another dataset; colouring by davir instead.")
        colour = "davir" if "davir" in view.score_columns else view.score_columns[0]
    else:
        kept_pos = run_selection(ctx.cache, spec, view)[0].kept_pos
        colour = "kept"
points = map_points(view, limit, colour, kept_pos)
n_laid = int(view.stats.get("n_rows", 0))
st.caption(f"{len(points):,} points drawn with a fixed seed, of {n_laid:,} examples. Drag a box or lasso to list "
           "examples.")  # fmt: skip

fig = go.Figure()
if colour == "kept":
    for name, hue in (("dropped", "#c0c0c0"), ("kept", "#1f77b4")):
        part = points[points["kept"] == name]
        fig.add_trace(go.Scattergl(x=part["x"], y=part["y"], mode="markers", name=name, customdata=part["pos"],
                                   text=part["id"], marker={"size": 4 if len(points) > 5000 else 6, "color": hue}))  # fmt: skip
else:
    fig.add_trace(go.Scattergl(
        x=points["x"], y=points["y"], mode="markers", customdata=points["pos"], text=points["id"],
        marker={"size": 4 if len(points) > 5000 else 6, "color": points[colour], "colorscale": "Viridis", "showscale": True,
                "colorbar": {"title": {"text": colour}}},
        hovertemplate="%{text}<br>" + colour + " %{marker.color:.4g}<extra></extra>",
    ))  # fmt: skip
fig.update_layout(height=560, margin={"l": 10, "r": 10, "t": 10, "b": 10}, dragmode="lasso",
                  xaxis={"visible": False}, yaxis={"visible": False})  # fmt: skip
event = st.plotly_chart(fig, key="map_chart", on_select="rerun", selection_mode=("box", "lasso"), width="stretch")
chosen = [p.get("customdata") for p in (event.selection.points if event else [])] if event else []
chosen = [int(c[0] if isinstance(c, list) else c) for c in chosen if c is not None]
if chosen:
    rows = rows_at(ctx.cache, view, chosen[:500], view.score_columns)
    rows["open"] = [_ui.example_link(view.dataset, i) for i in rows["id"]]
    st.subheader(f"{len(chosen):,} examples chosen" + (" (first 500 listed)" if len(chosen) > 500 else ""))
    st.dataframe(rows, hide_index=True, column_config={"open": st.column_config.LinkColumn(display_text="open")})
