"""Scoring throughput: the engine (scoring.passes.engine.score_encoded) against a plain per-example transformers loop.

Both ways score the same examples with the same weights in one run:

- engine:   ``score_encoded(model, encoded, PassConfig(alone=False, embed=False, ...), pad_id)`` with the model in
            the engine's dtype (``scoring.models.loading.pick_dtype``: bf16 on CUDA, and on CPUs with native bf16
            whose measured bf16 products are not slower than fp32's, scoring/models/precision.py).
- baseline: the model as ``AutoModelForCausalLM.from_pretrained(path)`` loads it (its default dtype), and for each
            example ``model(input_ids=..., labels=...)`` (prompt labels -100) under ``torch.inference_mode()``.

Tokens counted = the sum of the sequence lengths of the scored examples (the same number for both ways).
Progress goes to stderr; the last stdout line is one JSON object::

    engine_tokens_per_s, baseline_tokens_per_s, speedup, mfu, device, n_examples, tokens, model, params,
    dtype_engine, cpu_model, cpu_bf16, dtype_baseline, engine_s, baseline_s, max_abs_diff_mean_loss, batch_tokens, max_length, ...

``mfu`` = 2 x parameters x tokens / engine seconds / the device's peak dense bf16 FLOP/s (null on CPU or on a GPU
not in the table). It counts every token as a full forward pass of every parameter, although the engine skips
the LM head for prompt positions, so it slightly overstates the work done.

Usage::

    python benchmarks/throughput.py [--model M] [--n N] [--max-length L] [--data PATH]
                                    [--random-weights 0.5b|1b|3b|7b|CONFIG] [--batch-tokens B] [--threads T]
                                    [--repeats R] [--device D] [--dtype auto|bf16|fp16|fp32] [--cache DIR]
                                    [--compile] [--pack auto|on|off] [--kernels auto|off] [--profile]

``--profile`` adds ``profile``: {"baseline" | "engine": {"s", "matmul_share", "attention_share", "top"}}, one more
run of each way under torch.profiler after the timed ones (with ``--threads 1``, so the engine's rows run on the
profiled thread): how much of each way's time its matrix products take, and so how far the engine can get ahead of
the loop by anything but faster products.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Peak dense bf16 FLOP/s, matched in order against torch.cuda.get_device_name (first substring hit wins).
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("A100", 312e12),
)

# Random-weight Llama configs for GPU speed tests (vocab 49152 = the SmolLM2 tokenizer; embeddings tied).
RANDOM_CONFIGS = {
    # SmolLM2-360M / Qwen2.5-0.5B-like, a little wider: ~0.54B parameters
    "0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=32, num_attention_heads=16,
                 num_key_value_heads=4),
    # Llama-3.2-1B-like: ~1.07B
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    # Llama-3.2-3B-like: ~3.0B
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8),
    # Llama-2-7B-like: ~6.7B
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
}


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inputs


def default_data() -> Path:
    near = (REPO / ".." / "shared" / "data" / "gsm8k" / "train.jsonl").resolve()
    return near if near.exists() else Path("/work/shared/data/gsm8k/train.jsonl")


def to_messages(record: dict) -> list[dict]:
    if "messages" in record:
        return record["messages"]
    if "question" in record and "answer" in record:  # GSM8K
        return [{"role": "user", "content": record["question"]}, {"role": "assistant", "content": record["answer"]}]
    if "instruction" in record and "output" in record:  # Alpaca
        prompt = record["instruction"] + (("\n\n" + record["input"]) if record.get("input") else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    raise SystemExit(f"unknown record format (keys {sorted(record)}): need messages, question/answer or "
                     "instruction/output")


def read_examples(path: Path, n: int) -> list[list[dict]]:
    out = []
    with open(path) as fh:
        for line in fh:
            if line.strip():
                out.append(to_messages(json.loads(line)))
                if len(out) >= n:
                    break
    return out


def random_config(spec: str, tokenizer):
    from transformers import AutoConfig, LlamaConfig

    if spec.lower() in RANDOM_CONFIGS:
        return LlamaConfig(
            vocab_size=49152,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **RANDOM_CONFIGS[spec.lower()],
        )
    config = AutoConfig.from_pretrained(spec)  # a config.json, a folder holding one, or a hub id
    if config.vocab_size < len(tokenizer):
        raise SystemExit(f"config vocab {config.vocab_size} < tokenizer size {len(tokenizer)}")
    return config


def device_label(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_flops(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, flops in PEAK_BF16:
        if key in name:
            return flops
    return None


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


# ---------------------------------------------------------------- the two ways


def run_engine(model, encoded, config, pad_id: int, device: str, warm: bool = True) -> tuple[list[float], float]:
    from scoring.passes.engine import score_encoded

    if warm:
        log(f"engine: warm-up ({min(4, len(encoded))} examples)")
        score_encoded(model, encoded[:4], config, pad_id)
        sync(device)
    log(f"engine: scoring {len(encoded)} examples (batch_tokens={config.batch_tokens})")
    started = time.perf_counter()
    rows = score_encoded(model, encoded, config, pad_id)
    sync(device)
    seconds = time.perf_counter() - started
    means = [row["loss_sum"] / row["n_response_tokens"] for row in rows]
    return means, seconds


def run_baseline(model, encoded, device: str, warm: bool = True) -> tuple[list[float], float]:
    import torch

    def one(e):
        ids = torch.tensor([e.ids], dtype=torch.long, device=device)
        labels = torch.tensor([[t if s else -100 for t, s in zip(e.ids, e.scored)]], dtype=torch.long, device=device)
        return model(input_ids=ids, labels=labels).loss

    with torch.inference_mode():
        if warm:
            log("baseline: warm-up (1 example)")
            one(encoded[0])
            sync(device)
        log(f"baseline: scoring {len(encoded)} examples one at a time")
        started = time.perf_counter()
        losses = []
        for k, e in enumerate(encoded):
            losses.append(one(e))
            if (k + 1) % max(1, len(encoded) // 4) == 0:
                log(f"  baseline {k + 1}/{len(encoded)}  {time.perf_counter() - started:.1f}s")
        sync(device)
        seconds = time.perf_counter() - started
        means = [float(x) for x in losses]  # reading values after the clock: no per-example sync on CUDA
    return means, seconds


# ---------------------------------------------------------------- main


MATRIX_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                 "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention")


def profile(run) -> dict:
    """One more call of ``run()`` under torch.profiler: the share of operator time in matrix products and in
    attention, and the ten largest operators. Operators are counted on the calling thread only, so the engine is
    profiled whole only with ``--threads 1`` (with more, its scoring workers run rows on threads of their own)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _, seconds = run()
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_us.values()) or 1
    top = sorted(self_us.items(), key=lambda kv: -kv[1])[:10]
    return {"s": round(seconds, 3),
            "matmul_share": round(sum(self_us.get(k, 0) for k in MATRIX_OPS) / total, 3),
            "attention_share": round(sum(self_us.get(k, 0) for k in ATTENTION_OPS) / total, 3),
            "top": {k: round(v / total, 3) for k, v in top}}  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="model name for scoring.models.loading.resolve (default smollm2-135m)")
    parser.add_argument("--n", type=int, default=64, help="examples (default 64)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--data", default=None, help="JSONL (default: GSM8K train from ../shared/data)")
    parser.add_argument("--random-weights", default=None, metavar="CONFIG_NAME_OR_SIZE",
                        help=f"random-weight model: one of {sorted(RANDOM_CONFIGS)} or a config path / hub id")
    parser.add_argument("--batch-tokens", type=int, default=None, help="default 8192 on CPU, 65536 on CUDA")
    parser.add_argument("--head-rows", type=int, default=None, help="default: PassConfig.head_rows")
    parser.add_argument("--device", default=None, help="default: scoring.models.loading.pick_device()")
    parser.add_argument("--dtype", default="auto", help="engine dtype: auto, bf16, fp16, fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cache", default=None, help="cache folder (default $DAVIR_CACHE or <repo>/cache)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    parser.add_argument("--compile", action="store_true",
                        help="GPU: torch.compile the engine's decoder layers (PassConfig.compile; the warm-up compiles)")
    parser.add_argument("--pack", choices=["auto", "on", "off"], default="auto",
                        help="packed rows (PassConfig.pack; 'on' packs on a GPU too, through varlen flash attention)")
    parser.add_argument("--kernels", choices=["auto", "off"], default="auto",
                        help="CPU: the engine's fused bf16 kernels (PassConfig.kernels; 'off': transformers' layers)")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed rounds, one more of each way under torch.profiler (use --threads 1)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of (baseline, engine), alternated; each way's best time is reported")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM

    from scoring.models.formatting import encode
    from scoring.models.loading import dtype_name, load_model, load_tokenizer, pick_device, pick_dtype, resolve
    from scoring.models.precision import cpu_bf16, cpu_info
    from scoring.passes.engine import PassConfig, default_batch_tokens, uses_kernels, uses_packing
    from scoring.store.cache import Cache

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or pick_device()
    cache = Cache(args.cache or os.environ.get("DAVIR_CACHE") or REPO / "cache")
    engine_dtype = pick_dtype(device, args.dtype, cache.root)
    batch_tokens = args.batch_tokens or default_batch_tokens(device)
    load_avg = os.getloadavg()
    log(f"device {device_label(device)}, engine dtype {dtype_name(engine_dtype)}, load average {load_avg[0]:.2f}")

    t0 = time.perf_counter()
    ref = resolve(args.model, cache)  # converts the embedded GGUF once into the cache
    tokenizer = load_tokenizer(ref)
    log(f"model {ref.name} at {ref.path} ({time.perf_counter() - t0:.1f}s)")

    data = Path(args.data) if args.data else default_data()
    conversations = read_examples(data, args.n)
    encoded_all = [encode(tokenizer, m, args.max_length) for m in conversations]
    encoded = [e for e in encoded_all if e.n_response_tokens > 0]  # what both ways actually score
    if not encoded:
        raise SystemExit("no example has a scored token within --max-length")
    tokens = sum(len(e.ids) for e in encoded)
    lengths = sorted(len(e.ids) for e in encoded)
    log(f"{len(encoded)} examples from {data} ({len(encoded_all) - len(encoded)} with nothing scored), "
        f"{tokens} tokens, length min/median/max {lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}")

    # Baseline model: what from_pretrained gives by default (fp32 here), or the random-weight model in fp32.
    if args.random_weights:
        config = random_config(args.random_weights, tokenizer)
        torch.manual_seed(args.seed)
        baseline_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model_name = f"random:{args.random_weights}"
    else:
        baseline_model = AutoModelForCausalLM.from_pretrained(ref.path)
        model_name = ref.name
    baseline_model = baseline_model.to(device).eval()
    params = sum(p.numel() for p in baseline_model.parameters())
    baseline_dtype = next(baseline_model.parameters()).dtype
    log(f"{model_name}: {params / 1e6:.1f}M parameters, baseline dtype {dtype_name(baseline_dtype)}")

    # Engine model: the same weights in the engine's dtype, loaded the way the scoring worker loads them.
    if args.random_weights:
        engine_model = copy.deepcopy(baseline_model).to(engine_dtype)
    else:
        engine_model = load_model(ref, device, engine_dtype)
    pass_config = PassConfig(max_length=args.max_length, batch_tokens=batch_tokens, head_rows=args.head_rows or PassConfig.head_rows,
                             alone=False, embed=False, compile=args.compile, kernels=args.kernels, pack=args.pack)  # fmt: skip

    # Alternate the two ways so both see the same background load; keep each way's best time.
    baseline_times, engine_times = [], []
    for repeat in range(args.repeats):
        if args.repeats > 1:
            log(f"round {repeat + 1}/{args.repeats}")
        baseline_means, seconds = run_baseline(baseline_model, encoded, device, warm=repeat == 0)
        baseline_times.append(seconds)
        log(f"baseline: {seconds:.2f}s, {tokens / seconds:.0f} tokens/s (load {os.getloadavg()[0]:.2f})")
        engine_means, seconds = run_engine(
            engine_model, encoded, pass_config, tokenizer.pad_token_id, device, warm=repeat == 0
        )
        engine_times.append(seconds)
        log(f"engine: {seconds:.2f}s, {tokens / seconds:.0f} tokens/s (load {os.getloadavg()[0]:.2f})")
    baseline_s, engine_s = min(baseline_times), min(engine_times)
    load_after = os.getloadavg()[0]

    packed = uses_packing(engine_model, pass_config, max(lengths))
    diffs = [abs(a - b) for a, b in zip(engine_means, baseline_means)]
    max_diff = max(diffs)
    peak = peak_flops(device)
    result = {
        "engine_tokens_per_s": round(tokens / engine_s, 1),
        "baseline_tokens_per_s": round(tokens / baseline_s, 1),
        "speedup": round(baseline_s / engine_s, 3),
        "mfu": round(2 * params * tokens / engine_s / peak, 4) if peak else None,
        "device": device_label(device),
        "n_examples": len(encoded),
        "tokens": tokens,
        "model": model_name,
        "params": params,
        "dtype_engine": dtype_name(engine_dtype),
        "cpu_model": cpu_info()[0],
        # on a CPU: why "auto" picked the engine's dtype (the bf16 probe's GFLOP/s and verdict, scoring/models/precision.py)
        "cpu_bf16": None if device.startswith("cuda") else cpu_bf16(cache.root),
        "dtype_baseline": dtype_name(baseline_dtype),
        "engine_s": round(engine_s, 3),
        "baseline_s": round(baseline_s, 3),
        "max_abs_diff_mean_loss": round(max_diff, 5) if math.isfinite(max_diff) else None,
        "mean_loss_engine": round(sum(engine_means) / len(engine_means), 4),
        "mean_loss_baseline": round(sum(baseline_means) / len(baseline_means), 4),
        "batch_tokens": batch_tokens,
        "packed": packed,
        "kernels": uses_kernels(engine_model, pass_config, packed),
        "max_length": args.max_length,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "baseline_s_all": [round(x, 3) for x in baseline_times],
        "engine_s_all": [round(x, 3) for x in engine_times],
        "load_avg_1m_before": round(load_avg[0], 2),
        "load_avg_1m_after": round(load_after, 2),
        "torch": torch.__version__,
        "compiled": args.compile,
        "pack": args.pack,
    }
    if args.profile:
        result["profile"] = {
            "baseline": profile(lambda: run_baseline(baseline_model, encoded, device, warm=False)),
            "engine": profile(lambda: run_engine(engine_model, encoded, pass_config, tokenizer.pad_token_id, device,
                                                 warm=False)),
        }  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
