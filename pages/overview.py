"""Overview: how the scores are distributed, how they agree, what is flagged, and (demo) how well each finds defects.

While a job runs, a banner says "k of N scored" and the charts redraw on the partial results; both live in a
fragment that reruns on a timer, so the rest of the app is not rerun. Every chart has a log-scale control, on by
default for ppl-like scores (``scoring.queries.view.log_default``); "Flagged rows" counts each flagged row once.
"""
from __future__ import annotations

import streamlit as st

from pages import _ui
from scoring.queries.jobs import progress
from scoring.queries.view import (
    auroc,
    ecdf,
    flag_counts,
    flagged_rows,
    histograms,
    log_default,
    sample,
    spearman,
)
from scoring.scores.views import score_view

SCATTER_POINTS = 2000

context = _ui.ctx()
st.title("Overview")
_ui.pair_notice(context, "the charts below cover every pair score.", stop=False)


def metrics(view) -> None:
    cols = st.columns(4)
    cols[0].metric("Examples", f"{view.n_rows:,}")
    cols[1].metric("Scored", f"{view.n_scored:,}")
    counts = flag_counts(view)
    cols[2].metric("Flagged rows", f"{flagged_rows(view):,}",
                   help=f"rows with at least one flag; {len(counts)} distinct reason(s): "
                        + (", ".join(f"{r} {n:,}" for r, n in counts.items()) or "none")
                        + " (a row with two reasons counts under both)")  # fmt: skip
    cols[3].metric("Score run", view.job.id[:8], help=f"model {view.job.model}, state {view.job.state}")


def distributions(view, scores: list[str]) -> None:
    st.subheader("Distributions")
    logged = _ui.log_scores(view, scores, "overview_log")
    st.caption("Histograms binned in DuckDB (40 equal-width bins per score, on log10 values for the scores on a "
               "log scale), over the scored rows.")  # fmt: skip
    hist = histograms(view, scores, log=logged)
    st.vega_lite_chart(hist, _ui.facet_bars(hist), width="content")
    _ui.log_note(hist)
    st.caption("Empirical CDFs (fraction of scored rows at or below each value).")
    curves = ecdf(view, scores, log=logged)
    st.vega_lite_chart(curves, _ui.facet_lines(curves), width="content")


def length_scatter(view, scores: list[str]) -> None:
    st.subheader("Score vs response length")
    default = scores.index("davir") if "davir" in scores else 0
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    pick = c1.selectbox("Score", scores, index=default, key="overview_scatter_score")
    log = c2.toggle("Log scale", value=log_default(view, pick), key=f"overview_scatter_log_{pick}",
                    help="log y axis (values ≤ 0 left out); on by default for ppl-like scores")  # fmt: skip
    points = sample(view, SCATTER_POINTS, [pick, "n_response_tokens"])
    points = points[points[pick].notna()]
    if not len(points):
        st.info(f"{pick} is not computed yet for this run: no scored row has a value." if view.n_scored else
                "No scored rows yet.")  # fmt: skip
        return
    note = ""
    if log:
        left_out = int((points[pick] <= 0).sum())
        points = points[points[pick] > 0]
        note = f" {left_out:,} with {pick} ≤ 0 left out of the log scale." if left_out else ""
    st.caption(f"{len(points):,} of {view.n_scored:,} scored rows, drawn with a fixed seed (the same rows every "
               f"time).{note}")  # fmt: skip
    y = {"field": pick, "type": "quantitative", "title": pick + (" (log scale)" if log else ""),
         **({"scale": {"type": "log"}} if log else {})}  # fmt: skip
    st.vega_lite_chart(points, {
        "mark": {"type": "point", "filled": True, "opacity": 0.5, "size": 14},
        "encoding": {"x": {"field": "n_response_tokens", "type": "quantitative", "title": "response tokens"}, "y": y,
                     "tooltip": [{"field": "id"}, {"field": pick, "format": ".4g"}, {"field": "n_response_tokens"}]},
    }, width="stretch")  # fmt: skip


def body() -> None:
    ctx = context  # this run's context (a fragment rerun reuses the page run's)
    p = progress(ctx.cache, ctx.dataset) if ctx.dataset else None
    if p and p.active:
        st.info(f"**{p.done:,} of {p.total:,}** — {p.stage}" + (f", ETA {p.eta_s:.0f} s" if p.eta_s else "")
                + ". Charts show the partial results.")  # fmt: skip
        if ctx.view is not None and ctx.job_id:  # pick up parts that landed since the page was drawn
            ctx.view = score_view(ctx.cache, ctx.dataset, ctx.job_id, max_age_s=_ui.STALE_WHILE_RUNNING_S)
    view = _ui.need_view(ctx)
    scores = view.score_columns
    metrics(view)
    if not view.n_scored:
        st.info("No example is scored yet.")
        return
    distributions(view, scores)
    length_scatter(view, scores)

    left, right = st.columns(2)
    with left:
        st.subheader("Spearman rank correlation")
        matrix = spearman(view)
        if len(matrix):
            long, spec = _ui.heatmap(matrix)
            st.vega_lite_chart(long, spec, width="stretch")
        else:
            st.caption("Needs at least three scored rows.")
    with right:
        st.subheader("Flagged rows by reason")
        counts = flag_counts(view)
        if counts:
            st.dataframe({"reason": list(counts), "rows": list(counts.values())}, hide_index=True)
            st.caption(f"{flagged_rows(view):,} flagged rows; a row flagged for several reasons counts under each.")
        else:
            st.caption("No row is flagged.")
    table = auroc(view)
    if table is not None:
        st.subheader("AUROC per defect kind")
        st.caption("How well each score ranks the labelled defects below clean rows (1 = perfect, 0.5 = chance, "
                   "below 0.5: the score ranks defects high, so keep its bottom instead).")
        st.dataframe(table.style.format("{:.2f}", na_rep="–"))


active = bool(context.progress and context.progress.active)
st.fragment(body, run_every=_ui.REFRESH_S if active else None)()
