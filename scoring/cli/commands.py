"""The commands of ``python -m scoring`` (the preference-pair ones that need more than a flag: scoring.cli.pairs).
Each command's docstring is its --help text, and its arguments are declared beside it (``@command``)."""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from scoring import api, ranks
from scoring.cli.evaluate import print_evaluations
from scoring.cli.pairs import print_influence, print_pair_status, select_pairs
from scoring.cli.registry import arg, command, print_counts
from scoring.errors import UserError
from scoring.ingest.catalog import dataset_kind, dataset_meta, ingest, ingest_heldout, kind_of, list_datasets
from scoring.ingest.demo import HELDOUT_NAME, write_demo, write_planted_pairs
from scoring.ingest.sources import resolve_source
from scoring.jobs.influence import DEFAULT_SAMPLE, influence_request
from scoring.jobs.pairs import VAL_STARTS
from scoring.jobs.requests import map_request, pass_config_for, score_request, train_configs
from scoring.jobs.runner import cancel, enqueue, run
from scoring.jobs.worker import ensure_worker, live_workers, worker
from scoring.models.precision import status_line as cpu_status_line
from scoring.scores.registry import FIRST_SCORE, parse_scores
from scoring.scores.reports import auroc_report, flag_counts, format_auroc_table, rank_agreement
from scoring.scores.tables import pick_job, score_table
from scoring.selection.pairs import PAIR_RULE
from scoring.selection.rules import default_budget, missing_budget_error
from scoring.store.cache import Cache
from scoring.store.jobs import ACTIVE, Job, list_jobs
from scoring.train.dpo_config import OBJECTIVES


@command(
    "ingest",
    arg("source", help="file, folder, glob or Hugging Face dataset id"),
    arg("--name", help="dataset name (default: from the source)"),
    arg("--limit", type=int, help="keep only the first N records"),
    arg("--map", action="append", metavar="FIELD=COLUMN", help="prompt/response/context/system/messages/id"),
    arg("--replace", action="store_true", help="replace a dataset of the same name holding other data"),
)
def cmd_ingest(cache: Cache, args) -> int:
    """Read a dataset into the cache: a JSON / JSONL(.gz) / Parquet / CSV file, a folder or glob of them, a
    `datasets.save_to_disk` folder, or a Hugging Face dataset id. Layouts are recognised without flags (Alpaca,
    prompt/response pairs, chat messages); use --map FIELD=COLUMN for anything else. Bad rows are kept with a
    flag reason and counted, never dropped silently.

    example: python -m scoring ingest '../shared/data/alpaca/*.json' --name alpaca
    """
    result = api.ingest(args.source, name=args.name, limit=args.limit, field_map=args.map or [],
                        replace=args.replace, cache=cache)  # fmt: skip
    verb = "already ingested (same content): nothing to do" if result.already_present else "ingested"
    print(f"{result.name}: {result.n_rows} rows {verb}; layout {result.layout}; fingerprint {result.fingerprint[:16]}")
    print_counts("flags", result.flag_counts)
    return 0


