"""Select: build a rule (scores, each top / bottom / band; AND or OR; a budget; optional quotas and near-duplicate
filter) and watch what it keeps as the controls move. Save it by name; list, compare and delete saved selections.

The rule is a :class:`scoring.selection.saved.SelectionSpec` run by :func:`scoring.selection.saved.run_selection`, the same
call ``python -m scoring select`` makes, so the app and the CLI keep the same ids. The CLI line is shown.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from pages import _ui
from scoring.errors import UserError
from scoring.queries.evaluate import suggested_command, verdict_for, verdict_lines
from scoring.queries.view import kept_histograms, rows_at
from scoring.selection.saved import (
    SelectionSpec,
    compare_selections,
    delete_selection,
    list_selections,
    reproduce_command,
    run_selection,
    save_spec,
)

ctx = _ui.ctx()
st.title("Select")
_ui.pair_notice(ctx, "the rules here work on any pair score; the LossDiff-IRM band has its own "
               "controls there.", stop=False)
view = _ui.need_view(ctx)
scores = view.score_columns

# ---------------------------------------------------------------- the rule
default = next(([s] for s in ("davir", "margin_base") if s in scores), scores[:1])  # SFT, else pairs
chosen = st.multiselect("Scores", scores, default=default, key="sel_scores")
if not chosen:
    st.info("Pick at least one score.")
    st.stop()
rules = []
cols = st.columns(min(len(chosen), 4))
for i, name in enumerate(chosen):
    with cols[i % len(cols)]:
        kind = st.radio(f"{name}: keep", ["top", "bottom", "band"], horizontal=True, key=f"sel_rule_{name}")
        if kind == "band":
            lo, hi = st.slider(f"{name}: percentile band", 0, 100, (25, 75), key=f"sel_band_{name}")
            rules.append(f"band:{lo}-{hi}" if lo < hi else f"band:{lo}-{min(lo + 1, 100)}")
        else:
            rules.append(kind)
combine = "and"
if len(chosen) > 1:
    combine = st.radio("Combine scores", ["and", "or"], horizontal=True, key="sel_combine",
                       format_func=lambda c: "AND (intersection)" if c == "and" else "OR (union)")  # fmt: skip

b1, b2 = st.columns([1, 2])
budget_kind = b1.radio("Budget as", ["percent", "count", "tokens"], horizontal=True, key="sel_budget_kind")
if budget_kind == "percent":
    pct = b2.slider("Percent of all rows", 0.5, 100.0, 6.0, 0.5, key="sel_pct")
    budget = f"{pct:g}%"
elif budget_kind == "count":
    count = b2.number_input("Rows", 1, max(view.n_rows, 1), min(max(view.n_rows // 10, 1), 1000), key="sel_count")
    budget = str(int(count))
else:
    tokens = b2.number_input("Tokens", 1, 10**12, 100_000, step=10_000, key="sel_tokens")
    budget = f"{int(tokens)}-tokens"

o1, o2, o3 = st.columns(3)
include_flagged = o1.checkbox("Include flagged rows", key="sel_flagged")
quota = o2.selectbox("Quota per group", ["(none)", *view.group_columns], key="sel_quota",
                     help="Split the budget over groups in proportion to their share of the candidates")
dedup = None
if o3.checkbox("Near-duplicate filter", key="sel_dedup_on", help="Skip an example whose embedding cosine to one "
               "already kept exceeds τ (its cost grows with kept × examined rows)"):  # fmt: skip
    dedup = o3.slider("τ (cosine)", 0.50, 1.00, 0.95, 0.01, key="sel_tau")

spec = SelectionSpec(dataset=view.dataset, scores=tuple(chosen), budget=budget, rules=tuple(rules), combine=combine,
                     include_flagged=include_flagged, quota=None if quota == "(none)" else quota, dedup=dedup,
                     job=view.job.id)  # fmt: skip
try:
    result, _ = run_selection(ctx.cache, spec, view)
except UserError as error:
    st.error(str(error))
    st.stop()
st.session_state["selection_spec"] = spec  # the Map page colours kept / dropped with it

# ---------------------------------------------------------------- what it keeps
n_kept = len(result.kept_ids)
m1, m2, m3, m4 = st.columns(4)
m1.metric("Kept", f"{n_kept:,}", help="rows kept by the rule")
m2.metric("Of all rows", f"{100 * n_kept / max(result.n_total, 1):.2f} %")
m3.metric("Tokens kept", f"{result.tokens_kept:,}")
m4.metric("Dropped", f"{len(result.dropped):,}")
st.code(reproduce_command(spec.record(view.job.id, "", "NAME")), language="bash")
verdicts = verdict_for(ctx.cache, spec)  # the latest finished evaluation of this very rule, if any
if verdicts:
    for line in verdict_lines(verdicts):
        st.text(line)
else:
    e1, e2 = st.columns([1, 3], vertical_alignment="center")
    e1.page_link("pages/evaluate.py", label="Evaluate this rule", icon=":material/science:")
    e2.caption("Not evaluated yet: does it beat random subsets of the same size? Save it, then run:")
    st.code(suggested_command(ctx.cache, spec), language="bash")

hist = pd.concat([kept_histograms(view, s, result.kept_pos).assign(score=s) for s in chosen])
long = hist.melt(id_vars=["score", "lo", "hi"], value_vars=["kept", "dropped"], var_name="rows", value_name="count")
st.vega_lite_chart(long, _ui.facet_bars(long, color="rows", columns=2, width=380), width="content")

r1, r2 = st.columns(2)
with r1:
    st.markdown("**Dropped by reason**")
    reasons = result.reason_counts()
    st.dataframe({"reason": list(reasons), "rows": list(reasons.values())}, hide_index=True, height=200)
with r2:
    st.markdown("**Just above the cut** (last kept)")
    st.dataframe(rows_at(ctx.cache, view, result.kept_pos[-5:][::-1], chosen), hide_index=True)
    st.markdown("**Just below the cut** (best not kept)")
    st.dataframe(rows_at(ctx.cache, view, result.next_pos, chosen), hide_index=True)

# ---------------------------------------------------------------- saved selections
st.subheader("Saved selections")
s1, s2 = st.columns([2, 1])
name = s1.text_input("Name", key="sel_name", placeholder="e.g. davir-top6")
if s2.button("Save", key="sel_save"):
    try:
        save_spec(ctx.cache, spec, name)
        st.success(f"Saved {name}: {n_kept:,} rows kept.")
    except UserError as error:
        st.error(str(error))
saved = list_selections(ctx.cache, view.dataset)
if not saved:
    st.caption("None yet.")
    st.stop()
st.dataframe(pd.DataFrame([{k: s.get(k) for k in ("name", "scores", "rule", "combine", "budget", "quota", "dedup",
                                                  "n_kept", "tokens_kept", "created")} for s in saved]),
             hide_index=True)  # fmt: skip
names = [s["name"] for s in saved]
c1, c2 = st.columns(2)
a = c1.selectbox("Compare", names, key="sel_cmp_a")
b = c2.selectbox("with", names, index=min(1, len(names) - 1), key="sel_cmp_b")
if st.toggle("Show the comparison", key="sel_cmp_on"):
    cmp = compare_selections(ctx.cache, view.dataset, a, b)
    k1, k2, k3 = st.columns(3)
    k1.metric("Overlap", f"{cmp.overlap:,}")
    k2.metric("Jaccard", f"{cmp.jaccard:.3f}")
    k3.metric(f"Only in {a} / only in {b}", f"{cmp.n_a - cmp.overlap:,} / {cmp.n_b - cmp.overlap:,}")
    w1, w2 = st.columns(2)
    w1.markdown(f"**Kept by {a}, not by {b}** — why {b} dropped them: {cmp.left_because or '–'}")
    w1.dataframe({"id": cmp.only_a}, hide_index=True, height=180)
    w2.markdown(f"**Kept by {b}, not by {a}** — why {a} dropped them: {cmp.joined_because or '–'}")
    w2.dataframe({"id": cmp.only_b}, hide_index=True, height=180)
d1, d2 = st.columns([2, 1])
doomed = d1.selectbox("Delete", names, key="sel_delete_name")
if d2.button("Delete", key="sel_delete"):
    delete_selection(ctx.cache, view.dataset, doomed)
    st.rerun()
