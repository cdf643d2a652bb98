"""Peak memory of each stage of a score job on the default model, by dataset and size: is it bounded by the
configuration, not the data?

    python benchmarks/memory.py                                  # GSM8K 200 and 2,000 rows, LIMA 200, HH-RLHF 200
    python benchmarks/memory.py --runs gsm8k:200 lima:64 --train-steps 1
    python benchmarks/memory.py --fine-tune-alone gsm8k:200 --train-steps 0   # one epoch, step by step
    python benchmarks/memory.py --fine-tune-alone alpaca:52002 --train-steps 2   # the whole of Alpaca tokenised
    python benchmarks/memory.py --fine-tune-alone gsm8k:200 --train-steps 4 --ranks 2 --fsdp   # per rank, sharded
    python benchmarks/memory.py --data-size alpaca:1040040   # ingest, and the examples a job holds, at 1M rows

Each run ingests the first N rows of a dataset in ../shared/data (gsm8k: train.jsonl, instruction data; lima:
lima.json, long answers; hh: HH-RLHF helpful-base pairs; alpaca: the 52,002 Alpaca rows, for
``--fine-tune-alone alpaca:52002``: memory at a real dataset's size) into one benchmark cache (``--cache``, default
/tmp/davir-memory; the default model is converted once there and kept, every job, pass and trained model of an
earlier run is removed first), then runs the real score job in a fresh Python
process: for instruction data the base pass (with IFD's response-alone pass), the reference fine-tune and the
reference pass; for pairs the reference pass, the two DPO warm-ups and their passes. The fine-tunes stop after
``--train-steps`` optimizer steps (their sampler puts the longest batch first, so the steps run are the most
memory-hungry ones); passes run over every row. ``--max-length`` (default 1024) is the job's.

Each stage's peak resident memory is what the job itself records (``peak_mb``, scoring/jobs/memory.py: the
kernel's VmHWM, reset at the start of each stage), in the one process that runs all stages, as a worker does.

The last line printed is JSON: {"cpu", "model", "max_length", "train_steps", "target_mb", "runs": {"gsm8k:200":
{"peak_mb": {stage: MB}, "seconds": {stage: s}, "rows": N}, ...}, "max_peak_mb", "meets_target", "flat"}; ``flat``
compares each stage's peak across the sizes of one dataset (largest / smallest). ``--data-size DATA:ROWS`` measures
what grows with the rows alone, without a model: ingest's peak, and what a score job then holds for its examples
(beyond ~52,002 rows ``alpaca`` repeats Alpaca with each copy's instructions marked "(variant k)", written once as
JSONL in the cache); it prints {"cpu", ..., "ingest": {"peak_mb", "s", "rows"}, "held_mb", "text_mb"}.
``--fine-tune-alone`` prints
{"cpu", ..., "steps": [{"step", "peak_mb", "after_mb", "s"}], "max_peak_mb"} instead; with ``--ranks N`` it runs
under torchrun (gloo) and prints each rank's steps under "per_rank", DDP or, with ``--fsdp``, sharded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoring.store.cache import Cache  # noqa: E402  (after the path: run as a script from anywhere)

DATA = ROOT.parent / "shared" / "data"
SOURCES = {
    "gsm8k": DATA / "gsm8k" / "train.jsonl",
    "lima": DATA / "lima" / "lima.json",
    "hh": DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz",
    "alpaca": DATA / "alpaca" / "*.json",  # 52,002 rows: the data-size check (--fine-tune-alone alpaca:52002)
}
DEFAULT_RUNS = ["gsm8k:200", "gsm8k:2000", "lima:200", "hh:200"]
TARGET_MB = 3 * 1024


def child(cache_root: Path, data: str, rows: int, max_length: int, train_steps: int) -> dict:
    """In a fresh process: ingest, run the score job here, return what it recorded."""
    from scoring.jobs.requests import pass_config_for, score_request
    from scoring.jobs.runner import enqueue, run
    from scoring.train.dpo_config import DPOTrainConfig
    from scoring.train.sft_config import TrainConfig

    cache, name = fresh_dataset(cache_root, data, rows)
    kind = "pair" if data == "hh" else "sft"
    request = score_request(cache, name, pass_config=pass_config_for(kind, max_length),
                            train=TrainConfig(max_steps=train_steps), dpo=DPOTrainConfig(max_steps=train_steps))
    enqueue(cache, request)
    started = time.perf_counter()
    job = run(cache, request.id)
    if job.state != "done":
        raise SystemExit(f"{name}: the job ended {job.state}: {job.error}")
    return {"rows": rows, "peak_mb": job.peak_mb, "seconds": job.timings,
            "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def fine_tune_alone(cache_root: Path, data: str, rows: int, max_length: int, train_steps: int) -> dict:
    """In a fresh process: the reference fine-tune alone (no pass before it), each optimizer step's peak resident
    memory and the resident memory left after it (freed memory handed back first): does memory creep from step to
    step over a long run?"""
    from scoring.ingest.catalog import dataset_meta, load_examples
    from scoring.jobs import memory
    from scoring.models.formatting import template_fingerprint
    from scoring.models.loading import DEFAULT_MODEL, load_tokenizer, resolve
    from scoring.train.sft import train_reference
    from scoring.train.sft_config import TrainConfig

    from scoring import ranks

    if ranks.current().main:  # under a launcher (--ranks): rank 0 prepares the cache, the others wait for it
        cache, name = fresh_dataset(cache_root, data, rows)
        base = resolve(DEFAULT_MODEL, cache)  # converted once, before any other rank reads it
    ranks.barrier()
    if not ranks.current().main:
        cache, name = Cache(cache_root), dataset_name(data, rows)
        base = resolve(DEFAULT_MODEL, cache)
    tokenizer = load_tokenizer(base)
    messages = (json.loads(m) for m in load_examples(cache, name, columns=["messages"])["messages"])  # as the job
    memory.bound_heap()
    memory.release()
    steps: list[dict] = []
    started = time.perf_counter()
    memory.reset_peak()

    def on_step(step: int, total: int) -> None:
        peak = memory.peak_mb()
        memory.release()
        steps.append({"step": step, "peak_mb": peak, "after_mb": memory.rss_mb(),
                      "s": round(time.perf_counter() - started, 1)})  # fmt: skip
        memory.reset_peak()

    train_reference(cache, base, tokenizer, messages, dataset_meta(cache, name)["fingerprint"],
                    template_fingerprint(tokenizer), max_length, TrainConfig(max_steps=train_steps or 0), "cpu",
                    on_step)  # fmt: skip
    return {"rows": rows, "steps": steps, "max_peak_mb": max(s["peak_mb"] for s in steps)}


def data_size(cache_root: Path, data: str, rows: int) -> dict:
    """In this (fresh) process: ingest ``rows`` of ``data`` and load its examples as a score job does; the ingest's
    peak resident memory and what the examples hold once loaded (MB, after freed memory is handed back)."""
    from scoring.ingest.catalog import ingest, load_table
    from scoring.jobs import memory
    from scoring.passes.runner import INSTRUCTIONS, Rows

    cache = Cache(cache_root)
    source = str(SOURCES[data]) if data != "alpaca" or rows <= 52002 else str(alpaca_variants(cache_root, rows))
    memory.release()
    memory.reset_peak()
    started = time.perf_counter()
    ingest(source, cache, name=dataset_name(data, rows), limit=rows, replace=True, progress=False)
    out = {"ingest": {"rows": rows, "peak_mb": memory.peak_mb(), "s": round(time.perf_counter() - started, 2)}}
    memory.release()
    before = memory.rss_mb()
    rows_held = Rows(load_table(cache, dataset_name(data, rows), list(INSTRUCTIONS.columns)), INSTRUCTIONS.columns)
    memory.release()
    text = sum(b.column("messages").nbytes for b in rows_held.batches) / 1e6
    return {**out, "held_mb": round(memory.rss_mb() - before, 1), "text_mb": round(text, 1)}


def alpaca_variants(cache_root: Path, rows: int) -> Path:
    """Alpaca repeated to ``rows`` rows, every copy after the first with "(variant k)" after each instruction (no two
    rows alike), as JSONL under the benchmark cache (written once)."""
    path = Path(cache_root, "sources", f"alpaca-{rows}.jsonl")
    if path.is_file():
        return path
    records = [r for f in sorted(DATA.glob("alpaca/*.json")) for r in json.loads(f.read_text())]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "w") as out:
        for i in range(rows):
            k, record = i // len(records), records[i % len(records)]
            variant = dict(record, instruction=f"{record['instruction']} (variant {k})") if k else record
            out.write(json.dumps(variant) + "\n")
    path.with_suffix(".tmp").rename(path)
    return path


def launched(args) -> dict:
    """--fine-tune-alone under ``torchrun --nproc-per-node RANKS`` (gloo, one thread per rank), DDP or sharded
    (``--fsdp``): each rank's step peaks, as {"cpu", ..., "ranks", "fsdp", "per_rank": [{"rank", "max_peak_mb",
    "steps"}], "max_peak_mb"}."""
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   DAVIR_FSDP="1" if args.fsdp else "")  # fmt: skip
        run = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks), "--master-addr",
             "127.0.0.1", "--master-port", str(port), __file__, "--cache", args.cache, "--max-length",
             str(args.max_length), "--train-steps", str(args.train_steps), "--fine-tune-alone", args.fine_tune_alone,
             "--rank-out", out],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if run.returncode != 0:
            raise SystemExit(f"the launched fine-tune failed:\n{run.stderr[-3000:]}")
        per_rank = [{"rank": r, **json.loads(Path(out, f"rank-{r}.json").read_text())} for r in range(args.ranks)]
    return {"cpu": _cpu(), "cores": os.cpu_count(), "max_length": args.max_length, "date": time.strftime("%Y-%m-%d"),
            "ranks": args.ranks, "fsdp": args.fsdp, "fine_tune": args.fine_tune_alone,
            "per_rank": [{"rank": r["rank"], "max_peak_mb": r["max_peak_mb"], "steps": r["steps"]} for r in per_rank],
            "max_peak_mb": max(r["max_peak_mb"] for r in per_rank)}  # fmt: skip


def dataset_name(data: str, rows: int) -> str:
    return f"{data}-{rows}"


def fresh_dataset(cache_root: Path, data: str, rows: int) -> tuple[Cache, str]:
    """The benchmark's cache with no earlier result in it, and the first ``rows`` of ``data`` ingested there:
    (cache, dataset name)."""
    from scoring.ingest.catalog import ingest

    cache = Cache(cache_root)
    forget_results(cache)
    name = dataset_name(data, rows)
    ingest(str(SOURCES[data]), cache, name=name, limit=rows, progress=False)
    return cache, name


def forget_results(cache) -> None:
    """Remove every job, pass and trained model from the benchmark's cache, keeping the converted default model:
    each run measures its stages from scratch (a job, pass or checkpoint left by an earlier run would be reused at
    ~0 MB, or, for a job, its old figures returned as they were)."""
    import shutil

    shutil.rmtree(cache.jobs_dir(), ignore_errors=True)
    shutil.rmtree(cache.root / "passes", ignore_errors=True)
    for model in cache.models_dir().glob("*"):
        if model.name.lstrip(".").startswith(("ref-", "dpo-")):
            shutil.rmtree(model, ignore_errors=True)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="DATA:ROWS, DATA one of " + ", ".join(SOURCES))
    parser.add_argument("--cache", default="/tmp/davir-memory", help="the benchmark's cache (reused between runs)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--train-steps", type=int, default=2, help="optimizer steps of each fine-tune")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--fine-tune-alone", metavar="DATA:ROWS",
                        help="only the reference fine-tune, in this process, printing each step's peak and what is "
                             "left after it (--train-steps 0: a whole epoch)")
    parser.add_argument("--ranks", type=int, default=1, help="--fine-tune-alone under torchrun with this many "
                        "processes (gloo), each rank's steps reported")
    parser.add_argument("--fsdp", action="store_true", help="with --ranks: train sharded (DAVIR_FSDP=1), not DDP")
    parser.add_argument("--data-size", metavar="DATA:ROWS", help="what grows with the rows alone: ingest's peak "
                        "and the examples a job holds (no model)")
    parser.add_argument("--child", nargs=2, metavar=("DATA", "ROWS"), help=argparse.SUPPRESS)
    parser.add_argument("--rank-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fine_tune_alone:
        data, _, rows = args.fine_tune_alone.partition(":")
        if data not in ("gsm8k", "lima", "alpaca") or not rows.isdigit():
            parser.error("--fine-tune-alone: DATA:ROWS with DATA gsm8k, lima or alpaca")
        if args.ranks > 1:
            print(json.dumps(launched(args)))
            return
        out = fine_tune_alone(Path(args.cache), data, int(rows), args.max_length, args.train_steps)
        if args.rank_out:  # one rank of launched(): its own figures, in a file of its own
            from scoring import ranks

            Path(args.rank_out, f"rank-{ranks.current().rank}.json").write_text(json.dumps(out))
            return
        print(json.dumps({"cpu": _cpu(), "cores": os.cpu_count(), "max_length": args.max_length,
                          "date": time.strftime("%Y-%m-%d"), **out}))  # fmt: skip
        return
    if args.data_size:
        data, _, rows = args.data_size.partition(":")
        if data not in ("gsm8k", "lima", "alpaca") or not rows.isdigit():
            parser.error("--data-size: DATA:ROWS with DATA gsm8k, lima or alpaca")
        print(json.dumps({"cpu": _cpu(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "data": data,
                          **data_size(Path(args.cache), data, int(rows))}))  # fmt: skip
        return
    if args.child:
        print(json.dumps(child(Path(args.cache), args.child[0], int(args.child[1]), args.max_length,
                               args.train_steps)))  # fmt: skip
        return

    runs: dict[str, dict] = {}
    for spec in args.runs:
        data, _, rows = spec.partition(":")
        if data not in SOURCES or not rows.isdigit():
            parser.error(f"--runs: {spec!r} is not DATA:ROWS with DATA one of {', '.join(SOURCES)}")
        if not args.json_only:
            print(f"{spec} ...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--cache", args.cache, "--max-length", str(args.max_length), "--train-steps",
             str(args.train_steps), "--child", data, rows],
            capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"), check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"{spec} failed:\n{out.stderr[-3000:]}")
        runs[spec] = json.loads(out.stdout.strip().splitlines()[-1])
        if not args.json_only:
            print(f"  {json.dumps(runs[spec]['peak_mb'])}", file=sys.stderr, flush=True)

    flat: dict[str, dict[str, float]] = {}
    for data in {s.partition(":")[0] for s in runs}:
        sizes = sorted((r["rows"], r) for s, r in runs.items() if s.startswith(data + ":"))
        if len(sizes) > 1:
            small, large = sizes[0][1]["peak_mb"], sizes[-1][1]["peak_mb"]
            flat[data] = {stage: round(large[stage] / small[stage], 3) for stage in small if stage in large}
    peak = max(max(r["peak_mb"].values()) for r in runs.values())
    print(json.dumps({
        "cpu": _cpu(), "cores": os.cpu_count(), "model": "default (SmolLM2-135M-Instruct)",
        "max_length": args.max_length, "train_steps": args.train_steps, "target_mb": TARGET_MB, "runs": runs,
        "max_peak_mb": peak, "meets_target": peak <= TARGET_MB, "flat": flat, "date": time.strftime("%Y-%m-%d"),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
