"""The embedding map as a Plotly figure, shared by the Map page and the Select page's linked views, and the helpers
that read its selection events.

Why it is built the way it is (each point measured in headless Chromium and on the server; README, "The app"):

- Streamlit keys a Plotly chart by a hash of its whole figure, so any change (a recolour, a highlight) mounts a new
  chart in the browser instead of updating the old one. A WebGL plot's first draw costs a GL context (about 1 s in
  a browser without a GPU, like a headless Chromium or a remote desktop), an SVG plot's only its points. So up to
  :data:`SVG_MAX` points are drawn as SVG and only larger samples in WebGL.
- The figure is a plain spec handed to Streamlit as it is (:class:`pages._ui.Prebuilt`: no deep copy, no
  validation) built from numpy arrays: coordinates and colours go to the browser as float32 typed arrays (base64),
  positions as int32; the only per-point strings are the hover texts.
- Dataset text is untrusted and Plotly renders hover text as HTML-like markup: hover texts come escaped from
  :func:`scoring.queries.map.map_points` (memoised with the sample) or are escaped here; names are escaped too.

``customdata`` of every point is ``[position in the view, colour value]`` (value NaN for kept / dropped), so a
selection event gives view positions directly (:func:`chosen`).
"""
from __future__ import annotations

import html
import json
import math

import numpy as np
import pandas as pd

from pages._ui import Prebuilt
from scoring.queries.map import hover_html

KEPT, DROPPED, OTHERS, NO_VALUE = "#1f77b4", "#c0c0c0", "#dcdcdc", "#9a9a9a"
HIGHLIGHT_LINE = "#111111"
SVG_MAX = 3000  # up to this many points as SVG (no GL context to build on every redraw); more in WebGL
COLOURSCALE = "Viridis"


def hover_texts(points: pd.DataFrame) -> list[str]:
    """The points' hover texts: the escaped ``hover`` column of :func:`scoring.queries.map.map_points`, else
    "<b>id</b><br>snippet" escaped here (ids and texts come from the dataset)."""
    if "hover" in points:
        return points["hover"].tolist()
    snippet = points["snippet"] if "snippet" in points else [""] * len(points)
    return hover_html(points["id"], snippet)


def marker_size(n: int) -> int:
    return 6 if n <= 2000 else 4 if n <= 20000 else 3


def _trace(kind: str, part: pd.DataFrame, values: np.ndarray, name: str, marker: dict, hover: str) -> dict:
    custom = np.column_stack([part["pos"].to_numpy(np.float64), values.astype(np.float64)])  # (n, 2)
    return {"type": kind, "mode": "markers", "name": name, "x": part["x"].to_numpy(np.float32),
            "y": part["y"].to_numpy(np.float32), "customdata": custom, "text": hover_texts(part), "marker": marker,
            "hovertemplate": hover, "hoverlabel": {"align": "left"}}  # fmt: skip


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Colour-bar ticks for log10-scaled values in [lo, hi]: 1, 2, 5 × powers of ten, labelled in the score's units."""
    vals, text = [], []
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = math.log10(m) + e
            if lo - 1e-9 <= v <= hi + 1e-9:
                vals.append(v)
                text.append(f"{m * 10.0**e:.3g}")
    if len(vals) > 8:  # a wide range: powers of ten only
        keep = [i for i, t in enumerate(text) if t.lstrip("0.").startswith("1")]
        vals, text = [vals[i] for i in keep], [text[i] for i in keep]
    return vals, text


def _score_traces(kind: str, points: pd.DataFrame, colour: str, log: bool, size: int, prefix: str = "") -> list[dict]:
    values = points[colour].to_numpy(np.float64)
    shown = np.log10(np.where(values > 0, values, np.nan)) if log else values
    ok = np.isfinite(shown)
    traces = []
    if (~ok).any():
        traces.append(_trace(kind, points[~ok], values[~ok], f"{prefix}no {colour}" + (" > 0" if log else ""),
                             {"color": NO_VALUE, "size": size}, "%{text}<extra>no value</extra>"))  # fmt: skip
    if ok.any():
        lo, hi = float(np.nanmin(shown[ok])), float(np.nanmax(shown[ok]))
        bar = {"title": {"text": colour + (" (log scale)" if log else ""), "side": "top"}, "orientation": "h",
               "x": 1.0, "xanchor": "right", "y": -0.02, "yanchor": "top", "len": 0.45, "thickness": 10}  # fmt: skip
        if log:
            bar["tickvals"], bar["ticktext"] = log_ticks(lo, hi)
        marker = {"color": shown[ok].astype(np.float32), "colorscale": COLOURSCALE, "cmin": lo, "cmax": hi if hi > lo
                  else lo + 1e-9, "size": size, "showscale": True, "colorbar": bar}  # fmt: skip
        traces.append(_trace(kind, points[ok], values[ok], f"{prefix}{colour}", marker,
                             "%{text}<br>" + html.escape(colour) + " = %{customdata[1]:.4g}<extra></extra>"))  # fmt: skip
    return traces