SCORE_ARGS = (
    arg("name", help="dataset name"),
    arg("--model", help="smollm2-135m (default), a local folder or a hub id"),
    arg("--reference", default="train", help="'train' (fine-tune the base, default) or a model"),
    arg("--scores", help="comma-separated (default davir,rho,ifd,ppl; pairs: irm,lossdiff,davir_dpo,margin_base,"
        "len_diff)"),
    arg("--max-length", type=int, default=1024, help="tokens per example (default 1024)"),
    arg("--batch-tokens", type=int, help="tokens per micro-batch (default 8192 on a CPU, 65536 on a GPU)"),
    arg("--compile", action="store_true", help="GPU: torch.compile the model's layers (about 2x faster scoring on "
        "an H200; ignored on a CPU)"),
    arg("--no-kernels", action="store_true", help="CPU: transformers' own layers instead of the fused bf16 kernels "
        "(about 1.6x slower; low-order bits differ)"),
    arg("--pack", choices=["auto", "on", "off"], default="auto", help="examples side by side in rows without "
        "padding, in the passes and the reference fine-tune: auto (on a CPU), on (a GPU too: one variable-length "
        "flash-attention call per layer), off"),
    arg("--train-method", choices=["full", "lora"], default="full", help="reference fine-tuning"),
    arg("--epochs", type=float, default=1.0, help="reference fine-tuning epochs (default 1)"),
    arg("--train-batch", type=int, help="examples (pairs) per optimizer step of the reference fine-tune and the DPO "
        "warm-ups (default 8; part of the checkpoint key). On a GPU over a large set, larger batches (Alpaca's "
        "recipe: 128) make far fewer optimizer steps"),
    arg("--train-tokens", type=int, help="tokens per forward / backward when training (default 512 on a CPU, 1024 "
        "on a GPU); training memory grows with it, the weights do not change"),
    arg("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)"),
    arg("--wait", action="store_true", help="do the work here, in the foreground"),
    arg("--beta", type=float, default=0.1, help="pairs: DPO beta of the warm-ups and scores (default 0.1)"),
    arg("--val", metavar="DATASET_OR_FILE", help="pairs: validation pairs for theta_val (default: a held-out "
        "--val-fraction of the dataset)"),
    arg("--val-fraction", type=float, default=0.1, help="pairs: held-out validation share (default 0.1)"),
    arg("--val-from", choices=VAL_STARTS, default="theta", help="pairs: theta_val is theta (default, the paper's) "
        "or pi_ref after one DPO epoch on the validation pairs"),
    arg("--objective", choices=OBJECTIVES, default="dpo", help="pairs: the warm-ups' training objective: dpo "
        "(default) or davir-dpo (each side's reward divided by |log pi_ref|)"),
)  # fmt: skip


def _request(cache: Cache, args) -> Job:
    """The score job the command line asks for, either dataset kind (scoring.jobs.requests)."""
    kind = dataset_kind(cache, args.name)
    config = pass_config_for(kind, args.max_length, args.batch_tokens, args.compile,
                             "off" if args.no_kernels else "auto", args.pack)  # fmt: skip
    train, dpo = train_configs(args.train_method, args.epochs, args.pack, args.train_batch, args.train_tokens,
                               args.beta, args.objective)  # fmt: skip
    return score_request(
        cache, args.name, args.model, parse_scores(args.scores, kind), config, reference=args.reference,
        train=train, dpo=dpo, val=args.val, val_fraction=args.val_fraction, val_start=args.val_from,
        trust_remote_code=args.trust_remote_code,
    )  # fmt: skip


@command("score", *SCORE_ARGS)
def cmd_score(cache: Cache, args) -> int:
    """Score a dataset: base-model losses, the fine-tuned reference, DavIR and the proxies (preference pairs: the
    DPO warm-ups, IRM, LossDiff and their proxies). Queues a job and makes sure a background worker runs it; with
    --wait, does the work here in the foreground with a progress bar. An identical request whose results exist
    returns at once.

    example: python -m scoring score alpaca --scores davir,rho,ifd,ppl --max-length 512 --wait
    """
    if ranks.current().many and not args.wait:
        raise UserError("under torchrun / accelerate launch every process does the work: add --wait")
    job, queued = enqueue(cache, _request(cache, args))
    if job.state == "done":
        print(f"job {job.id} already done: results are in the cache (`scores {args.name} --out FILE`)")
        return 0
    if not args.wait:
        pid = ensure_worker(cache)
        how = f"started worker {pid}" if pid else "a worker is running"
        print(f"job {job.id} {'queued' if queued else 'already ' + job.state}; {how}; follow with `status`")
        return 0
    return _run_foreground(cache, job.id)


def _run_foreground(cache: Cache, job_id: str) -> int:
    """Run the job here (under a launcher, on every rank together), then its map; rank 0 alone reports."""
    main = ranks.current().main
    job = run(cache, job_id, progress=True)
    if job.state == "done" and job.kind == "score":
        layout, _ = enqueue(cache, map_request(job))
        if ranks.from_main(layout.state) != "done":
            if main:
                print("computing the UMAP map…", file=sys.stderr)
            try:
                run(cache, layout.id)
            except UserError:  # a background worker is already computing it
                print("the map is being computed by a worker", file=sys.stderr)
    if main:
        print(f"job {job.id}: {job.state}" + (f" — {job.error}" if job.error else ""))
    return 0 if job.state == "done" else 1


