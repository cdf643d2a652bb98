"""Select, the threshold workbench: build a rule (scores, each top / bottom / a percentile band / a value cut / a
value band; AND or OR; a budget as a percent, a count, tokens or "all the rule admits"; optional quotas and the
near-duplicate filter), watch what it keeps on linked views (a histogram per score with the cut drawn at its value, a
two-score scatter and the map, all coloured kept / dropped), brush a range on a histogram to set the cut or band,
read each row's reason, and save the rule by name.

The rule is a :class:`scoring.selection.saved.SelectionSpec` run by :func:`scoring.selection.saved.run_selection`, the
same call ``python -m scoring select`` makes, so the app and the CLI keep the same ids; the CLI line is shown. The
controls live in the URL (:mod:`pages._select_state`), so a reload or a shared link restores them; a saved selection
can be loaded back into them.
"""
from __future__ import annotations

import streamlit as st

from pages import _select_saved
from pages import _select_state as S
from pages import _select_views as V
from pages import _ui
from scoring.errors import UserError
from scoring.queries.evaluate import suggested_command, verdict_for, verdict_lines
from scoring.queries.select import cuts, quality
from scoring.scores.view_reads import sorted_scores
from scoring.selection.saved import SelectionSpec, list_selections, reproduce_command, run_selection

def seed(key: str, value):
    """``key`` for a widget, its state seeded from the page's own state when Streamlit has forgotten it."""
    try:
        st.session_state[key]  # a lookup: `key in st.session_state` copies the whole state on every call
    except KeyError:
        st.session_state[key] = value
    return key


def page_state(view) -> dict:
    """The controls' state for this dataset and run: from the URL on arrival, then kept in the session."""
    owner = (view.dataset, view.job.id)
    if st.session_state.get("sel_owner") != owner or "sel" not in st.session_state:
        state, problem = S.from_params(dict(st.query_params), view.score_columns, view.n_rows)
        if problem:
            st.warning(f"Could not restore the rule from the link: {problem}. Starting from the default rule.")
        st.session_state.update(sel=state, sel_owner=owner)
        V.reset_widgets()
    return st.session_state["sel"]


