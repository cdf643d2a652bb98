"""Evaluate: does the cut help? Pick a saved selection, choose the arms it is compared with (random subsets of the
same size and token count, one per seed; the full set; the rule turned over; other saved selections), the eval sets
and the training recipe, and start an ``evaluate`` job on the background worker; or sweep the selection's rule over
budgets. Below: the progress of unfinished evaluations and, for the one picked, its notes, the per-arm table, the
comparison selection − random with its bootstrap 95 % interval and verdict, and a chart (the sweep's metric against
the budget, or each arm's primary metric).

Every number comes from ``scoring.queries.evaluate`` (the job's report, as ``python -m scoring evaluate`` prints
it); the command line that asks for the same evaluation is shown beside the button.
"""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from scoring.errors import UserError
from scoring.jobs.evaluate import DEFAULT_AGAINST, DEFAULT_EPOCHS, OBJECTIVES
from scoring.queries.evaluate import (
    arms_frame,
    comparison_lines,
    comparisons_frame,
    eval_choices,
    evaluate_command,
    evaluation_jobs,
    evaluation_label,
    is_sweep,
    notes,
    others_frame,
    pending_evaluations,
    primary_bars,
    split_budgets,
    start_evaluation,
    sweep_frame,
)
from scoring.selection.evaluation import LOWER_IS_BETTER
from scoring.selection.saved import list_selections

ARM_COLOURS = {"start": "#b0b0b0", "selection": "#1f77b4", "random": "#9aa5b1", "full": "#2ca02c",
               "bottom": "#d62728", "saved": "#ff7f0e"}  # fmt: skip
START_LABELS = {"theta": "θ (the score job's 1-epoch DPO warm-up; the paper's protocol)", "ref": "π_ref"}



def better(metric: str) -> str:
    return "lower is better" if LOWER_IS_BETTER.get(metric) else "higher is better"


ctx = _ui.ctx()
st.title("Evaluate")
st.caption("Does the cut help? Every arm fine-tunes the same start with the same recipe on its own rows, then each "
           "model is measured on the eval sets. **selection − random** is the paired difference per eval example "
           "(the random arms' mean over seeds), with a bootstrap 95 % interval over eval examples and seeds; the "
           "verdict says *better* or *worse* only when the whole interval is on one side of 0.")  # fmt: skip
if ctx.dataset is None:
    st.info("No dataset in this cache yet. Start one on the **Jobs** page.")
    st.stop()
dataset = ctx.dataset
saved = [s["name"] for s in list_selections(ctx.cache, dataset)]

# ---------------------------------------------------------------- start one
st.subheader("Start an evaluation")
if not saved:
    st.info(f"No saved selection of {dataset} yet. Build a rule on the **Select** page (or the **Pairs** page's "
            f"band) and save it by name, or on the command line: `python -m scoring select {dataset} --score "
            f"{'margin_base' if ctx.is_pair else 'davir'} --budget 6% --save NAME`. Then evaluate it here.")  # fmt: skip
    st.page_link("pages/select.py", label="Open the Select page", icon=":material/filter_alt:")