@command(
    "worker",
    arg("--idle-exit", type=float, default=0.0, help="exit after this many idle seconds (0: never)"),
    arg("--once", action="store_true", help="exit when the queue is empty"),
)
def cmd_worker(cache: Cache, args) -> int:
    """Run queued jobs in this process until stopped (or until --idle-exit seconds pass with nothing to do).
    Resumes jobs whose previous worker died.

    example: python -m scoring worker --idle-exit 300
    """
    worker(cache, idle_exit=args.idle_exit, once=args.once)
    return 0


@command("status", arg("name", nargs="?", help="dataset name (default: all)"))
def cmd_status(cache: Cache, args) -> int:
    """Show jobs (stage, examples done / total, tokens/s, ETA, error), flag counts, and for datasets with planted
    defect labels the AUROC of each score per defect kind; proxy rank agreement when two models scored a dataset.

    example: python -m scoring status demo
    """
    all_jobs = list_jobs(cache, args.name)
    print(f"cache: {cache.root}")
    print(f"workers alive: {len(live_workers(cache))}")
    print(cpu_status_line(cache.root))
    if not all_jobs:
        print("no jobs")
    for job in all_jobs:
        print(_job_line(job))
    for name in [args.name] if args.name else [m["name"] for m in list_datasets(cache)]:
        _dataset_status(cache, name)
    return 0


def _dataset_status(cache: Cache, name: str) -> None:
    meta = dataset_meta(cache, name)
    print(f"\ndataset {name}: {meta['n_rows']} rows, layout {meta['layout']}")
    try:
        table, job = score_table(cache, name)
    except UserError:
        print_counts("flags", meta.get("flag_counts") or {})
        return
    first = FIRST_SCORE[kind_of(meta)]
    scored = int(table[first].notna().sum()) if first in table else 0
    print(f"  scores from job {job.id} ({job.state}): {scored} of {len(table)} rows scored")
    print_counts("flags", flag_counts(table))
    report = auroc_report(cache, name, table)
    if report:
        print("  AUROC (clean rows ranked above defects; 1 = perfect, 0.5 = chance):")
        print("    " + format_auroc_table(report).replace("\n", "\n    "))
    if job.is_pair:
        print_pair_status(cache, job)
    print_evaluations(cache, name)
    for row in rank_agreement(cache, name):
        print(f"  spearman {row['score']}: {row['model_a']} vs {row['model_b']} = {row['spearman']:.3f} (n={row['n']})")


def _job_line(job: Job) -> str:
    progress = f"{job.done or 0}/{job.total}" if job.total else "-"
    rate = f"{job.tokens_per_s:.0f} tok/s" if job.tokens_per_s else ""
    eta = f"ETA {_duration(job.eta_s)}" if job.eta_s and job.state == "running" else ""
    mem = f"RSS {job.rss_mb / 1024:.1f} GB" if job.rss_mb and job.state == "running" else ""
    mem += " (rank 0)" if mem and job.many_processes else ""
    where = f"on {job.processes} processes" if job.many_processes else ""
    error = f"error: {job.error}" if job.error else ""
    stage = job.stage if job.stage != job.state else ""
    parts = [job.id, job.kind, job.dataset, job.state, where, stage, progress, rate, eta, mem, error]
    return "  ".join(p for p in parts if p)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@command("cancel", arg("job", help="job id (a unique prefix is enough)"))
def cmd_cancel(cache: Cache, args) -> int:
    """Cancel a queued or running job (a running one stops after the chunk in flight; finished parts are kept).

    example: python -m scoring cancel 3f2a9c1d
    """
    job = cancel(cache, args.job)
    print(f"job {job.id}: {'cancel requested' if job.state in ACTIVE else job.state}")
    return 0


