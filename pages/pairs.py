"""Pairs: a preference-pair dataset's margin distributions (a log-scale control on each chart), the AUROC of each pair score when the dataset has
planted swap labels, the DPO warm-ups (reward accuracy and margin before and after each, the job's step timings),
the LossDiff vs IRM scatter with its adjustable percentile band (what it keeps and drops; save it as a selection),
the influence check (how well each score tracks the pairs' influence IF: Spearman, overlap with TIF, the auto band;
start a new check on the background worker), and the pair view: prompt, chosen and rejected side by side, each
reply's tokens coloured by log π_θ − log π_ref, every pair score with its percentile. ``?example=ID`` opens a pair
directly.

Every number comes from ``scoring.queries.pairs`` (the same selection call as ``select --rule lossdiff-irm``) and
``scoring.queries.influence`` (the warm-up report and the ``influence`` job's report, as ``status`` and
``influence`` print them).
"""
from __future__ import annotations

import streamlit as st

from pages import _ui
from scoring.errors import UserError
from scoring.queries.influence import (
    DEFAULT_SAMPLE,
    agreement_frame,
    auto_band_command,
    check_facts,
    influence_check,
    influence_points,
    pending_influence,
    start_influence,
    timings_frame,
    warmup_frame,
)
from scoring.queries.pairs import (
    DIST_SCORES,
    SCATTER_POINTS,
    band_command,
    band_summary,
    has_band_scores,
    n_with_band_scores,
    pair_detail,
    scatter,
)
from scoring.queries.view import auroc, find_example, histograms
from scoring.selection.pairs import DEFAULT_BAND
from scoring.selection.saved import save_spec

ctx = _ui.ctx()
st.title("Pairs")
if ctx.dataset and not ctx.is_pair:
    st.info(f"**{ctx.dataset}** holds SFT examples; this page is for preference-pair datasets (chosen / rejected "
            "columns, e.g. `python -m scoring demo --pairs`). Pick one in the sidebar.")  # fmt: skip
    st.stop()
view = _ui.need_view(ctx)

m1, m2, m3 = st.columns(3)
m1.metric("Pairs", f"{view.n_rows:,}")
m2.metric("Scored", f"{view.n_scored:,}")
m3.metric("Score run", view.job.id[:8], help=f"model {view.job.model}, state {view.job.state}")

# ---------------------------------------------------------------- margin distributions and AUROC
st.subheader("Margin distributions")
margins = [s for s in DIST_SCORES if s in view.score_columns]
hist = histograms(view, margins, log=_ui.log_scores(view, margins, "pairs_log") if margins else ())
if len(hist):
    st.caption("Histograms binned in DuckDB (40 equal-width bins per score, on log10 values for the scores on a "
               "log scale) over the scored pairs.")  # fmt: skip
    st.vega_lite_chart(hist, _ui.facet_bars(hist, columns=4), width="content")
    _ui.log_note(hist)
else:
    st.caption("No margin score is computed yet.")
table = auroc(view)
if table is not None:
    st.markdown("**AUROC of each pair score against the planted swaps** (1: the score ranks every swapped pair "
                "below every clean one; 0.5: chance; below 0.5: it ranks them high)")  # fmt: skip
    st.dataframe(table.style.format("{:.2f}", na_rep="–"), key="pairs_auroc")

# ---------------------------------------------------------------- the DPO warm-ups
st.subheader("Warm-ups")
warmups = warmup_frame(view.job)
if len(warmups):
    st.caption("π_θ is π_ref after one DPO epoch on the training pairs; θ_val is trained on the validation pairs "
               "(from the model in *trained from*). **Reward accuracy**: the share of pairs whose DPO reward margin "
               "β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))] is positive; before π_θ it is 0 by "
               "definition, since π_θ starts as π_ref (every margin is 0). **Mean margin**: that margin's mean. "
               "**Preference accuracy**: the share of pairs where the model gives the chosen reply the higher "
               "log-probability. On the validation pairs, which π_θ never saw, a rise means it learnt the "
               "preference rather than the pairs.")  # fmt: skip
    fmt = {c: st.column_config.NumberColumn(format="%.4f" if "margin" in c else "%.3f")
           for c in warmups.columns if c.endswith(("before", "after"))}  # fmt: skip
    st.dataframe(warmups, hide_index=True, key="pairs_warmups", column_config=fmt)