else:
    selection = st.selectbox("Saved selection", saved, key="eval_selection")
    choices = eval_choices(ctx.cache, dataset)
    if not choices:
        st.caption(f"No other ingested dataset holds {'preference pairs' if ctx.is_pair else 'instruction data'} "
                   "to evaluate on: ingest one (`python -m scoring ingest FILE --name NAME`), or hold out a share of "
                   "this dataset below.")  # fmt: skip
    with st.form("eval_form"):
        f1, f2, f3 = st.columns([3, 1, 1])
        against = f1.multiselect("Compare with", ["random", "full", "bottom", *[s for s in saved if s != selection]],
                                 default=list(DEFAULT_AGAINST), key="eval_against",
                                 help="random: subsets of the same size and token count, one per seed; full: every "
                                      "selectable row; bottom: the rule turned over; or another saved selection")
        seeds = f2.number_input("Random seeds", 1, 20, 3, key="eval_seeds")
        epochs = f3.number_input("Epochs", 0.1, 50.0, DEFAULT_EPOCHS[ctx.kind], 0.5, key="eval_epochs",
                                 help="pairs: DPO epochs after the start model")  # fmt: skip
        e1, e2 = st.columns([3, 1])
        evals = e1.multiselect("Eval sets", choices, default=choices[:1], key="eval_sets")
        holdout = e2.number_input("Hold out (share)", 0.0, 0.9, 0.0 if choices else 0.1, 0.05, key="eval_holdout",
                                  help="also evaluate on a seeded share of this dataset that no arm trains on; 0: none")
        t1, t2, t3 = st.columns(3)
        method = t1.selectbox("Training", ["full", "lora"], key="eval_method",
                              format_func=lambda m: "full fine-tuning" if m == "full" else "LoRA")  # fmt: skip
        objective = t2.selectbox("Objective", OBJECTIVES[ctx.kind], key="eval_objective")
        start_from = t3.radio("Start from", ["theta", "ref"], key="eval_start_from", format_func=START_LABELS.get,
                              disabled=not ctx.is_pair, help="pairs only; instruction data starts from the base model")
        budgets_text = st.text_input("Sweep budgets (optional)", key="eval_budgets", placeholder="e.g. 5%, 10%, 25%",
                                     help="run the selection's rule at each budget against random at each")
        submitted = st.form_submit_button("Start evaluation", key="eval_start")
    if submitted:
        try:
            options = {"against": against, "seeds": int(seeds), "evals": evals, "holdout": float(holdout) or None,
                       "epochs": float(epochs), "objective": objective, "method": method,
                       "start_from": start_from if ctx.is_pair else "theta", "budgets": split_budgets(budgets_text)}
            job = start_evaluation(ctx.cache, dataset, selection, **options)
            st.session_state["eval_job"] = job.id
            st.success(f"Evaluation {job.id}: " + ("already done; its report is below" if job.state == "done"
                                                   else f"{job.state}; a background worker runs it"))  # fmt: skip
            st.markdown("Equivalent command:")
            st.code(evaluate_command(dataset, selection, options, cache=ctx.cache), language="bash")
        except UserError as error:
            st.error(str(error))

# ---------------------------------------------------------------- progress
pending = pending_evaluations(ctx.cache, dataset)
if pending:
    st.subheader("In progress")
    for job in pending:
        total, done = job.total or 0, job.done or 0
        st.progress(min(done / total, 1.0) if total else 0.0,
                    text=f"Evaluation {job.id[:8]}: {job.stage or job.state}" + (f" — {done:,} / {total:,}"
                                                                                  if total else ""))  # fmt: skip
    st.button("Refresh", key="eval_refresh", icon=":material/refresh:")

# ---------------------------------------------------------------- results
st.subheader("Results")
jobs = evaluation_jobs(ctx.cache, dataset)
if not jobs:
    st.info(f"No evaluation of {dataset} yet: start one above, or `python -m scoring evaluate {dataset} SELECTION "
            "--eval EVAL_SET`.")  # fmt: skip
    st.stop()
labels = {j.id: evaluation_label(j) for j in jobs}
if st.session_state.get("eval_job") not in labels:
    st.session_state["eval_job"] = next((j.id for j in jobs if j.state == "done"), jobs[0].id)
st.selectbox("Evaluation", list(labels), key="eval_job", format_func=labels.get)
job = next(j for j in jobs if j.id == st.session_state["eval_job"])
if job.state == "failed":
    st.error(f"Evaluation {job.id} failed: {job.error}")
elif job.state != "done":
    st.info(f"Evaluation {job.id[:8]} is {job.state} ({job.stage}); arms appear below as they are measured, the "
            "comparisons at the end.")  # fmt: skip
for note in notes(job):
    st.warning(f"Note: {note}")

arms = arms_frame(job)
st.markdown("**Arms** (mean over each eval set's examples; *start*: the model every arm starts from)")
st.dataframe(arms, hide_index=True, key="eval_arms",
             column_config={c: st.column_config.NumberColumn(format="%.4f") for c in arms.columns[4:]})  # fmt: skip