@command(
    "scores",
    arg("name"),
    arg("--out", required=True, help="FILE.csv or FILE.parquet"),
    arg("--job", help="score job to read (default: the latest finished one)"),
)
def cmd_scores(cache: Cache, args) -> int:
    """Write one row per example: id, flag (empty when fine) and one column per computed score.

    example: python -m scoring scores alpaca --out alpaca-scores.csv
    """
    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet"):
        raise UserError(f"--out must end in .csv or .parquet, not {out.name!r}")
    table, job = score_table(cache, args.name, args.job)
    table = table.drop(columns=["idx"])
    for column in ("n_prompt_tokens", "n_response_tokens"):
        table[column] = table[column].astype("Int64")  # counts stay integers; unscored rows stay empty
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        table.to_csv(out, index=False)
    else:
        table.to_parquet(out, index=False)
    print(f"wrote {len(table)} rows x {len(table.columns)} columns from job {job.id} to {out}")
    return 0


@command(
    "select",
    arg("name"),
    arg("--score", action="append", help="score to rank by; repeat to intersect (not with lossdiff-irm)"),
    arg("--budget", help="6%% | 3000 | 2M-tokens | all; may be left out (= all) when every --rule is a band or a "
        "value rule"),
    arg("--rule", action="append", help="top (default) | bottom | band:LO-HI (percentiles) | above:V | below:V | "
        "band-values:LO-HI (score values); once for all scores or once per --score; lossdiff-irm (preference pairs, "
        "no --score)"),
    arg("--band", metavar="LO-HI", help="--rule lossdiff-irm: percentile band of both lossdiff and irm "
        "(default 12-88), or 'auto': the band the latest `influence` check found closest to TIF"),
    arg("--combine", choices=["and", "or"], default="and", help="several scores: and = intersection (default), or "
        "= union"),
    arg("--quota", metavar="COLUMN", help="split the budget over groups: 'cluster' (map clusters) or an original "
        "column such as a category"),
    arg("--dedup", type=float, metavar="TAU", help="skip an example whose embedding cosine to one already kept "
        "exceeds TAU (e.g. 0.95)"),
    arg("--save", required=True, help="selection name"),
    arg("--replace", action="store_true", help="overwrite a saved selection of the same name"),
    arg("--include-flagged", action="store_true", help="let flagged rows be selected"),
    arg("--job", help="score job to read (default: the latest finished one)"),
)  # fmt: skip
def cmd_select(cache: Cache, args) -> int:
    """Keep the examples a rule picks within a budget and save the selection by name. Several --score combine as
    their intersection (--combine and, the default) or union (--combine or); give one --rule for all scores or one
    per --score. --quota COLUMN keeps each group's share of the budget ('cluster' = map clusters); --dedup TAU skips
    an example whose embedding cosine to one already kept exceeds TAU. Flagged rows are excluded unless
    --include-flagged. Every dropped row gets a reason. The app's Select page runs exactly this.

    A cut can be a score value: --rule above:0.731 keeps davir >= 0.731, below:V keeps value <= V, band-values:LO-HI
    keeps LO <= value <= HI. With only band or value rules --budget may be left out: it keeps every row they admit
    (--budget all). An existing selection of the same name is replaced only with --replace.

    example: python -m scoring select alpaca --score davir --budget 6% --rule top --save davir-top6
    example: python -m scoring select alpaca --score davir --rule above:0.731 --save davir-above
    """
    if args.rule == [PAIR_RULE] or not args.score:  # preference pairs (and the message for a missing --score)
        args.budget = args.budget or "all"  # the LossDiff-IRM rule is a band of two scores
        return select_pairs(cache, args)
    rules = args.rule or ["top"]
    budget = args.budget or default_budget(rules)
    if not budget:
        raise missing_budget_error()
    result = api.select(args.name, scores=args.score, budget=budget, rule=rules, combine=args.combine,
                        include_flagged=args.include_flagged, quota=args.quota, dedup=args.dedup, job=args.job,
                        save=args.save, replace=args.replace, cache=cache)  # fmt: skip
    print(f"{args.save}: kept {len(result.kept_ids)} of {result.n_total} rows, {result.tokens_kept} tokens")
    print_counts("dropped", result.reason_counts())
    if result.partial:
        print(f"partial selection: scores for {result.partial['scored']} of {result.partial['rows']} rows; re-run "
              "select when the job has finished")
    return 0


