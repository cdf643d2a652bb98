"""Jobs: start a scoring job (ingest a file, folder or hub id first when given one; for preference pairs, the DPO
objective of the warm-ups and what θ_val trains from; under "Training and speed", score's options for the
fine-tunes and the passes: method, epochs, batch, tokens per forward, packing, compiling), see the queue with
progress, ETA and each job's own log tail, cancel, and start a worker when none is running. The page refreshes
itself while jobs run.
"""
from __future__ import annotations

import streamlit as st

from pages import _ui
from scoring.errors import UserError
from scoring.ingest.catalog import dataset_kind, ingest, list_datasets
from scoring.jobs.pairs import VAL_STARTS
from scoring.jobs.requests import pass_config_for, score_request, train_configs
from scoring.jobs.runner import cancel, enqueue
from scoring.jobs.worker import ensure_worker, live_workers
from scoring.models.loading import DEFAULT_MODEL
from scoring.passes.engine import PassConfig
from scoring.queries.influence import timings_frame
from scoring.queries.jobs import log_tail
from scoring.scores.registry import DEFAULT_SCORES, SCORES
from scoring.store.jobs import WAITING, list_jobs
from scoring.train.dpo_config import OBJECTIVES

ctx = _ui.ctx()
st.title("Jobs")

# ---------------------------------------------------------------- start one
with st.form("job_form"):
    st.markdown("**Start a scoring job**")
    known = [m["name"] for m in list_datasets(ctx.cache)]
    c1, c2 = st.columns(2)
    source = c1.text_input("Dataset file, folder or hub id (ingested first)", key="job_source",
                           placeholder="../shared/data/gsm8k/train.jsonl")  # fmt: skip
    existing = c2.selectbox("…or an ingested dataset", ["(use the source)", *known], key="job_existing",
                            index=1 + known.index(ctx.dataset) if ctx.dataset in known else 0)  # fmt: skip
    c3, c4, c5 = st.columns(3)
    name = c3.text_input("Name for a new dataset (optional)", key="job_name")
    limit = c4.number_input("Ingest at most N rows (0: all)", 0, 10**9, 0, key="job_limit")
    model = c5.text_input("Model", value=DEFAULT_MODEL, key="job_model", help="smollm2-135m, a local folder or a hub id")
    c6, c7, c8 = st.columns(3)
    ref_kind = c6.radio("Reference", ["train", "given"], horizontal=True, key="job_ref_kind",
                        help="train: fine-tune the base model once on the dataset; given: a model you fine-tuned")
    ref_path = c6.text_input("Reference model (when given)", key="job_ref_path")
    chosen = c7.multiselect("Scores", sorted(SCORES), default=list(DEFAULT_SCORES), key="job_scores",
                            help="For a preference-pair dataset only the pair scores count (none: the pair "
                                 "defaults), and the reference is π_ref after a DPO warm-up, not this setting")  # fmt: skip
    max_length = c8.number_input("Max length (tokens)", 16, 32768, PassConfig().max_length, key="job_max_length")
    c9, c10 = st.columns(2)
    objective = c9.selectbox("Pairs: DPO objective of the warm-ups", OBJECTIVES, key="job_objective",
                             help="dpo: TRL's sigmoid DPO; davir-dpo: each side's implicit reward divided by "
                                  "|log π_ref| (the DavIR paper)")  # fmt: skip
    val_start = c10.selectbox("Pairs: θ_val is trained from", VAL_STARTS, key="job_val_start",
                              help="theta: θ after one DPO epoch on the validation pairs (the paper's LossDiff); "
                                   "ref: π_ref instead (for comparison)")  # fmt: skip
    with st.expander("Training and speed (the options of `score`)"):
        t1, t2, t3 = st.columns(3)
        method = t1.radio("Fine-tuning", ["full", "lora"], horizontal=True, key="job_train_method",
                          help="the reference fine-tune and the DPO warm-ups: every weight, or LoRA merged back")
        epochs = t2.number_input("Epochs", 0.1, 100.0, 1.0, step=0.5, key="job_epochs")
        batch = t3.number_input("Examples per optimizer step (0: 8)", 0, 1 << 20, 0, key="job_train_batch",
                                help="pairs for the DPO warm-ups; part of the checkpoint key. On a GPU over a large "
                                     "set, larger batches (Alpaca's recipe: 128) make far fewer optimizer steps")
        t4, t5, t6 = st.columns(3)
        train_tokens = t4.number_input("Tokens per training forward (0: auto)", 0, 1 << 22, 0, key="job_train_tokens",
                                       help="auto: 512 on a CPU, 1,024 on a GPU; memory grows with it, the weights "
                                            "do not change")
        batch_tokens = t5.number_input("Tokens per scoring micro-batch (0: auto)", 0, 1 << 24, 0,
                                       key="job_batch_tokens", help="auto: 8,192 on a CPU, 65,536 on a GPU")
        pack = t6.selectbox("Packing", ["auto", "on", "off"], key="job_pack",
                            help="examples side by side in rows without padding, in the passes and the reference "
                                 "fine-tune: auto (on a CPU), on (a GPU too), off")
        compiled = st.checkbox("Compile the model's layers (a GPU; ignored on a CPU)", key="job_compile")
    submitted = st.form_submit_button("Queue job", type="primary")