else:
    st.caption("This score run has no warm-up report (it trained nothing, or predates the report).")
timings = timings_frame(view.job)
if len(timings):
    st.markdown(f"**Step timings** ({timings['seconds'].sum():,.0f} s in all; a reused pass or model costs ~0)")
    st.dataframe(timings, hide_index=True, key="pairs_timings",
                 column_config={"seconds": st.column_config.NumberColumn(format="%.1f")})  # fmt: skip

# ---------------------------------------------------------------- LossDiff vs IRM band
st.subheader("LossDiff-IRM band")
if not has_band_scores(view):
    st.info("This score run has no lossdiff and irm scores (they need the DPO warm-up and validation passes): "
            "score the dataset with the default pair scores on the **Jobs** page.")  # fmt: skip
    st.stop()
default = tuple(int(v) for v in DEFAULT_BAND)
b1, b2, b3 = st.columns([2, 2, 1])
band_ld = b1.slider("lossdiff: percentile band", 0, 100, default, key="pairs_band_lossdiff")
band_irm = b2.slider("irm: percentile band", 0, 100, default, key="pairs_band_irm")
include_flagged = b3.checkbox("Include flagged pairs", key="pairs_flagged")
bands = tuple((lo, hi) if lo < hi else ((lo, lo + 1) if lo < 100 else (99, 100)) for lo, hi in (band_ld, band_irm))
try:
    summary = band_summary(ctx.cache, view, bands, include_flagged)
except UserError as error:
    st.error(str(error))
    st.stop()
k1, k2, k3 = st.columns(3)
k1.metric("Kept", f"{summary.n_kept:,}", help="pairs inside both bands")
k2.metric("Dropped", f"{summary.n_dropped:,}")
k3.metric("Kept of eligible", f"{100 * summary.n_kept / max(summary.n_eligible, 1):.1f} %",
          help="eligible: scored and (unless included) unflagged")  # fmt: skip

points = scatter(view, SCATTER_POINTS, summary.result.kept_pos)
total = n_with_band_scores(view)
st.caption(f"{len(points):,} of {total:,} pairs drawn with a fixed seed (the same pairs every time). Shaded: each "
           "score's percentile band; kept pairs lie where the two overlap.")  # fmt: skip
symlog = st.toggle("Log scale (symmetric log: keeps the sign, linear near 0)", key="pairs_scatter_log",
                   help="for the LossDiff-IRM and influence scatters, whose scores are signed")  # fmt: skip
# Every layer names the same axis title: Vega-Lite would otherwise join the layers' fields ("lo, hi, lossdiff").
X_AXIS = {"type": "quantitative", "title": "lossdiff (LossDiff)", **({"scale": {"type": "symlog"}} if symlog else {})}
Y_AXIS = {"type": "quantitative", "title": "irm (IRM)", **({"scale": {"type": "symlog"}} if symlog else {})}
rects = []
if "lossdiff" in summary.edges:
    lo, hi = summary.edges["lossdiff"]
    rects.append({"mark": {"type": "rect", "opacity": 0.12, "color": "#1f77b4"},
                  "data": {"values": [{"lo": lo, "hi": hi}]},
                  "encoding": {"x": {"field": "lo", **X_AXIS}, "x2": {"field": "hi"}}})  # fmt: skip
if "irm" in summary.edges:
    lo, hi = summary.edges["irm"]
    rects.append({"mark": {"type": "rect", "opacity": 0.12, "color": "#ff7f0e"},
                  "data": {"values": [{"lo": lo, "hi": hi}]},
                  "encoding": {"y": {"field": "lo", **Y_AXIS}, "y2": {"field": "hi"}}})  # fmt: skip