@command(
    "export",
    arg("name"),
    arg("selection"),
    arg("--format", required=True, choices=["jsonl", "parquet", "csv", "hf"]),
    arg("--out", help="output file (folder for hf); default under <cache>/exports/"),
    arg("--with-scores", action="store_true", help="add the score columns"),
)
def cmd_export(cache: Cache, args) -> int:
    """Write a saved selection's examples (original columns, plus scores with --with-scores) as JSONL, Parquet,
    CSV or a `datasets` folder, with a manifest.json that records how to reproduce it (here, and from the source in
    any cache). An export folder belongs to one selection; a selection that kept no rows is refused.

    example: python -m scoring export alpaca davir-top6 --format jsonl --out curated/alpaca.jsonl --with-scores
    """
    argv = getattr(args, "argv", None) or []
    line = "python -m scoring " + " ".join(shlex.quote(a) for a in argv) if argv else None
    result = api.export(args.name, args.selection, format=args.format, out=args.out, with_scores=args.with_scores,
                        command=line, cache=cache)  # fmt: skip
    partial = result.manifest.get("partial")
    if partial:
        print(f"warning: selection {args.selection} was saved while its scores were being computed "
              f"({partial.get('scored')} of {partial.get('rows')} rows scored): this is a partial export",
              file=sys.stderr)  # fmt: skip
    print(f"wrote {result.n_rows} rows to {result.path}; manifest {result.manifest_path}")
    return 0


@command(
    "layout",
    arg("name"),
    arg("--job", help="score job whose embeddings to map (default: latest)"),
    arg("--wait", action="store_true"),
)
def cmd_layout(cache: Cache, args) -> int:
    """Compute the 2-D UMAP map of a dataset from its base-pass embeddings, as a job (in the foreground with --wait).

    example: python -m scoring layout alpaca --wait
    """
    job, _ = enqueue(cache, map_request(pick_job(cache, args.name, args.job)))
    if job.state == "done":
        print(f"layout job {job.id} already done")
        return 0
    if args.wait:
        return _run_foreground(cache, job.id)
    ensure_worker(cache)
    print(f"layout job {job.id} queued")
    return 0


@command("datasets")
def cmd_datasets(cache: Cache, args) -> int:
    """List ingested datasets.

    example: python -m scoring datasets
    """
    for meta in list_datasets(cache):
        print(f"{meta['name']}\t{meta['n_rows']} rows\t{meta['layout']}\t{meta['fingerprint'][:16]}\t{meta['source']}")
    return 0