def _kept_traces(kind: str, points: pd.DataFrame, names: tuple[str, str], size: int) -> list[dict]:
    traces = []
    nan = np.full(len(points), np.nan)
    for label, hue, name in (("dropped", DROPPED, names[1]), ("kept", KEPT, names[0])):  # kept drawn on top
        mask = (points["kept"] == label).to_numpy()
        if mask.any():
            traces.append(_trace(kind, points[mask], nan[mask], name, {"color": hue, "size": size},
                                 "%{text}<extra>" + html.escape(name) + "</extra>"))  # fmt: skip
    return traces


def map_figure(points: pd.DataFrame, colour: str, highlight=None, log: bool = False, *,
               names: tuple[str, str] = ("kept", "dropped"), height: int = 520, gl: bool | None = None,
               highlight_name: str = "highlighted", dragmode: str = "pan") -> Prebuilt:  # fmt: skip
    """The map of ``points`` (a frame from :func:`scoring.queries.map.map_points`: pos, id, x, y, snippet and the
    colour column) coloured by ``colour``.

    - a score name: a continuous colour scale (``log``: log10 of the positive values, ticks in the score's units;
      rows without a value drawn grey beneath); the colour bar lies under the plot, right;
    - "kept": two traces named ``names`` (kept, dropped), the kept drawn on top;
    - ``highlight`` (view positions): those points drawn as above with a dark outline on top, every other point a
      dimmed grey trace beneath (named "others").

    The legend lies under the plot, left, so it never covers the mode bar (top right). ``gl``: WebGL (True), SVG
    (False) or by size (None: WebGL above :data:`SVG_MAX` points). Hover: the id, the colour value and the first
    characters of the text, all escaped. ``dragmode`` "pan" (the default) lets a click select one point: Streamlit
    turns click-selection off while the drag mode is "lasso" or "select" (the toolbar switches between them)."""
    kind = "scattergl" if (gl if gl is not None else len(points) > SVG_MAX) else "scatter"
    size = marker_size(len(points))
    traces = []
    shown = points
    if highlight is not None:
        on = np.isin(points["pos"].to_numpy(), np.asarray(list(highlight), dtype=np.int64))
        rest = points[~on]
        if len(rest):
            traces.append(_trace(kind, rest, np.full(len(rest), np.nan), "others",
                                 {"color": OTHERS, "size": size, "opacity": 0.5}, "%{text}<extra>other</extra>"))
        shown = points[on]
        size += 4
    before = len(traces)
    traces += _kept_traces(kind, shown, names, size) if colour == "kept" else \
        _score_traces(kind, shown, colour, log, size)  # fmt: skip
    if highlight is not None:
        for t in traces[before:]:
            t["marker"]["line"] = {"color": HIGHLIGHT_LINE, "width": 1}
            t["name"] = f"{t['name']} ({highlight_name})"
    layout = {
        "height": height, "margin": {"l": 8, "r": 8, "t": 36, "b": 8}, "dragmode": dragmode, "hovermode": "closest",
        "xaxis": {"visible": False}, "yaxis": {"visible": False}, "showlegend": True,
        "legend": {"orientation": "h", "x": 0.0, "xanchor": "left", "y": -0.02, "yanchor": "top"},
    }  # fmt: skip
    return Prebuilt({"data": traces, "layout": layout})


# ---------------------------------------------------------------- selection events


def selection_of(event) -> dict:
    """The ``selection`` part of a ``st.plotly_chart`` event (a dict, possibly empty)."""
    if not event:
        return {}
    sel = event.get("selection") if isinstance(event, dict) else getattr(event, "selection", None)
    return dict(sel or {})


def chosen(event) -> tuple[list[int], bool]:
    """(view positions of the selected points, whether it was a single click rather than a box or a lasso)."""
    sel = selection_of(event)
    pos = []
    for p in sel.get("points") or []:
        c = p.get("customdata")
        if isinstance(c, dict):  # a row of a typed 2-D array reaches Python as {"0": pos, "1": value}
            c = c.get("0", c.get(0))
        elif isinstance(c, (list, tuple)):
            c = c[0] if c else None
        if isinstance(c, (int, float)) and not (isinstance(c, float) and math.isnan(c)):
            pos.append(int(c))
    dragged = bool(sel.get("box") or sel.get("lasso"))
    return list(dict.fromkeys(pos)), len(pos) == 1 and not dragged


def is_new(state, key: str, value) -> bool:
    """Whether ``value`` (a chart's selection, a table's picked rows) differs from the last one seen under ``key`` in
    ``state`` (the session state), and is not empty. Streamlit hands the same selection back on every rerun, and an
    empty one after a chart is redrawn (a new figure is a new chart); an empty value resets ``key``, so choosing the
    same points again after a redraw counts as new."""
    text = json.dumps(value, sort_keys=True, default=str) if value else ""
    if text == state.get(key, ""):
        return False
    state[key] = text
    return bool(text)


def fresh_choice(event, state, key: str) -> tuple[list[int], bool] | None:
    """(positions, single click) of a NEW selection event with points, else None (see :func:`is_new`)."""
    sel = selection_of(event)
    return chosen(event) if is_new(state, key, sel if sel.get("points") else None) else None
