"""The fused CPU kernels (scoring/passes/cpu_kernels.py) against the eager operations they replace, one thread.

Shapes are SmolLM2-135M's (hidden 576, MLP 1,536, 9 query / 3 key-value heads of 64, vocabulary 49,152) over a
7,200-token packed row; the log-softmax over 2,048 scored positions. Each figure is the best of ``--repeats``
calls, in milliseconds. Prints one JSON object on its last line::

    {"rms_norm": {"kernel_ms": .., "eager_ms": .., "speedup": ..}, "add_rms_norm": {..}, "rotary": {..},
     "silu_mul": {..}, "cross_entropy": {..}, "threads": 1}

Usage: python benchmarks/kernels.py [--rows N] [--repeats R]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HIDDEN, MLP, HEADS, KV_HEADS, HEAD_DIM, VOCAB, EPS = 576, 1536, 9, 3, 64, 49152, 1e-5


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and the kernel's compile on a machine that has not cached it)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(min(times) * 1e3, 2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=7200, help="tokens in the packed row (default 7200)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    from scoring.passes import cpu_kernels as k

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n, u16 = args.rows, k.as_u16
    x, delta = torch.randn(n, HIDDEN).bfloat16(), torch.randn(n, HIDDEN).bfloat16()
    norm = LlamaRMSNorm(HIDDEN, eps=EPS).bfloat16()
    weight = norm.weight.detach().float().numpy()
    out = torch.empty_like(x)
    gate, up = torch.randn(n, MLP).bfloat16(), torch.randn(n, MLP).bfloat16()
    gated = torch.empty_like(gate)
    q, kv = torch.randn(n, HEADS * HEAD_DIM).bfloat16(), torch.randn(n, KV_HEADS * HEAD_DIM).bfloat16()
    angles = (torch.arange(n) % 300)[:, None].float() / 10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    cos, sin = (torch.cat([angles, angles], -1).cos().bfloat16(), torch.cat([angles, angles], -1).sin().bfloat16())
    q_out, kv_out = torch.empty(HEADS, n, HEAD_DIM, dtype=torch.bfloat16), torch.empty(KV_HEADS, n, HEAD_DIM,
                                                                                       dtype=torch.bfloat16)  # fmt: skip
    logits, targets = (torch.randn(2048, VOCAB) * 3).bfloat16(), torch.randint(0, VOCAB, (2048,))
    losses = np.empty(2048, np.float32)

    def eager_rotary():
        heads = q.view(1, n, HEADS, HEAD_DIM).transpose(1, 2), kv.view(1, n, KV_HEADS, HEAD_DIM).transpose(1, 2)
        return apply_rotary_pos_emb(*heads, cos[None], sin[None])

    def kernel_rotary():
        k.rotary(u16(q), u16(cos), u16(sin), HEADS, u16(q_out))
        k.rotary(u16(kv), u16(cos), u16(sin), KV_HEADS, u16(kv_out))

    residual = x.clone()
    pairs = {
        "rms_norm": (lambda: k.rms_norm(u16(x), weight, EPS, u16(out)), lambda: norm(x)),
        "add_rms_norm": (lambda: k.add_rms_norm(u16(residual), u16(delta), weight, EPS, u16(out)),
                         lambda: norm(x + delta)),
        "rotary": (kernel_rotary, eager_rotary),
        "silu_mul": (lambda: k.silu_mul(u16(gate), u16(up), u16(gated)), lambda: F.silu(gate) * up),
        "cross_entropy": (lambda: k.cross_entropy(u16(logits), targets.numpy(), losses),
                          lambda: F.cross_entropy(logits.float(), targets, reduction="none")),
    }  # fmt: skip
    result: dict = {}
    with torch.inference_mode():
        for name, (kernel, eager) in pairs.items():
            kernel_ms, eager_ms = best_ms(kernel, args.repeats), best_ms(eager, args.repeats)
            result[name] = {"kernel_ms": kernel_ms, "eager_ms": eager_ms, "speedup": round(eager_ms / kernel_ms, 2)}
            print(f"{name}: kernel {kernel_ms} ms, eager {eager_ms} ms", file=sys.stderr)
    result.update(threads=1, rows=n, torch=torch.__version__)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