@command(
    "demo",
    arg("--n-clean", type=int, default=240, help="clean examples before planting defects (default 240)"),
    arg("--model", help="model to score with (default smollm2-135m)"),
    arg("--background", action="store_true", help="queue the scoring instead of waiting"),
    arg("--pairs", metavar="SOURCE", help="preference pairs to plant swapped pairs in (see above)"),
    arg("--limit", type=int, default=100, help="--pairs: pairs read from SOURCE (default 100)"),
    arg("--swap", type=float, default=0.2, help="--pairs: share of pairs swapped (default 0.2)"),
    arg("--max-length", type=int, default=512, help="--pairs: tokens per side (default 512)"),
    arg("--heldout", type=int, default=0, metavar="N", help=f"also ingest N clean tasks the demo never contains, "
        f"each with its answer, as dataset {HELDOUT_NAME} (up to ~130 beside the default demo; default 0: none)"),
)  # fmt: skip
def cmd_demo(cache: Cache, args) -> int:
    """Generate the embedded demo (a few hundred computed-answer tasks with labelled planted defects), ingest it,
    score it with the default model and print the AUROC of each score per defect kind. --background queues the
    scoring instead of waiting.

    With --pairs SOURCE it is the preference-pair check instead: the first --limit pairs of SOURCE with chosen and
    rejected swapped in a labelled --swap share (defect "swapped_pair"), scored with DPO warm-ups, and the AUROC
    with which each pair score ranks the swapped pairs low (irm is the one that should).

    --heldout N also ingests N held-out clean tasks (balanced over the task families, none in the demo, each
    record's computed answer kept in its original JSON) as dataset demo-heldout, to evaluate models on.

    example: python -m scoring demo
    example: python -m scoring demo --heldout 90
    example: python -m scoring demo --pairs ../shared/data/hh-rlhf/helpful-base/test.jsonl.gz --limit 80
    """
    if args.pairs and args.heldout:
        raise UserError("--heldout adds held-out tasks to the instruction demo; it does not go with --pairs")
    if args.pairs:
        name = f"{resolve_source(args.pairs).default_name}-swapped"
        path, n_swapped = write_planted_pairs(args.pairs, cache.root / "demo" / f"{name}.jsonl", args.limit,
                                              args.swap)  # fmt: skip
        result = ingest(str(path), cache, name=name, replace=True, progress=False)
        print(f"{name}: {result.n_rows} pairs ingested, {n_swapped} with chosen and rejected swapped (defect "
              f"swapped_pair); layout {result.layout}")
        request = score_request(cache, name, args.model, None, pass_config_for("pair", args.max_length))
    else:
        name = "demo"
        path = write_demo(cache.root / "demo" / "demo.jsonl", n_clean=args.n_clean)
        result = ingest(str(path), cache, name=name, replace=True, progress=False)
        print(f"demo: {result.n_rows} rows ingested ({'unchanged' if result.already_present else 'new'})")
        if args.heldout:
            held = ingest_heldout(cache, args.heldout, exclude_n_clean=args.n_clean)
            print(f"{held.name}: {held.n_rows} held-out clean tasks for `evaluate --eval {held.name}` "
                  f"({'unchanged' if held.already_present else 'new'}; none in the demo, each with its answer)")
        request = score_request(cache, name, args.model)
    job, _ = enqueue(cache, request)
    if args.background:
        ensure_worker(cache)
        print(f"job {job.id} queued in the background; follow with `python -m scoring status {name}`")
        return 0
    started = time.perf_counter()
    code = _run_foreground(cache, job.id)  # when already done, this still makes sure the map exists
    if code:
        return code
    print(f"{'pairs' if args.pairs else 'demo'} scored in {time.perf_counter() - started:.0f} s")
    args.name = name
    return cmd_status(cache, args)


@command(
    "influence",
    arg("name", help="preference-pair dataset"),
    arg("--sample", type=int, default=DEFAULT_SAMPLE, help=f"pairs to compute IF for (default {DEFAULT_SAMPLE})"),
    arg("--seed", type=int, default=0, help="sample seed (default 0)"),
    arg("--params", choices=["auto", "all", "lora"], default="auto", help="parameters IF is taken over: all, or "
        "LoRA adapters on θ (a random sketch); auto = all below 20M parameters"),
    arg("--job", help="pair score job to check (default: the latest finished one)"),
    arg("--background", action="store_true", help="queue it for the worker instead of computing here"),
    arg("--json", action="store_true", help="print the report as one JSON object on the last line"),
)  # fmt: skip
def cmd_influence(cache: Cache, args) -> int:
    """Check the pair scores against the influence they stand for: on a seeded sample of pairs, the first-order
    influence IF(d) = ∇ℓ(θ; d)·∇L_val(θ) at the warmed-up θ, then the Spearman of each score (and of the combined
    LossDiff-IRM rank) with IF, the overlap of each score's selection with TIF's (the middle band of IF, same
    size), and the band whose LossDiff-IRM selection overlaps TIF most (`select --rule lossdiff-irm --band auto`).
    A cached, resumable job like the others.

    example: python -m scoring influence hh-256 --sample 128 --json
    """
    request = influence_request(cache, args.name, args.job, args.sample, args.seed, args.params)
    job, _ = enqueue(cache, request)
    if args.background and job.state != "done":
        ensure_worker(cache)
        print(f"job {job.id} queued; follow with `python -m scoring status {args.name}`")
        return 0
    if job.state != "done":
        job = run(cache, job.id, progress=True)
    if job.state != "done":
        print(f"job {job.id}: {job.state}" + (f" — {job.error}" if job.error else ""))
        return 1
    print_influence(job)
    if args.json:
        print(json.dumps({"n": job.result["n"], "spearman": job.result["spearman"], "overlap": job.result["overlap"]}))
    return 0