def median(view, score: str) -> float:
    values = sorted_scores(view, score)
    return float(values[len(values) // 2]) if len(values) else 0.0


def rule_controls(view, name: str, rule: dict) -> dict:
    """One score's rule: top, bottom, a percentile band, ≥ / ≤ a value, or a value band."""
    kind = st.radio(f"{name}: keep", S.RULE_KINDS, horizontal=True, format_func=S.RULE_LABELS.get,
                    key=seed(f"sel_rule_{name}", rule.get("kind", "top")))  # fmt: skip
    hint = st.session_state.get("sel_cut_hint", {}).get(name) or median(view, name)
    if kind == "band":
        lo, hi = st.slider(f"{name}: percentile band", 0, 100, key=seed(f"sel_band_{name}", (
            int(rule.get("lo", 25)) if rule.get("kind") == "band" else 25,
            int(rule.get("hi", 75)) if rule.get("kind") == "band" else 75)))  # fmt: skip
        return {"kind": kind, "lo": lo, "hi": hi}
    if kind in ("above", "below"):
        value = st.number_input(f"{name} {'≥' if kind == 'above' else '≤'}", format="%.6g",
                                key=seed(f"sel_val_{name}", float(rule.get("value", hint))))  # fmt: skip
        return {"kind": kind, "value": float(value)}
    if kind == "vband":
        values = sorted_scores(view, name)
        q = (lambda f: float(values[int(f * (len(values) - 1))])) if len(values) else (lambda f: 0.0)
        lo = st.number_input(f"{name} from", format="%.6g", key=seed(f"sel_vlo_{name}", float(rule.get("lo", q(0.25)))))
        hi = st.number_input(f"{name} to", format="%.6g", key=seed(f"sel_vhi_{name}", float(rule.get("hi", q(0.75)))))
        if hi <= lo:
            st.error(f"{name}: the band's upper value must be above its lower value.")
            st.stop()
        return {"kind": kind, "lo": float(lo), "hi": float(hi)}
    return {"kind": kind}


def budget_controls(view, state: dict) -> dict:
    """How much to keep. Out-of-range numbers are clamped, and the page says so (never silently ignored)."""
    b1, b2 = st.columns([1, 2])
    kind = b1.radio("Budget as", S.BUDGET_KINDS, horizontal=True, key=seed("sel_budget_kind", state["budget_kind"]),
                    format_func=lambda k: "all the rule admits" if k == "all" else k)  # fmt: skip
    out = dict(state, budget_kind=kind)
    if kind == "percent":
        out["pct"] = float(b2.slider("Percent of all rows", 0.1, 100.0, step=0.1, key=seed("sel_pct", state["pct"])))
    elif kind == "count":
        count = int(b2.number_input("Rows", step=1, key=seed("sel_count", int(state["count"]))))
        out["count"] = min(max(count, 1), max(view.n_rows, 1))
        if out["count"] != count:
            b2.warning(f"Rows must be between 1 and {view.n_rows:,} (the dataset's size): keeping {out['count']:,}.")
    elif kind == "tokens":
        tokens = int(b2.number_input("Tokens", step=10_000, key=seed("sel_tokens", int(state["tokens"]))))
        out["tokens"] = max(tokens, 1)
        if tokens < 1:
            b2.warning("A token budget must allow at least 1 token: using 1.")
    else:
        b2.caption("Every row the rules admit is kept (for value cuts and bands).")
    return out


def controls(view) -> dict:
    """Every control of the rule, seeded from and written back to the page state."""
    state = page_state(view)
    chosen = st.multiselect("Scores", view.score_columns, key=seed("sel_scores", state["scores"]))
    if not chosen:
        st.info("Pick at least one score.")
        st.stop()
    rules = {}
    cols = st.columns(min(len(chosen), 3))
    for i, name in enumerate(chosen):
        with cols[i % len(cols)]:
            rules[name] = rule_controls(view, name, state["rules"].get(name, {"kind": "top"}))
    combine = state.get("combine", "and")
    if len(chosen) > 1:
        combine = st.radio("Combine scores", ["and", "or"], horizontal=True, key=seed("sel_combine", combine),
                           format_func=lambda c: "AND (intersection)" if c == "and" else "OR (union)")  # fmt: skip
    state = budget_controls(view, dict(state, scores=chosen, rules=rules, combine=combine))
    o1, o2, o3 = st.columns(3)
    state["flagged"] = o1.checkbox("Include flagged rows", key=seed("sel_flagged", bool(state.get("flagged"))))
    groups = ["(none)", *view.group_columns]
    quota = o2.selectbox("Quota per group", groups, key=seed("sel_quota", state.get("quota") or "(none)"),
                         help="Split the budget over groups in proportion to their share of the candidates")
    state["quota"] = None if quota == "(none)" else quota
    state["dedup"] = None
    if o3.checkbox("Near-duplicate filter", key=seed("sel_dedup_on", state.get("dedup") is not None),
                   help="Skip an example whose embedding cosine to one already kept exceeds τ"):  # fmt: skip
        state["dedup"] = o3.slider("τ (cosine)", 0.50, 1.00, step=0.01, key=seed("sel_tau", state.get("dedup") or 0.95))
    st.session_state["sel"] = state
    params = S.to_params(state)
    if {k: st.query_params.get(k) for k in S.PARAM_KEYS if k in st.query_params} != params:
        for key in S.PARAM_KEYS:
            st.query_params.pop(key, None)
        st.query_params.update(params)
    return state


def load_saved(view) -> None:
    """Load a saved selection's rule back into the controls."""
    saved = [s for s in list_selections(ctx.cache, view.dataset) if s.get("scores")]
    if not saved:
        return
    l1, l2 = st.columns([3, 1], vertical_alignment="bottom")
    name = l1.selectbox("Start from a saved selection", [s["name"] for s in saved], key="sel_load_name")
    if l2.button("Load into the controls", key="sel_load"):
        record = next(s for s in saved if s["name"] == name)
        state, problem = S.from_record(record, view.score_columns, view.n_rows)
        if problem:
            st.warning(problem)
            return
        st.session_state["sel"] = state
        V.reset_widgets()
        st.rerun()


def summary(spec: SelectionSpec, result, view) -> None:
    """Kept counts, the cut as values, the rule against labels, the evaluation verdict and the CLI line."""
    n_kept = len(result.kept_ids)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Kept", f"{n_kept:,}", help="rows kept by the rule")
    m2.metric("Of all rows", f"{100 * n_kept / max(result.n_total, 1):.2f} %")
    m3.metric("Tokens kept", f"{result.tokens_kept:,}")
    m4.metric("Dropped", f"{len(result.dropped):,}")
    edges = cuts(view, spec, result)
    st.session_state["sel_cut_hint"] = {c.score: (c.lo if c.op != "≤" else c.hi) for c in edges if c.lo is not None}
    st.markdown("**The cut as values:** " + " · ".join(f"`{c.text}`" for c in edges))
    if view.n_scored < view.n_rows and view.job.unfinished:
        st.warning(f"Partial: {view.n_scored:,} of {view.n_rows:,} rows are scored so far (the score job is still "
                   "running); the rule only sees the scored rows.")  # fmt: skip
    elif view.n_scored < view.n_rows:
        st.info(f"{view.n_rows - view.n_scored:,} of {view.n_rows:,} rows have no score: nothing of their response "
                "was left to score (empty, or cut off by the job's max length). The rule never keeps them.")  # fmt: skip
    st.code(reproduce_command(spec.record(view.job.id, "", "NAME")), language="bash")
    q = quality(ctx.cache, view, spec, result)
    if q is not None:
        st.markdown("**Against the labels** (clean rows are the ones to keep)")
        k1, k2, k3 = st.columns(3)
        k1.metric("Precision", "–" if q.precision is None else f"{q.precision:.3f}",
                  help=f"clean share of the kept rows; a random subset would get {q.base_rate:.3f}")
        k2.metric("Recall", f"{q.recall:.3f}", help=f"share of the {q.n_clean:,} clean rows that are kept")
        k3.metric("AUROC", "–" if q.auroc is None else f"{q.auroc:.3f}",
                  help="how well the rule's ranking puts clean rows above defects (0.5 = chance)")
    verdicts = verdict_for(ctx.cache, spec)
    if verdicts:
        for line in verdict_lines(verdicts):
            st.text(line)
    else:
        e1, e2 = st.columns([1, 3], vertical_alignment="center")
        e1.page_link("pages/evaluate.py", label="Evaluate this rule", icon=":material/science:")
        e2.caption("Not evaluated yet: does it beat random subsets of the same size? Save it, then run:")
        st.code(suggested_command(ctx.cache, spec), language="bash")


ctx = _ui.ctx()
st.title("Select")
_ui.pair_notice(ctx, "the rules here work on any pair score; the LossDiff-IRM band has its own "
               "controls there.", stop=False)
view = _ui.need_view(ctx)
load_saved(view)
state = controls(view)
spec = SelectionSpec(dataset=view.dataset, scores=tuple(state["scores"]), budget=S.budget_text(state),
                     rules=tuple(S.rule_text(state["rules"][s]) for s in state["scores"]), combine=state["combine"],
                     include_flagged=state["flagged"], quota=state["quota"], dedup=state["dedup"], job=view.job.id)
try:
    result, _ = run_selection(ctx.cache, spec, view)
except UserError as error:
    st.error(str(error))
    st.stop()
st.session_state["selection_spec"] = spec  # the Map page colours kept / dropped with it
summary(spec, result, view)
V.linked_views(ctx, view, spec, result)
V.why(ctx, view, spec, result)
_select_saved.saved_section(ctx, view, spec, result)
