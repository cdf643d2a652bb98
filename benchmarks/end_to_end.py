"""The whole DavIR job, timed stage by stage: ingest, base pass (with IFD's response-alone pass), reference
fine-tune (one epoch), reference pass, on Alpaca (../shared/data/alpaca, 52,002 rows) with a random-weight Llama.

    python benchmarks/end_to_end.py                       # ~1B Llama, every Alpaca row, on the GPU when there is one
    python benchmarks/end_to_end.py --tiny                # a tiny Llama on 200 rows, on the CPU: what CI runs
    python benchmarks/end_to_end.py --model 0.5b --rows 5000 --compile [--pack on] [--model-dir FOLDER] [--alpaca DIR]
        [--train-batch 128 --train-tokens 8192]

The model is built from a config with random weights (no download): ``--model`` is one of throughput.py's
RANDOM_CONFIGS (0.5b, 1b, 3b, 7b; vocabulary 49,152, embeddings tied) with a byte-level BPE tokenizer of that size
trained on the rows' own text in a few seconds, or ``--tiny`` (tests/tiny.py: 2 layers of width 64, a 384-entry
vocabulary). The job is the real one (scoring.jobs: the same code as ``python -m scoring score``), in a fresh cache
(``--cache``, default a new temporary folder).

The last line printed is JSON: {"device", "model", "params", "rows", "train_batch", "train_tokens", "stages":
{"ingest" | "base pass" | "ref training" | "ref pass": {"seconds", "tokens", "tokens_per_s", "mfu"}}, "total_s",
"targets", ...}. ``--train-batch`` / ``--train-tokens`` are ``score``'s: examples per optimizer step (the tool's
default, 8, makes 6,500 steps over Alpaca, each a pass of AdamW over every weight) and tokens per forward. Tokens: the
passes count every token they run (the base pass its examples' prompts and responses plus each response alone), the
fine-tune its examples' tokens once per epoch. ``mfu`` = 2·N·T (passes) or 6·N·T (training) FLOPs over the stage's
seconds and the GPU's peak dense bf16 FLOP/s (throughput.PEAK_BF16), N the parameters, T the tokens; null on a CPU
or a GPU not in that table. Targets (on one H100 / H200): the whole job under 5 minutes, scoring MFU >= 0.50,
fine-tune MFU >= 0.35. Stopped by SIGTERM (``timeout``), it prints instead what the job reached: {..., "partial":
true, "stopped_after_s", "stages_done": {stage: seconds}, "in_progress": {"stage", "done", "total", "tokens_per_s",
"eta_s", "mfu" (a pass's so far)}, "error"}; so does a job that failed, before exiting 1.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ALPACA = ROOT.parent / "shared" / "data" / "alpaca"
TARGETS = {"total_s": 300, "scoring_mfu": 0.50, "training_mfu": 0.35}


def build_random_model(folder: Path, size: str, rows: list[str], seed: int = 0) -> Path:
    """A random-weight Llama of throughput.RANDOM_CONFIGS[size] and a BPE tokenizer of its vocabulary trained on
    ``rows``, saved as a model folder the job loads like any other."""
    import torch
    from throughput import random_config
    from transformers import AutoModelForCausalLM

    from tests.tiny import build_tokenizer

    tokenizer = build_tokenizer(corpus=rows, vocab_size=49152, unk_token="<|endoftext|>")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(random_config(size, tokenizer), dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def alpaca_rows(folder: Path, limit: int) -> list[dict]:
    """The first ``limit`` rows of the Alpaca JSON parts in ``folder``, as stored."""
    out = []
    for part in sorted(folder.glob("*.json")):
        out += json.loads(part.read_text())[: limit - len(out)]
        if len(out) >= limit:
            break
    return out


def alpaca_texts(folder: Path, limit: int) -> list[str]:
    return ["\n".join((r["instruction"], r.get("input", ""), r["output"])) for r in alpaca_rows(folder, limit)]


def reached(cache, job_id: str, about: dict, params: int, peak: float | None, started: float) -> dict:
    """What a job that did not finish reached: the stages it finished, with their seconds, and the one it was in,
    with its progress, its tokens/s and, for a pass, its MFU so far (and the job's error, if it failed)."""
    from scoring.store.jobs import read_job

    job = read_job(cache, job_id)
    current = {"stage": job.stage, "done": job.done, "total": job.total, "tokens_per_s": job.tokens_per_s,
               "eta_s": job.eta_s} if job else None  # fmt: skip
    if current and job.tokens_per_s and peak:
        current["mfu"] = round(2 * params * job.tokens_per_s / peak, 4)
    return {**about, "partial": True, "stopped_after_s": round(time.perf_counter() - started, 1),
            "stages_done": job.timings if job else None, "in_progress": current, "error": job.error if job else None,
            "targets": TARGETS, "date": time.strftime("%Y-%m-%d")}  # fmt: skip


def report_when_killed(*context) -> None:
    """On SIGTERM (``timeout``'s signal: gpu_checks.sh bounds this run by the time its lease has left), print
    :func:`reached` as the last JSON line and exit 124."""

    def report(signum, frame) -> None:
        print(json.dumps(reached(*context)), flush=True)
        os._exit(124)

    signal.signal(signal.SIGTERM, report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on the CPU (default 200 rows)")
    parser.add_argument("--model", default="1b", help="random-weight size: 0.5b, 1b, 3b, 7b (without --tiny)")
    parser.add_argument("--rows", type=int, default=None, help="Alpaca rows (default: all 52,002; 200 with --tiny)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per example (default 1024; 256 with --tiny)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the passes' layers (a GPU)")
    parser.add_argument("--pack", choices=["auto", "on", "off"], default="auto",
                        help="packed rows in the passes and the fine-tune (auto: on a CPU; on: a GPU too, one varlen "
                             "flash-attention call a layer)")
    parser.add_argument("--train-batch", type=int, default=None,
                        help="examples per optimizer step of the fine-tune (default: the tool's, 8)")
    parser.add_argument("--train-tokens", type=int, default=None,
                        help="tokens per forward / backward of the fine-tune (default: the tool's, 1,024 on a GPU)")
    parser.add_argument("--cache", default=None, help="the job's cache (default: a new temporary folder)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="an already built model folder (build_random_model's or tests/tiny.py's) instead of a new one")
    parser.add_argument("--alpaca", type=Path, default=ALPACA, help=f"the Alpaca JSON parts (default {ALPACA})")
    args = parser.parse_args()

    import torch
    from throughput import peak_flops

    from scoring.ingest.catalog import ingest
    from scoring.jobs.requests import pass_config_for, score_request
    from scoring.jobs.runner import enqueue, run
    from scoring.models.loading import pick_device
    from scoring.scores.tables import score_table
    from scoring.store.cache import Cache
    from scoring.train.sft_config import TrainConfig
    from tests.tiny import build_model

    rows = args.rows or (200 if args.tiny else 52_002)
    max_length = args.max_length or (256 if args.tiny else 1024)
    cache = Cache(Path(args.cache or tempfile.mkdtemp(prefix="davir-e2e-")))
    folder = cache.root / "bench-model"
    started = time.perf_counter()
    if args.model_dir:
        folder, name = args.model_dir, args.model_dir.name
    elif args.tiny:
        build_model(folder, hidden=64, layers=2)
        name = "tiny"
    else:
        build_random_model(folder, args.model, alpaca_texts(args.alpaca, rows))
        name = f"random:{args.model}"
    build_s = time.perf_counter() - started
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).parameters())

    started = time.perf_counter()
    ingest(str(args.alpaca), cache, name="alpaca", limit=rows, progress=False)
    ingest_s = time.perf_counter() - started
    device = pick_device()
    train = TrainConfig(epochs=1.0, pack=args.pack).sized(args.train_batch, args.train_tokens)
    request = score_request(cache, "alpaca", str(folder), pass_config=pass_config_for("sft", max_length,
                            compile=args.compile, pack=args.pack), train=train)  # fmt: skip
    enqueue(cache, request)
    about = {"device": device if not device.startswith("cuda") else torch.cuda.get_device_name(), "model": name,
             "params": params, "rows": rows, "max_length": max_length, "compile": args.compile, "pack": args.pack,
             "train_batch": train.batch_size, "train_tokens": train.group_tokens(device),
             "model_build_s": round(build_s, 1)}  # fmt: skip
    # (what a stopped or failed job reached: its ingest is not one of the job's stages)
    context = (cache, request.id, {**about, "ingest_s": round(ingest_s, 2)}, params, peak_flops(device),
               time.perf_counter())  # fmt: skip
    report_when_killed(*context)
    job = run(cache, request.id, progress=True)
    if job.state != "done":  # the stages it reached, as the last line, before saying how it ended
        print(json.dumps(reached(*context)), flush=True)
        raise SystemExit(f"the job ended {job.state}: {job.error}")

    table, _ = score_table(cache, "alpaca")
    scored = table[table["n_response_tokens"] > 0]
    full = int((scored["n_prompt_tokens"] + scored["n_response_tokens"]).sum())
    alone = int(scored["n_response_tokens"].sum())  # each response alone (plus its first token's context)
    peak = peak_flops(device)
    stages = {"ingest": {"seconds": round(ingest_s, 2), "tokens": None, "tokens_per_s": None, "mfu": None}}
    for stage, tokens, flops_per_token in (("base pass", full + alone, 2), ("ref training", full, 6),
                                           ("ref pass", full, 2)):  # fmt: skip
        seconds = float(job.timings[stage])
        stages[stage] = {
            "seconds": seconds, "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "mfu": round(flops_per_token * params * tokens / seconds / peak, 4) if peak and seconds else None,
            "peak_mb": (job.peak_mb or {}).get(stage),
        }  # fmt: skip
    total = sum(s["seconds"] for s in stages.values())
    print(json.dumps({
        **about, "scored_rows": len(scored), "stages": stages, "total_s": round(total, 1), "targets": TARGETS,
        "meets_target": (None if peak is None else total < TARGETS["total_s"]
                         and stages["base pass"]["mfu"] >= TARGETS["scoring_mfu"]
                         and stages["ref pass"]["mfu"] >= TARGETS["scoring_mfu"]
                         and stages["ref training"]["mfu"] >= TARGETS["training_mfu"]),
        "date": time.strftime("%Y-%m-%d"),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
