"""The floor under benchmarks/browser_latency.py: the same controls as DavIR Studio's pages, with nothing behind them.

    python benchmarks/browser_latency.py --floor streamlit     # the chart as st.plotly_chart
    python benchmarks/browser_latency.py --floor react         # one Plotly div updated in place (Plotly.react)

Four pages titled like the app's (Overview, Select, Map, Inspect) in a sidebar navigation. Select has the "Budget as"
radio, the "Percent of all rows" slider (or the "Rows" number input) and a "Kept" metric computed by arithmetic; Map
has the "Colour by" selectbox and one Plotly scatter of ``FLOOR_POINTS`` points (default 300, the demo's size)
coloured by a column or by kept / dropped. No cache, no queries: what the benchmark measures here is what Streamlit
and the browser cost on this machine for the same inputs, the least any page built on them can take.

``FLOOR_REACT=1`` (``--floor react``) draws the chart with a small ``st.components.v2`` component instead: one Plotly
div that stays mounted across reruns and is updated with ``Plotly.react``, plotly.js served by this app's static
folder (benchmarks/static/, copied there by the benchmark). Streamlit's own chart element is remounted whenever its
figure changes (its element id hashes the figure), which redraws it from scratch; this mode measures what keeping
it would save.
"""
from __future__ import annotations

import os

import numpy as np
import plotly.graph_objects as go
import streamlit as st

N = int(os.environ.get("FLOOR_POINTS", "300"))
ROWS = 300


def _points() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=N), "y": rng.normal(size=N), "davir": rng.random(N), "ppl": rng.lognormal(size=N)}


_JS = """
const load = () => window.Plotly ? Promise.resolve(window.Plotly) : (window.__plotlyLoading ||= new Promise((ok, bad) => {
  const s = document.createElement("script"); s.src = "/app/static/plotly.min.js";
  s.onload = () => ok(window.Plotly); s.onerror = bad; document.head.appendChild(s);
}));
export default async function(component) {
  const { data, parentElement } = component;
  let div = parentElement.querySelector("div.floor-plot");
  if (!div) { div = document.createElement("div"); div.className = "floor-plot"; div.style.height = "450px";
              parentElement.appendChild(div); }
  const Plotly = await load();
  await Plotly.react(div, data.data, data.layout || {}, {responsive: true});
}
"""
_react = st.components.v2.component("floor_react", js=_JS, isolate_styles=False)


def overview() -> None:
    st.title("Overview")
    st.write("Nothing to compute.")


def select() -> None:
    st.title("Select")
    kind = st.radio("Budget as", ["percent", "count"], horizontal=True)
    if kind == "percent":
        pct = st.slider("Percent of all rows", 0.1, 100.0, 6.0, 0.1)
        kept = round(ROWS * pct / 100)
    else:
        kept = st.number_input("Rows", 1, ROWS, 18)
    st.metric("Kept", f"{kept} rows")


def map_page() -> None:
    st.title("Map")
    colour = st.selectbox("Colour by", ["davir", "ppl", "kept / dropped"])
    p = _points()
    if colour == "kept / dropped":
        kept = p["davir"] > 0.5
        fig = go.Figure([go.Scatter(x=p["x"][m], y=p["y"][m], mode="markers", name=name)
                         for name, m in (("kept", kept), ("dropped", ~kept))])  # fmt: skip
    else:
        fig = go.Figure(go.Scatter(x=p["x"], y=p["y"], mode="markers",
                                     marker={"color": p[colour], "colorbar": {"title": {"text": colour}}}))  # fmt: skip
    if os.environ.get("FLOOR_REACT"):  # experiment: one Plotly div kept across reruns, updated with Plotly.react
        _react(data=fig.to_plotly_json(), key="map", height=450)
    else:
        st.plotly_chart(fig, use_container_width=True)


def inspect() -> None:
    st.title("Inspect")
    st.write("Nothing to compute.")


st.navigation([st.Page(overview, title="Overview", default=True), st.Page(inspect, title="Inspect"),
               st.Page(map_page, title="Map"), st.Page(select, title="Select")]).run()  # fmt: skip
