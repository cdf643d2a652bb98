"""``python -m scoring``: a thin command line over the library. Each command's docstring is its --help text."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from . import data, jobs, results
from .env import cache_dir
from .errors import UserError
from .store import Cache


def cmd_ingest(cache: Cache, args) -> int:
    """Read a dataset into the cache: a JSON / JSONL(.gz) / Parquet / CSV file, a folder or glob of them, a
    `datasets.save_to_disk` folder, or a Hugging Face dataset id. Layouts are recognised without flags (Alpaca,
    prompt/response pairs, chat messages); use --map FIELD=COLUMN for anything else. Bad rows are kept with a
    flag reason and counted, never dropped silently.

    example: python -m scoring ingest '../shared/data/alpaca/*.json' --name alpaca
    """
    result = data.ingest(
        args.source, cache, name=args.name, limit=args.limit, field_map=data.parse_field_map(args.map or []),
        replace=args.replace,
    )  # fmt: skip
    verb = "already ingested (same content): nothing to do" if result.already_present else "ingested"
    print(f"{result.name}: {result.n_rows} rows {verb}; layout {result.layout}; fingerprint {result.fingerprint[:16]}")
    _print_counts("flags", result.flag_counts)
    return 0


def cmd_score(cache: Cache, args) -> int:
    """Score a dataset: base-model losses, the fine-tuned reference, DavIR and the proxies. Queues a job and makes
    sure a background worker runs it; with --wait, does the work here in the foreground with a progress bar.
    An identical request whose results exist returns at once.

    example: python -m scoring score alpaca --scores davir,rho,ifd,ppl --max-length 512 --wait
    """
    from dataclasses import replace

    from .finetune import TrainConfig
    from .losses import PassConfig, default_batch_tokens
    from .scores import parse_scores

    batch_tokens = args.batch_tokens or default_batch_tokens()
    pass_config = PassConfig(max_length=args.max_length, batch_tokens=batch_tokens, compile=args.compile,
                             kernels="off" if args.no_kernels else "auto")  # fmt: skip
    train = replace(TrainConfig(), method=args.train_method, epochs=args.epochs)
    if data.dataset_meta(cache, args.name).get("kind") == "pair":
        request = _pair_request(cache, args, pass_config)
    else:
        request = jobs.score_request(
            cache, args.name, args.model, args.reference, parse_scores(args.scores), pass_config, train,
            args.trust_remote_code,
        )  # fmt: skip
    job, queued = jobs.enqueue(cache, request)
    if job["state"] == "done":
        print(f"job {job['id']} already done: results are in the cache (`scores {args.name} --out FILE`)")
        return 0
    if not args.wait:
        pid = jobs.ensure_worker(cache)
        how = f"started worker {pid}" if pid else "a worker is running"
        print(f"job {job['id']} {'queued' if queued else 'already ' + job['state']}; {how}; follow with `status`")
        return 0
    return _run_foreground(cache, job["id"])


def _pair_request(cache: Cache, args, pass_config) -> dict:
    """Preference pairs: ref pass, DPO warm-ups of π_θ and θ_val, their passes (scoring.pair_passes)."""
    from dataclasses import replace

    from .dpo import DPOTrainConfig
    from .pair_passes import PAIR_PASS_CONFIG, pair_request
    from .scores import parse_scores

    config = replace(PAIR_PASS_CONFIG, max_length=pass_config.max_length, batch_tokens=pass_config.batch_tokens,
                     compile=pass_config.compile, kernels=pass_config.kernels)
    dpo = replace(DPOTrainConfig(), beta=args.beta, method=args.train_method, epochs=args.epochs)
    return pair_request(cache, args.name, args.model, parse_scores(args.scores, "pair"), config, dpo, args.val,
                        args.val_fraction, args.trust_remote_code)  # fmt: skip


def _run_foreground(cache: Cache, job_id: str) -> int:
    job = jobs.run(cache, job_id, progress=True)
    if job["state"] == "done" and job["kind"] == "score":
        layout, _ = jobs.enqueue(cache, jobs.layout_request(cache, job))
        if layout["state"] != "done":
            print("computing the UMAP layout…", file=sys.stderr)
            try:
                jobs.run(cache, layout["id"])
            except UserError:  # a background worker is already computing it
                print("the layout is being computed by a worker", file=sys.stderr)
    print(f"job {job['id']}: {job['state']}" + (f" — {job['error']}" if job.get("error") else ""))
    return 0 if job["state"] == "done" else 1


def cmd_worker(cache: Cache, args) -> int:
    """Run queued jobs in this process until stopped (or until --idle-exit seconds pass with nothing to do).
    Resumes jobs whose previous worker died.

    example: python -m scoring worker --idle-exit 300
    """
    jobs.worker(cache, idle_exit=args.idle_exit, once=args.once)
    return 0


def cmd_status(cache: Cache, args) -> int:
    """Show jobs (stage, examples done / total, tokens/s, ETA, error), flag counts, and for datasets with planted
    defect labels the AUROC of each score per defect kind; proxy rank agreement when two models scored a dataset.

    example: python -m scoring status demo
    """
    all_jobs = jobs.list_jobs(cache, args.name)
    print(f"cache: {cache.root}")
    print(f"workers alive: {len(jobs.live_workers(cache))}")
    if not all_jobs:
        print("no jobs")
    for job in all_jobs:
        print(_job_line(job))
    names = [args.name] if args.name else [m["name"] for m in data.list_datasets(cache)]
    for name in names:
        meta = data.dataset_meta(cache, name)
        print(f"\ndataset {name}: {meta['n_rows']} rows, layout {meta['layout']}")
        try:
            table, job = results.score_table(cache, name)
        except UserError:
            _print_counts("flags", meta.get("flag_counts") or {})
            continue
        first = "margin_base" if meta.get("kind") == "pair" else "loss_base"  # the first score a run fills
        scored = int(table[first].notna().sum()) if first in table else 0
        print(f"  scores from job {job['id']} ({job['state']}): {scored} of {len(table)} rows scored")
        _print_counts("flags", results.flag_counts(table))
        report = results.auroc_report(cache, name, table)
        if report:
            from .demo_data import format_auroc_table

            print("  AUROC (clean rows ranked above defects; 1 = perfect, 0.5 = chance):")
            print("    " + format_auroc_table(report).replace("\n", "\n    "))
        for row in results.rank_agreement(cache, name):
            print(f"  spearman {row['score']}: {row['model_a']} vs {row['model_b']} = {row['spearman']:.3f} (n={row['n']})")
    return 0


def _job_line(job: dict) -> str:
    total = job.get("total")
    progress = f"{job.get('done') or 0}/{total}" if total else "-"
    rate = f"{job['tokens_per_s']:.0f} tok/s" if job.get("tokens_per_s") else ""
    eta = f"ETA {_duration(job['eta_s'])}" if job.get("eta_s") and job["state"] == "running" else ""
    error = f"error: {job['error']}" if job.get("error") else ""
    stage = job.get("stage") if job.get("stage") != job["state"] else ""
    parts = [job["id"], job["kind"], job["dataset"], job["state"], stage, progress, rate, eta, error]
    return "  ".join(p for p in parts if p)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _print_counts(title: str, counts: dict) -> None:
    if counts:
        print(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    else:
        print(f"  {title}: none")


def cmd_cancel(cache: Cache, args) -> int:
    """Cancel a queued or running job (a running one stops after the chunk in flight; finished parts are kept).

    example: python -m scoring cancel 3f2a9c1d
    """
    job = jobs.cancel(cache, args.job)
    print(f"job {job['id']}: {'cancel requested' if job['state'] in jobs.ACTIVE else job['state']}")
    return 0


def cmd_scores(cache: Cache, args) -> int:
    """Write one row per example: id, flag (empty when fine) and one column per computed score.

    example: python -m scoring scores alpaca --out alpaca-scores.csv
    """
    table, job = results.score_table(cache, args.name, args.job)
    out = Path(args.out)
    table = table.drop(columns=["idx"])
    for column in ("n_prompt_tokens", "n_response_tokens"):
        table[column] = table[column].astype("Int64")  # counts stay integers; unscored rows stay empty
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        table.to_csv(out, index=False)
    elif out.suffix == ".parquet":
        table.to_parquet(out, index=False)
    else:
        raise UserError(f"--out must end in .csv or .parquet, not {out.name!r}")
    print(f"wrote {len(table)} rows x {len(table.columns)} columns from job {job['id']} to {out}")
    return 0


def cmd_select(cache: Cache, args) -> int:
    """Keep the examples a rule picks within a budget and save the selection by name. Several --score combine as
    their intersection (--combine and, the default) or union (--combine or); give one --rule for all scores or one
    per --score. --quota COLUMN keeps each group's share of the budget ('cluster' = map clusters); --dedup TAU skips
    an example whose embedding cosine to one already kept exceeds TAU. Flagged rows are excluded unless
    --include-flagged. Every dropped row gets a reason. The app's Select page runs exactly this.

    example: python -m scoring select alpaca --score davir --budget 6% --rule top --save davir-top6
    """
    from .selections import SelectionSpec, save_spec

    if args.rule == ["lossdiff-irm"] or not args.score:  # preference pairs (and the message for a missing --score)
        from .pair_results import select_command

        return select_command(cache, args)
    spec = SelectionSpec(
        dataset=args.name, scores=tuple(args.score), budget=args.budget, rules=tuple(args.rule or ["top"]),
        combine=args.combine, include_flagged=args.include_flagged, quota=args.quota, dedup=args.dedup,
        job=args.job,
    )  # fmt: skip
    _, result = save_spec(cache, spec, args.save)
    print(f"{args.save}: kept {len(result.kept_ids)} of {result.n_total} rows, {result.tokens_kept} tokens")
    _print_counts("dropped", result.reason_counts())
    return 0


def cmd_export(cache: Cache, args) -> int:
    """Write a saved selection's examples (original columns, plus scores with --with-scores) as JSONL, Parquet,
    CSV or a `datasets` folder, with a manifest.json that records how to reproduce it.

    example: python -m scoring export alpaca davir-top6 --format jsonl --out curated/alpaca.jsonl --with-scores
    """
    from . import export, select as sel

    scores = None
    if args.with_scores:
        spec, _ = sel.load_selection(cache, args.name, args.selection)
        job_id = (spec.get("runs") or [None])[0]
        table, _ = results.score_table(cache, args.name, job_id)
        scores = table.drop(columns=["idx", "flag"])
    argv = getattr(args, "argv", None) or []
    command = "python -m scoring " + " ".join(shlex.quote(a) for a in argv) if argv else None
    result = export.export_selection(cache, args.name, args.selection, args.format, args.out, scores, command)
    print(f"wrote {result.n_rows} rows to {result.path}; manifest {result.manifest_path}")
    return 0


def cmd_layout(cache: Cache, args) -> int:
    """Compute the 2-D UMAP map of a dataset from its base-pass embeddings, as a job (in the foreground with --wait).

    example: python -m scoring layout alpaca --wait
    """
    job = results.pick_job(cache, args.name, args.job)
    layout, queued = jobs.enqueue(cache, jobs.layout_request(cache, job))
    if layout["state"] == "done":
        print(f"layout job {layout['id']} already done")
        return 0
    if args.wait:
        return _run_foreground(cache, layout["id"])
    jobs.ensure_worker(cache)
    print(f"layout job {layout['id']} queued")
    return 0


def cmd_datasets(cache: Cache, args) -> int:
    """List ingested datasets.

    example: python -m scoring datasets
    """
    for meta in data.list_datasets(cache):
        print(f"{meta['name']}\t{meta['n_rows']} rows\t{meta['layout']}\t{meta['fingerprint'][:16]}\t{meta['source']}")
    return 0


def cmd_demo(cache: Cache, args) -> int:
    """Generate the embedded demo (a few hundred computed-answer tasks with labelled planted defects), ingest it,
    score it with the default model and print the AUROC of each score per defect kind. --background queues the
    scoring instead of waiting.

    With --pairs SOURCE it is the preference-pair check instead: the first --limit pairs of SOURCE with chosen and
    rejected swapped in a labelled --swap share (defect "swapped_pair"), scored with DPO warm-ups, and the AUROC
    with which each pair score ranks the swapped pairs low (irm is the one that should).

    example: python -m scoring demo
    example: python -m scoring demo --pairs ../shared/data/hh-rlhf/helpful-base/test.jsonl.gz --limit 80
    """
    from .demo_data import write_demo

    if args.pairs:
        return _pair_demo(cache, args)

    path = write_demo(cache.root / "demo" / "demo.jsonl", n_clean=args.n_clean)
    result = data.ingest(str(path), cache, name="demo", replace=True, progress=False)
    print(f"demo: {result.n_rows} rows ingested ({'unchanged' if result.already_present else 'new'})")
    request = jobs.score_request(cache, "demo", args.model)
    job, _ = jobs.enqueue(cache, request)
    if args.background:
        jobs.ensure_worker(cache)
        print(f"job {job['id']} queued in the background; follow with `python -m scoring status demo`")
        return 0
    started = time.perf_counter()
    if job["state"] != "done":
        code = _run_foreground(cache, job["id"])
        if code:
            return code
    else:
        _run_foreground(cache, job["id"])  # makes sure the layout exists too
    print(f"demo scored in {time.perf_counter() - started:.0f} s")
    args.name = "demo"
    return cmd_status(cache, args)


def _pair_demo(cache: Cache, args) -> int:
    from .losses import PassConfig
    from .pairs_data import write_planted_pairs

    source = data._resolve_source(args.pairs)
    name = f"{source.default_name}-swapped"
    path, n_swapped = write_planted_pairs(args.pairs, cache.root / "demo" / f"{name}.jsonl", args.limit, args.swap)
    result = data.ingest(str(path), cache, name=name, replace=True, progress=False)
    print(f"{name}: {result.n_rows} pairs ingested, {n_swapped} with chosen and rejected swapped (defect "
          f"swapped_pair); layout {result.layout}")
    args.name, args.scores, args.val, args.beta, args.train_method = name, None, None, 0.1, "full"
    args.val_fraction, args.epochs, args.trust_remote_code = 0.1, 1.0, False
    request = _pair_request(cache, args, PassConfig(max_length=args.max_length))
    job, _ = jobs.enqueue(cache, request)
    if args.background:
        jobs.ensure_worker(cache)
        print(f"job {job['id']} queued in the background; follow with `python -m scoring status {name}`")
        return 0
    started = time.perf_counter()
    code = _run_foreground(cache, job["id"])
    if code:
        return code
    print(f"pairs scored in {time.perf_counter() - started:.0f} s")
    return cmd_status(cache, args)


COMMANDS = {
    "ingest": cmd_ingest,
    "score": cmd_score,
    "worker": cmd_worker,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "scores": cmd_scores,
    "select": cmd_select,
    "export": cmd_export,
    "layout": cmd_layout,
    "datasets": cmd_datasets,
    "demo": cmd_demo,
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", default=argparse.SUPPRESS, help="cache folder (default $DAVIR_CACHE or ./cache)")
    parser = argparse.ArgumentParser(
        prog="python -m scoring", description="DavIR Studio: score, select and export training examples.",
        parents=[common],
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str):
        fn = COMMANDS[name]
        doc = (fn.__doc__ or "").strip()
        return sub.add_parser(
            name, parents=[common], help=doc.splitlines()[0], description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    p = add("ingest")
    p.add_argument("source", help="file, folder, glob or Hugging Face dataset id")
    p.add_argument("--name", help="dataset name (default: from the source)")
    p.add_argument("--limit", type=int, help="keep only the first N records")
    p.add_argument("--map", action="append", metavar="FIELD=COLUMN", help="prompt/response/context/system/messages/id")
    p.add_argument("--replace", action="store_true", help="replace a dataset of the same name holding other data")

    p = add("score")
    p.add_argument("name", help="dataset name")
    p.add_argument("--model", help="smollm2-135m (default), a local folder or a hub id")
    p.add_argument("--reference", default="train", help="'train' (fine-tune the base, default) or a model")
    p.add_argument("--scores", help="comma-separated (default davir,rho,ifd,ppl)")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per example (default 1024)")
    p.add_argument("--batch-tokens", type=int, help="tokens per micro-batch (default 8192 on a CPU, 65536 on a GPU)")
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the model's layers (about 2x faster "
                   "scoring on an H200; ignored on a CPU)")
    p.add_argument("--no-kernels", action="store_true", help="CPU: transformers' own layers instead of the fused "
                   "bf16 kernels (about 1.6x slower; low-order bits differ)")
    p.add_argument("--train-method", choices=["full", "lora"], default="full", help="reference fine-tuning")
    p.add_argument("--epochs", type=float, default=1.0, help="reference fine-tuning epochs (default 1)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    p.add_argument("--wait", action="store_true", help="do the work here, in the foreground")
    p.add_argument("--beta", type=float, default=0.1, help="pairs: DPO beta of the warm-ups and scores (default 0.1)")
    p.add_argument("--val", metavar="DATASET_OR_FILE", help="pairs: validation pairs for theta_val (default: a "
                   "held-out --val-fraction of the dataset)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="pairs: held-out validation share (default 0.1)")

    p = add("worker")
    p.add_argument("--idle-exit", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")

    p = add("status")
    p.add_argument("name", nargs="?", help="dataset name (default: all)")

    p = add("cancel")
    p.add_argument("job", help="job id (a unique prefix is enough)")

    p = add("scores")
    p.add_argument("name")
    p.add_argument("--out", required=True, help="FILE.csv or FILE.parquet")
    p.add_argument("--job", help="score job to read (default: the latest finished one)")

    p = add("select")
    p.add_argument("name")
    p.add_argument("--score", action="append", help="score to rank by; repeat to intersect (not with lossdiff-irm)")
    p.add_argument("--budget", required=True, help="6%% | 3000 | 2M-tokens")
    p.add_argument("--rule", action="append", help="top (default) | bottom | band:LO-HI (percentiles); once for all "
                   "scores or once per --score; lossdiff-irm (preference pairs, no --score)")
    p.add_argument("--band", metavar="LO-HI", help="--rule lossdiff-irm: percentile band of both lossdiff and irm "
                   "(default 15-85)")
    p.add_argument("--combine", choices=["and", "or"], default="and", help="several scores: and = intersection "
                   "(default), or = union")
    p.add_argument("--quota", metavar="COLUMN", help="split the budget over groups: 'cluster' (map clusters) or an "
                   "original column such as a category")
    p.add_argument("--dedup", type=float, metavar="TAU", help="skip an example whose embedding cosine to one already "
                   "kept exceeds TAU (e.g. 0.95)")
    p.add_argument("--save", required=True, help="selection name")
    p.add_argument("--include-flagged", action="store_true", help="let flagged rows be selected")
    p.add_argument("--job", help="score job to read (default: the latest finished one)")

    p = add("export")
    p.add_argument("name")
    p.add_argument("selection")
    p.add_argument("--format", required=True, choices=["jsonl", "parquet", "csv", "hf"])
    p.add_argument("--out", help="output file (folder for hf); default under <cache>/exports/")
    p.add_argument("--with-scores", action="store_true", help="add the score columns")

    p = add("layout")
    p.add_argument("name")
    p.add_argument("--job", help="score job whose embeddings to lay out (default: latest)")
    p.add_argument("--wait", action="store_true")

    add("datasets")

    p = add("demo")
    p.add_argument("--n-clean", type=int, default=240, help="clean examples before planting defects (default 240)")
    p.add_argument("--model", help="model to score with (default smollm2-135m)")
    p.add_argument("--background", action="store_true", help="queue the scoring instead of waiting")
    p.add_argument("--pairs", metavar="SOURCE", help="preference pairs to plant swapped pairs in (see above)")
    p.add_argument("--limit", type=int, default=100, help="--pairs: pairs read from SOURCE (default 100)")
    p.add_argument("--swap", type=float, default=0.2, help="--pairs: share of pairs swapped (default 0.2)")
    p.add_argument("--max-length", type=int, default=512, help="--pairs: tokens per side (default 512)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the user typed, for manifests
    try:
        cache = Cache(cache_dir(getattr(args, "cache", None)))
        return COMMANDS[args.command](cache, args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished parts are kept, run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
