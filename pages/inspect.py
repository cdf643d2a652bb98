"""Inspect: a sortable, filterable table paged in SQL (the id, then the sorted-by score, then the other scores);
choosing a row opens the example in the same run. When the Select page holds a rule for this score run, a "reason"
column says why that rule keeps or drops each row.

The example panel shows the prompt and response as plain text (dataset text is untrusted), every score with its
percentile, the response tokens coloured by loss reduction (base - reference), and the nearest neighbours in
embedding space. ``?example=ID`` in the URL opens an example directly.
"""
from __future__ import annotations

import math

import streamlit as st

from pages import _ui
from scoring.queries.tokens import token_view
from scoring.queries.view import (
    TableFilter,
    example,
    find_example,
    flag_counts,
    neighbours,
    positions,
    table_page,
)
from scoring.selection.explain import reason_of
from scoring.selection.saved import run_selection

PAGE_SIZE = 50


def open_picked(picked_id: str | None) -> None:
    """Open the row just picked in the table, in this run. The "Open example by id" box keeps its own state (its
    ``value=`` counts only on its first run), so a new pick is written into that state before the box is drawn;
    while the pick stays the same, whatever the user types there wins. On a session's first run the box starts
    from ``?example=``."""
    if picked_id and picked_id != st.session_state.get("_inspect_picked"):
        st.session_state["inspect_open"] = picked_id
    st.session_state["_inspect_picked"] = picked_id
    if "inspect_open" not in st.session_state:
        st.session_state["inspect_open"] = st.query_params.get("example", "")

ctx = _ui.ctx()
st.title("Inspect")
_ui.pair_notice(ctx, "Inspect shows one response per example, its loss-reduction tokens and its "
               "embedding neighbours.")
view = _ui.need_view(ctx)
scores = view.score_columns

# ---------------------------------------------------------------- filters and table
flags = ["any", "clean", "flagged", *flag_counts(view)]
c1, c2, c3, c4 = st.columns([2, 1, 1, 2])
sort = c1.selectbox("Sort by", scores, index=scores.index("davir") if "davir" in scores else 0, key="inspect_sort")
descending = c2.toggle("Descending", value=True, key="inspect_desc")
flag = c3.selectbox("Flag", flags, key="inspect_flag")
text = c4.text_input("Text contains", key="inspect_text", placeholder="id, prompt or response")
with st.expander("Score range filter"):
    r1, r2, r3 = st.columns(3)
    fscore = r1.selectbox("Score", ["(none)", *scores], key="inspect_fscore")
    lo = r2.number_input("min", value=None, key="inspect_lo", format="%.4f")
    hi = r3.number_input("max", value=None, key="inspect_hi", format="%.4f")
filt = TableFilter(flag=flag, score=None if fscore == "(none)" else fscore, lo=lo, hi=hi, text=text)
first_page, total = table_page(ctx.cache, view, filt, sort, descending, 0, PAGE_SIZE)
pages = max(1, math.ceil(total / PAGE_SIZE))
page_no = st.number_input(f"Page (of {pages:,}; {total:,} rows match)", min_value=1, max_value=pages, value=1,
                          key="inspect_page")  # fmt: skip
rows = first_page if page_no == 1 else table_page(ctx.cache, view, filt, sort, descending, page_no - 1,
                                                          PAGE_SIZE)[0]  # fmt: skip
rule = st.session_state.get("selection_spec")  # the Select page's current rule: why it keeps or drops each row
if rule is not None and (rule.dataset, rule.job) == (view.dataset, view.job.id) and len(rows):
    kept_by_rule, _ = run_selection(ctx.cache, rule, view)
    rows.insert(1, "reason", reason_of(kept_by_rule, positions(view, rows["idx"].to_numpy())))
first = ["id", sort, *(c for c in scores if c != sort)]  # the sorted-by column sits next to the id, in view
first = ["id", "reason", *first[1:]] if "reason" in rows.columns else first
event = st.dataframe(
    rows, hide_index=True, on_select="rerun", selection_mode="single-row", key="inspect_table",
    column_config={c: st.column_config.NumberColumn(format="%.4g") for c in scores}, height=320,
    column_order=[*first, *(c for c in rows.columns if c not in first)],
)  # fmt: skip
picked = event.selection.rows if event and hasattr(event, "selection") else []
open_picked(str(rows["id"].iloc[picked[0]]) if picked and picked[0] < len(rows) else None)

# ---------------------------------------------------------------- one example
wanted = st.text_input("Open example by id", key="inspect_open").strip()
if not wanted:
    st.caption("Choose a row above (or type an id) to open an example.")
    st.stop()
idx = find_example(view, wanted)
if idx is None:
    st.warning(f"No example with id {wanted!r} in {view.dataset}.")
    st.stop()
st.query_params["example"] = wanted
ex = example(ctx.cache, view, idx)
st.subheader(f"Example {ex['id']}")
if ex["flag"]:
    st.warning(f"Flagged: {ex['flag']}")
left, right = st.columns([3, 2])
_ui.example_body(ex, left, right)

st.markdown("**Tokens by loss reduction** (base − reference, per response token; green: the fine-tuned model "
            "learned it, red: it got worse)")  # fmt: skip
tokens = token_view(ctx.cache, view, idx)
if not len(tokens):
    st.caption("This example is not scored yet.")
else:
    tips = [f"base {b:.2f} · ref {r:.2f} · reduction {d:.2f}" for b, r, d in
            zip(tokens["base"], tokens["ref"], tokens["reduction"])]  # fmt: skip
    st.html(_ui.token_html(tokens["token"], tokens["reduction"].astype(float), tips))

st.markdown("**Nearest neighbours** (cosine of mean-centred embeddings)")
near = neighbours(ctx.cache, view, idx)
if len(near):
    near["open"] = [_ui.example_link(view.dataset, i) for i in near["id"]]
    st.dataframe(near, hide_index=True, column_config={
        "cosine": st.column_config.NumberColumn(format="%.3f"),
        "open": st.column_config.LinkColumn(display_text="open")})  # fmt: skip
else:
    st.caption("No embeddings for this example.")