st.vega_lite_chart(points, {"height": 420, "layer": [*rects, {
    "mark": {"type": "point", "filled": True, "opacity": 0.6, "size": 18},
    "encoding": {"x": {"field": "lossdiff", **X_AXIS}, "y": {"field": "irm", **Y_AXIS},
                 "color": {"field": "rows", "type": "nominal", "title": None,
                           "scale": {"domain": ["kept", "dropped"], "range": ["#1f77b4", "#b0b0b0"]}},
                 "tooltip": [{"field": "id"}, {"field": "lossdiff", "format": ".4g"}, {"field": "irm", "format": ".4g"}]},
}]}, width="stretch", key="pairs_scatter")  # fmt: skip

r1, r2 = st.columns([1, 2])
with r1:
    st.markdown("**Dropped by reason**")
    reasons = summary.result.reason_counts()
    st.dataframe({"reason": list(reasons), "pairs": list(reasons.values())}, hide_index=True, height=180)
with r2:
    name = st.text_input("Save this band as", key="pairs_sel_name", placeholder="e.g. lossdiff-irm-12-88")
    command = band_command(ctx.cache, summary.spec, name.strip())
    st.markdown("Equivalent command:")
    st.code(command, language="bash")
    replace = st.checkbox("Replace a saved selection of this name", key="pairs_replace",
                          help="Without it, saving under a taken name is refused and says what is there")
    if st.button("Save selection", key="pairs_save"):
        try:
            save_spec(ctx.cache, summary.spec, name.strip(), replace=replace)
            st.success(f"Saved {name.strip()}: {summary.n_kept:,} pairs kept. Export it on the **Export** page.")
        except UserError as error:
            st.error(str(error))

# ---------------------------------------------------------------- the influence check
st.subheader("Influence check")
st.caption("How well the cheap scores track what they stand for. On a seeded sample of selectable pairs, the "
           "influence job computes each pair's first-order influence IF(d) = ∇ℓ(θ; d)·∇L_val(θ) at π_θ (how much "
           "one more step on the pair would lower the loss on the validation pairs). **TIF**, the paper's "
           "truncated-influence selection, keeps the pairs whose IF lies in the middle of the sample.")  # fmt: skip
check = influence_check(ctx.cache, view)
if check is None:
    st.caption("No finished influence check of this score run yet: run one below (one backward pass per sampled "
               "pair, plus one over the validation pairs).")  # fmt: skip
else:
    facts = check_facts(check)
    lo, hi = facts["band"] or (float("nan"), float("nan"))
    chance = facts["chance"] if facts["chance"] is not None else float("nan")
    st.markdown(f"Influence job `{check.id}`: **{facts['n']:,}** sampled pairs (seed {facts['seed']}), ∇L_val over "
                f"{facts['n_val'] or 0:,} validation pairs. The band {lo:g}-{hi:g} keeps {facts['kept']:,} of them; "
                f"a random set that size overlaps TIF by **{chance:.2f}** (chance).")  # fmt: skip
    st.caption("**Spearman with IF**: rank correlation of the score with IF over the sample (the combined row ranks "
               "by the mean of a pair's lossdiff and irm percentiles). **Overlap with TIF**: |A ∩ TIF| / min(|A|, "
               "|TIF|), A the score's own selection of the same size (its most central pairs; for the combined row "
               "the band's kept pairs). The paper reports 0.73-0.78 for LossDiff-IRM and 0.60-0.70 for one score "
               "alone. **Above chance**: overlap minus the chance level.")  # fmt: skip
    st.dataframe(agreement_frame(check).drop(columns="name"), hide_index=True, key="pairs_agreement",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                ("spearman with IF", "overlap with TIF", "overlap above chance")})  # fmt: skip
    points = influence_points(ctx.cache, view, check)
    if len(points):
        st.caption("Each score (x) against IF (y) on the sampled pairs; hover a point for its pair id.")
        st.vega_lite_chart(points, _ui.facet_points("value", "influence", log=symlog), width="content",
                           key="pairs_influence_scatter")  # fmt: skip
    best = facts["auto_band"]
    if best:
        st.markdown(f"**Auto band {best['band'][0]:g}-{best['band'][1]:g}**: of the bands on a 5-point grid that "
                    f"keep 50-65 % of the sample, the one whose selection overlaps TIF most above chance: keeps "
                    f"{best['kept']:,} of {facts['n']:,}, overlap {best['overlap']:.2f} (chance {best['chance']:.2f}, "
                    f"lift {best['lift']:+.2f}). Equivalent command:")  # fmt: skip
        st.code(auto_band_command(ctx.cache, view), language="bash")
    else:
        st.caption("No band on the 5-point grid keeps 50-65 % of the sample: no auto band.")
