"""Stage 3, passes: a model over a dataset, as per-token losses in immutable Parquet parts.

- :mod:`~scoring.passes.engine`: the forward math (no padding, LM head only where a token is scored, bf16)
- :mod:`~scoring.passes.head`: the LM head's loss a slice at a time, in the backward pass too (training)
- :mod:`~scoring.passes.packing`, :mod:`~scoring.passes.attention`: sequences packed side by side in one row,
  attention kept inside each
- :mod:`~scoring.passes.fused`, :mod:`~scoring.passes.cpu_kernels`: fused bf16 CPU kernels for a Llama-style trunk
- :mod:`~scoring.passes.runner`: ONE chunked, resumable, multi-worker pass runner for both dataset kinds
- :mod:`~scoring.passes.generate`: greedy answers and whether they contain the computed one (evaluation accuracy)
"""