if submitted:
    try:
        if source.strip():
            with st.spinner(f"Ingesting {source}…"):
                ingested = ingest(source.strip(), ctx.cache, name=name.strip() or None, limit=int(limit) or None,
                                  progress=False)  # fmt: skip
            dataset = ingested.name
        elif existing != "(use the source)":
            dataset = existing
        else:
            raise UserError("Give a dataset source, or pick an ingested dataset.")
        kind = dataset_kind(ctx.cache, dataset)
        reference = "train" if ref_kind == "train" else ref_path.strip()
        if kind == "sft" and not reference:
            raise UserError("Give the reference model's folder or hub id, or choose 'train'.")
        # A pair dataset takes the pair scores chosen (the pair defaults when none is), with default DPO warm-ups.
        wanted = [s for s in chosen if kind in SCORES[s].kinds] or None
        train, dpo = train_configs(method, float(epochs), pack, int(batch) or None, int(train_tokens) or None,
                                   objective=objective)  # fmt: skip
        config = pass_config_for(kind, int(max_length), int(batch_tokens) or None, compiled, "auto", pack)
        request = score_request(ctx.cache, dataset, model.strip() or None, wanted, config, reference=reference,
                                train=train, dpo=dpo, val_start=val_start)  # fmt: skip
        job, queued = enqueue(ctx.cache, request)
        pid = ensure_worker(ctx.cache) if job.state != "done" else None
        st.success(f"Job {job.id} for {dataset}: " + ("queued" if queued else f"already {job.state}")
                   + (f"; started worker {pid}" if pid else ""))  # fmt: skip
    except UserError as error:
        st.error(str(error))


# ---------------------------------------------------------------- the queue
def queue() -> None:
    all_jobs = list_jobs(ctx.cache)
    workers = live_workers(ctx.cache)
    w1, w2 = st.columns([3, 1])
    w1.markdown(f"**Queue** — {len(all_jobs)} jobs, {len(workers)} worker(s) alive"
                + (f" (pid {', '.join(map(str, workers))})" if workers else ""))  # fmt: skip
    waiting = [j for j in all_jobs if j.state in WAITING]
    if not workers and w2.button("Start a worker", key="jobs_worker", disabled=not waiting):
        pid = ensure_worker(ctx.cache)
        st.success(f"Started worker {pid}.")
    if not all_jobs:
        st.caption("No jobs yet.")
        return
    for job in reversed(all_jobs):
        with st.container(border=True):
            head, act = st.columns([5, 1])
            total, done = job.total or 0, job.done or 0
            head.markdown(f"`{job.id}` **{job.kind}** {job.dataset} — {job.state}"
                          + (f" · {job.model}" if job.model else "")
                          + (f" · on {job.processes} processes" if job.many_processes else ""))  # fmt: skip
            if job.unfinished:
                if act.button("Cancel", key=f"cancel_{job.id}"):
                    cancel(ctx.cache, job.id)
                    st.rerun()
                text = f"{job.stage or job.state}" + (f": {done:,} / {total:,}" if total else "")
                if job.tokens_per_s:
                    text += f" · {job.tokens_per_s:,.0f} tok/s"
                if job.eta_s:
                    text += f" · ETA {int(job.eta_s) // 60} min {int(job.eta_s) % 60:02d} s"
                if job.rss_mb and job.state == "running":
                    text += f" · memory {job.rss_mb / 1024:.1f} GB" + (" (rank 0)" if job.many_processes else "")
                head.progress(min(done / total, 1.0) if total else 0.0, text=text)
            if job.error:
                head.error(job.error)
            if job.timings:
                with head.expander("Steps: time and peak memory"):
                    st.dataframe(timings_frame(job), hide_index=True, key=f"job_steps_{job.id}")
            with head.expander("Log tail"):
                st.code(log_tail(ctx.cache, job.id) or "(no log for this job: it has not run on a background "
                        "worker yet, or it ran in a terminal)", language=None)  # fmt: skip


active = any(j.unfinished for j in list_jobs(ctx.cache))
st.fragment(queue, run_every=_ui.REFRESH_S if active else None)()