if is_sweep(job):
    sweep = sweep_frame(job)
    if not len(sweep):
        st.stop()
    st.markdown("**Sweep**: the rule at each budget against random at the same budget (band: random's "
                f"{sweep['random_band'].iloc[0] or 'spread'}), the full set as a dashed line")  # fmt: skip
    for name, rows in sweep.groupby("eval", sort=False):  # each eval set's primary metric (its first row)
        metric = rows["metric"].iloc[0]
        rows = rows[rows["metric"] == metric]
        one_unit = rows["budget_unit"].nunique() == 1
        x = rows["budget_value"] if one_unit else rows["n_examples"]
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=x, y=rows["random_hi"], mode="lines", line={"width": 0}, showlegend=False,
                                 hoverinfo="skip"))  # fmt: skip
        fig.add_trace(go.Scatter(x=x, y=rows["random_lo"], mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor="rgba(150,160,170,0.35)", name=f"random ({rows['random_band'].iloc[0]})"))
        fig.add_trace(go.Scatter(x=x, y=rows["random_mean"], mode="lines+markers", name="random mean",
                                 line={"color": "#7f8c8d", "dash": "dot"}))  # fmt: skip
        fig.add_trace(go.Scatter(x=x, y=rows["rule"], mode="lines+markers", name="rule", line={"color": "#1f77b4"},
                                 text=rows["budget"], hovertemplate="%{text}: %{y:.4f}<extra>rule</extra>"))
        if rows["full"].notna().any():
            fig.add_hline(y=float(rows["full"].iloc[0]), line_dash="dash", line_color="#2ca02c",
                          annotation_text="full", annotation_position="top right")  # fmt: skip
        fig.update_layout(title=f"{name}: {metric} vs budget", height=340, margin={"t": 50, "b": 40},
                          xaxis_title=f"budget ({rows['budget_unit'].iloc[0]})" if one_unit else "rows kept",
                          yaxis_title=f"{metric} ({better(metric)})")  # fmt: skip
        if st.toggle("log scale", key=f"eval_sweep_log_{name}", help="budgets (x) on a log axis: 5 %, 10 %, 25 %, "
                     "50 % are spaced by their ratios"):  # fmt: skip
            fig.update_xaxes(type="log")
        st.plotly_chart(fig, key=f"eval_sweep_{name}", width="stretch")
    st.dataframe(sweep.drop(columns=["budget_value", "budget_unit", "random_band"]), hide_index=True,
                 key="eval_sweep_table")  # fmt: skip
    st.stop()

table = comparisons_frame(job)
if len(table):
    st.markdown("**Selection against random** (one row per eval set and metric; the first of each eval set is the one "
                "the verdict is judged on)")  # fmt: skip
    for line in comparison_lines(job):
        st.text(line)
    st.dataframe(table, hide_index=True, key="eval_comparisons",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in
                                ("selection", "random mean", "random sd", "full", "selection − random", "CI low",
                                 "CI high")})  # fmt: skip
    others = others_frame(job)
    if len(others):
        st.markdown("**Other arms against the same random arms**")
        st.dataframe(others, hide_index=True, key="eval_others")
elif job.state == "done":
    st.caption("This evaluation has no random arms: there is no selection − random to judge.")
bars = primary_bars(job)
for name, rows in bars.groupby("eval", sort=False):
    metric = rows["metric"].iloc[0]
    fig = go.Figure(go.Bar(x=rows["arm"], y=rows["value"], marker_color=[ARM_COLOURS.get(r, "#888") for r in rows["role"]],
                           hovertemplate="%{x}: %{y:.4f}<extra></extra>"))  # fmt: skip
    fig.update_layout(title=f"{name}: {metric} per arm", height=300, margin={"t": 50, "b": 40},
                      yaxis_title=f"{metric} ({better(metric)})")  # fmt: skip
    positive = rows["value"].min() > 0
    if positive and st.toggle("log scale", key=f"eval_bars_log_{name}", help=f"{metric} on a log axis"):
        fig.update_yaxes(type="log")
    else:
        fig.update_yaxes(range=[0.98 * float(rows["value"].min()), 1.01 * float(rows["value"].max())]
                         if positive else None)  # fmt: skip
    st.plotly_chart(fig, key=f"eval_bars_{name}", width="stretch")
