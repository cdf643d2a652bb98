"""The Select page's saved selections: save the current rule by name (asking before replacing one), list, compare
two (a different pair by default), load one back into the controls (on top of the page), delete.

Saving goes through :func:`scoring.selection.saved.save_spec`, which refuses to replace a selection unless told to
and refuses a rule over scores that do not exist yet; the page shows its message.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from scoring.errors import UserError
from scoring.selection.saved import compare_selections, delete_selection, list_selections, save_spec, selection_exists

LISTED = ("name", "scores", "rule", "combine", "budget", "quota", "dedup", "n_kept", "tokens_kept", "partial", "created")


def reason_text(counts: dict) -> str:
    """{"below_cut:davir": 12, …} as "below_cut:davir 12 · …" (never a Python dict on screen)."""
    return " · ".join(f"{k} {v:,}" for k, v in counts.items()) or "–"


def save_controls(ctx, view, spec, result) -> None:
    """Name + Save; when the name is taken, say what is there and save only after "Replace it" is clicked."""
    s1, s2 = st.columns([2, 1], vertical_alignment="bottom")
    name = s1.text_input("Name", key="sel_name", placeholder="e.g. davir-top6")
    pending = st.session_state.get("sel_replace_pending")
    if s2.button("Save", key="sel_save"):
        existing = selection_exists(ctx.cache, view.dataset, name) if name else None
        if existing:
            st.session_state["sel_replace_pending"] = pending = (name, spec)
        else:
            _save(ctx, spec, name, replace=False)
            pending = None
    if pending and pending[0] == name and pending[1] == spec:
        old = selection_exists(ctx.cache, view.dataset, name) or {}
        st.warning(f"A selection named {name!r} already exists ({old.get('n_kept', 0):,} rows kept, rule "
                   f"{old.get('rule')} on {', '.join(old.get('scores') or []) or 'hand-picked rows'}, budget "
                   f"{old.get('budget')}, saved {old.get('created')}). Replace it with this rule "
                   f"({len(result.kept_ids):,} rows)?")  # fmt: skip
        r1, r2 = st.columns(2)
        if r1.button("Replace it", key="sel_replace_yes", type="primary"):
            _save(ctx, spec, name, replace=True)
            st.session_state.pop("sel_replace_pending", None)
        if r2.button("Keep the old one", key="sel_replace_no"):
            st.session_state.pop("sel_replace_pending", None)
            st.rerun()


def _save(ctx, spec, name: str, replace: bool) -> None:
    try:
        _, saved = save_spec(ctx.cache, spec, name, replace=replace)
        st.success(f"Saved {name}: {len(saved.kept_ids):,} rows kept.")
    except UserError as error:
        st.error(str(error))


def comparison(ctx, view, names: list[str]) -> None:
    c1, c2 = st.columns(2)
    a = c1.selectbox("Compare", names, key="sel_cmp_a")
    others = [n for n in names if n != a] or names
    b = c2.selectbox("with", others, key="sel_cmp_b")
    if not st.toggle("Show the comparison", key="sel_cmp_on"):
        return
    if a == b:
        st.info("Save a second selection to compare two.")
        return
    cmp = compare_selections(ctx.cache, view.dataset, a, b)
    k1, k2, k3 = st.columns(3)
    k1.metric("Overlap", f"{cmp.overlap:,}")
    k2.metric("Jaccard", f"{cmp.jaccard:.3f}")
    k3.metric(f"Only in {a} / only in {b}", f"{cmp.n_a - cmp.overlap:,} / {cmp.n_b - cmp.overlap:,}")
    w1, w2 = st.columns(2)
    w1.markdown(f"**Kept by {a}, not by {b}** — why {b} dropped them: {reason_text(cmp.left_because)}")
    w1.dataframe({"id": cmp.only_a}, hide_index=True, height=180)
    w2.markdown(f"**Kept by {b}, not by {a}** — why {a} dropped them: {reason_text(cmp.joined_because)}")
    w2.dataframe({"id": cmp.only_b}, hide_index=True, height=180)


def saved_section(ctx, view, spec, result) -> None:
    st.subheader("Saved selections")
    save_controls(ctx, view, spec, result)
    saved = list_selections(ctx.cache, view.dataset)
    if not saved:
        st.caption("None yet.")
        return
    st.dataframe(pd.DataFrame([{k: s.get(k) for k in LISTED} for s in saved]), hide_index=True)
    names = [s["name"] for s in saved]
    comparison(ctx, view, names)
    d1, d2 = st.columns([2, 1], vertical_alignment="bottom")
    doomed = d1.selectbox("Delete", names, key="sel_delete_name")
    if d2.button("Delete", key="sel_delete"):
        delete_selection(ctx.cache, view.dataset, doomed)
        st.rerun()