i1, i2, i3 = st.columns([1, 1, 2], vertical_alignment="bottom")
sample_n = i1.number_input("Sample (pairs)", 3, 1_000_000, DEFAULT_SAMPLE, key="pairs_if_sample")
sample_seed = i2.number_input("Seed", 0, 2**31 - 1, 0, key="pairs_if_seed")
if i3.button("Run influence check", key="pairs_if_run"):
    try:
        started = start_influence(ctx.cache, view.dataset, view.job.id, int(sample_n), int(sample_seed))
        shown = check is not None and started.id == check.id
        st.success(f"Influence job {started.id}: " + (f"already done{' (its report is above)' if shown else ''}"
                                                      if started.state == "done"
                                                      else f"{started.state}; a background worker runs it"))  # fmt: skip
    except UserError as error:
        st.error(str(error))
pending = pending_influence(ctx.cache, view)
if pending is not None:
    total, done = pending.total or 0, pending.done or 0
    st.progress(min(done / total, 1.0) if total else 0.0,
                text=f"Influence job {pending.id[:8]}: {pending.stage or pending.state}"
                     + (f" — {done:,} / {total:,}" if total else ""))  # fmt: skip

# ---------------------------------------------------------------- one pair
st.subheader("Pair view")
wanted = st.text_input("Open pair by id", value=st.query_params.get("example", ""), key="pairs_open",
                       placeholder="a pair id, e.g. from the scatter's tooltip")  # fmt: skip
if not wanted:
    st.caption("Type a pair id (hover a point in the scatter for its id) to open it.")
    st.stop()
idx = find_example(view, wanted)
if idx is None:
    st.warning(f"No pair with id {wanted!r} in {view.dataset}.")
    st.stop()
st.query_params["example"] = wanted
pair = pair_detail(ctx.cache, view, idx)
st.subheader(f"Pair {pair['id']}", anchor=False)
if pair["flag"]:
    st.warning(f"Flagged: {pair['flag']}")
st.markdown("**Prompt**")
st.code(pair["prompt"], language=None, wrap_lines=True)
legend = ("tokens coloured by log π_θ − log π_ref (green: the DPO warm-up made the token likelier, red: less likely)"
          if pair["has_theta"] else "no π_θ pass yet: tokens are shown uncoloured")  # fmt: skip
left, right = st.columns(2)
for column, side in ((left, "chosen"), (right, "rejected")):
    with column:
        st.markdown(f"**{side.capitalize()}**")
        st.code(pair[side], language=None, wrap_lines=True)
        tokens = pair["tokens"][side]
        if len(tokens):
            st.caption(legend)
            tips = [f"log π_ref {r:.2f} · log π_θ {t:.2f} · change {c:+.3f}"
                    for r, t, c in zip(tokens["ref_logp"], tokens["theta_logp"], tokens["change"])]  # fmt: skip
            st.html(_ui.token_html(tokens["token"], tokens["change"].astype(float), tips))
        else:
            st.caption("Not scored yet.")
st.markdown("**Pair scores** (percentile among scored pairs)")
st.dataframe(pair["scores"], hide_index=True, key="pairs_scores", column_config={
    "value": st.column_config.NumberColumn(format="%.4g"),
    "percentile": st.column_config.ProgressColumn(min_value=0, max_value=100, format="%.0f")})  # fmt: skip
