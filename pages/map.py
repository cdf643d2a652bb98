"""Map: the UMAP layout of the embeddings, coloured by any score (a log scale on by default for ppl-like scores), by
kept / dropped under the current Select rule, or by any saved selection of the dataset.

- Hover: the example's id, its colour value and the first 100 characters of its text (escaped).
- Box or lasso: lists the chosen examples, which can be saved as a hand-picked selection (the record says
  ``rule: manual``; an existing name is only replaced with "Replace" ticked) and are shared with the Select page as
  ``st.session_state["map_chosen"] = {"dataset", "job", "pos"}`` (view positions).
- A click on one point opens that example below the map: its text (plain), scores and nearest neighbours, with
  links to Inspect and "Show on the map", which highlights the example and its neighbours (the rest dimmed).

The map draws a fixed-seed sample (1,000 points by default; up to 50,000 on request) whose size is stated, so a
recolour costs the same on a million rows as on the demo. The figure comes from :func:`pages._map_figure.map_figure`
(shared with the Select page) over :func:`scoring.queries.map.map_points`.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from pages import _ui
from pages._map_figure import fresh_choice, map_figure
from scoring.errors import UserError
from scoring.jobs.requests import map_request
from scoring.jobs.runner import enqueue
from scoring.jobs.worker import ensure_worker
from scoring.queries.map import (
    laid_out_order,
    map_points,
    save_hand_picked,
    saved_positions,
)
from scoring.queries.view import example, log_default, neighbours, positions, rows_at
from scoring.scores.view_reads import column
from scoring.selection.saved import list_selections, run_selection

CURRENT = "kept / dropped (current selection)"
SAVED = "saved selection: "
SIZES = [1000, 2000, 5000, 20000, 50000]
DEFAULT_SIZE = 1000
LISTED = 500  # chosen rows listed under the map


def compute_button(ctx, view) -> None:
    st.info("No map yet for this score run: the UMAP layout of its embeddings has not been computed.")
    if st.button("Compute the map (as a job)", key="map_compute"):
        try:
            job, _ = enqueue(ctx.cache, map_request(view.job))
            ensure_worker(ctx.cache)
            st.success(f"Map job {job.id} queued; follow it on the Jobs page.")
        except UserError as error:
            st.error(str(error))
    st.stop()


def mine(view, key: str) -> dict | None:
    """A session entry (map_chosen, map_open, map_highlight) if it belongs to this dataset and score run."""
    entry = st.session_state.get(key)
    return entry if entry and (entry.get("dataset"), entry.get("job")) == (view.dataset, view.job.id) else None


def colour_options(ctx, view) -> list[str]:
    spec = st.session_state.get("selection_spec")
    saved = [SAVED + r["name"] for r in list_selections(ctx.cache, view.dataset)]
    return [*view.score_columns, *([CURRENT] if spec and spec.dataset == view.dataset else []), *saved]


def kept_by(ctx, view, choice: str) -> tuple[np.ndarray | None, tuple[str, str], str]:
    """(kept positions, legend names, a note) for a kept / dropped colouring."""
    if choice == CURRENT:
        result = run_selection(ctx.cache, st.session_state["selection_spec"], view)[0]
        return result.kept_pos, ("kept", "dropped"), "Kept / dropped by the current rule on the Select page."
    name = choice[len(SAVED):]
    kept, missing = saved_positions(ctx.cache, view, name)
    note = f"Kept / dropped by the saved selection {name!r} ({len(kept):,} kept)."
    if missing:
        note += f" {missing:,} of its kept ids are not in this score run."
    return kept, (f"kept by {name}", "dropped"), note


def controls(ctx, view) -> tuple[str, np.ndarray | None, tuple[str, str], bool, int, str]:
    """(colour: a score or "kept", kept positions, legend names, log scale, points drawn, a note)."""
    options = colour_options(ctx, view)
    c1, c2, c3 = st.columns([3, 2, 1])
    default = options.index("davir") if "davir" in options else 0
    choice = c1.selectbox("Colour by", options, index=default, key="map_colour")
    n = c2.select_slider("Points drawn", SIZES, value=DEFAULT_SIZE, key="map_points")
    if choice in view.score_columns:
        log = c3.toggle("Log scale", value=log_default(view, choice), key=f"map_log_{choice}",
                        help="Colour by log10 of the score (rows ≤ 0 drawn grey); on by default for ppl-like scores")
        return choice, None, ("kept", "dropped"), log, n, ""
    try:
        kept, names, note = kept_by(ctx, view, choice)
    except UserError as error:
        st.warning(f"{error} Colouring by {view.score_columns[0]} instead.")
        return view.score_columns[0], None, ("kept", "dropped"), False, n, ""
    return "kept", kept, names, False, n, note


def handle(view, event) -> None:
    """A new selection event: a click opens the example, a box or lasso becomes the chosen set."""
    new = fresh_choice(event, st.session_state, "_map_seen")
    if new is None:
        return
    pos, click = new
    if click:
        st.session_state["map_open"] = {"dataset": view.dataset, "job": view.job.id, "pos": pos[0]}
    elif pos:
        st.session_state["map_chosen"] = {"dataset": view.dataset, "job": view.job.id, "pos": pos}


def highlight_bar(view) -> list[int] | None:
    mark = mine(view, "map_highlight")
    if not mark:
        return None
    h1, h2 = st.columns([4, 1])
    h1.info(f"{len(mark['pos']):,} examples highlighted ({mark.get('source', '')}); the others are dimmed.")
    if h2.button("Clear the highlight", key="map_highlight_clear"):
        st.session_state.pop("map_highlight", None)
        st.rerun()
    return mark["pos"]


def save_form(ctx, view, pos: list[int], colour: str) -> None:
    """Save the chosen rows as a hand-picked selection (refusing an existing name unless "Replace" is ticked)."""
    c1, c2, c3 = st.columns([3, 1, 1])
    name = c1.text_input("Save as selection", key="map_save_name", placeholder="a name, e.g. lasso-cluster3")
    replace = c2.checkbox("Replace", key="map_save_replace", help="Overwrite a saved selection of that name")
    if c3.button("Save", key="map_save", disabled=not name):
        order_by = colour if colour in view.score_columns else ("davir" if "davir" in view.score_columns else None)
        try:
            path, result = save_hand_picked(ctx.cache, view, name.strip(), pos, order_by, replace=replace)
        except UserError as error:
            st.error(str(error))
            return
        st.success(f"Saved {len(result.kept_ids):,} hand-picked examples as {name.strip()!r} ({path.name}); it is "
                   "listed under Colour by, on Select and on Export.")  # fmt: skip


def chosen_panel(ctx, view, colour: str) -> None:
    picked = mine(view, "map_chosen")
    if not picked:
        return
    pos = picked["pos"]
    h1, h2 = st.columns([4, 1])
    h1.subheader(f"{len(pos):,} examples chosen" + (f" (first {LISTED} listed)" if len(pos) > LISTED else ""))
    if h2.button("Clear", key="map_chosen_clear"):
        st.session_state.pop("map_chosen", None)
        st.rerun()
    rows = rows_at(ctx.cache, view, pos[:LISTED], view.score_columns)
    rows["open"] = [_ui.example_link(view.dataset, i) for i in rows["id"]]
    st.dataframe(rows, hide_index=True, column_config={"open": st.column_config.LinkColumn(display_text="open")})
    save_form(ctx, view, pos, colour)


def example_panel(ctx, view) -> None:
    """The clicked example in place: text (plain), scores, nearest neighbours (links to Inspect, or highlighted)."""
    opened = mine(view, "map_open")
    if not opened:
        return
    pos = int(opened["pos"])
    ex = example(ctx.cache, view, int(column(view, "idx")[pos]))
    h1, h2 = st.columns([4, 1])
    h1.subheader(f"Example {ex['id']}")
    h1.markdown(f"[Open in Inspect]({_ui.example_link(view.dataset, ex['id'])})")
    if h2.button("Close", key="map_open_close"):
        st.session_state.pop("map_open", None)
        st.rerun()
    left, right = st.columns([3, 2])
    _ui.example_body(ex, left, right)
    near = neighbours(ctx.cache, view, ex["idx"])
    if not len(near):
        return
    right.markdown("**Nearest neighbours**")
    near["open"] = [_ui.example_link(view.dataset, i) for i in near["id"]]
    right.dataframe(near[["id", "cosine", "prompt", "open"]], hide_index=True, column_config={
        "cosine": st.column_config.NumberColumn(format="%.3f"),
        "open": st.column_config.LinkColumn(display_text="open")})  # fmt: skip
    if right.button("Show on the map", key="map_show_near"):
        near_pos = positions(view, near["idx"].to_numpy()).tolist()
        st.session_state["map_highlight"] = {"dataset": view.dataset, "job": view.job.id, "pos": [pos, *near_pos],
                                             "source": f"{ex['id']} and its {len(near_pos)} nearest neighbours"}
        st.rerun()


def main() -> None:
    ctx = _ui.ctx()
    st.title("Map")
    _ui.pair_notice(ctx, "the Map lays out SFT embeddings, and a pair score run keeps none.")
    view = _ui.need_view(ctx)
    if not view.has_layout:
        compute_button(ctx, view)
    colour, kept_pos, names, log, n, note = controls(ctx, view)
    highlight = highlight_bar(view)
    points = map_points(ctx.cache, view, n, colour, kept_pos, extra=highlight)
    laid = len(laid_out_order(view))
    extra = len(points) - min(n, laid)
    st.caption(f"{min(n, laid):,} points drawn with a fixed seed, of {laid:,} examples"
               + (f", plus {extra:,} highlighted" if extra > 0 else "") + ". " + (note + " " if note else "")
               + "Hover for the text; click a point to open it; pick Box or Lasso Select in the toolbar to choose "
               "examples.")  # fmt: skip
    fig = map_figure(points, colour, highlight, log, names=names)
    event = st.plotly_chart(fig, key="map_chart", on_select="rerun", selection_mode=("points", "box", "lasso"),
                            width="stretch", config={"displaylogo": False})  # fmt: skip
    handle(view, event)
    chosen_panel(ctx, view, colour)
    example_panel(ctx, view)


main()
