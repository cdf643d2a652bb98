"""Fused bf16 kernels for the element-wise steps of a Llama-style layer on a CPU (numba, compiled once per machine).

Why: in eager PyTorch each step of a layer outside its matrix products -- RMSNorm with its fp32 round trip,
rotary embeddings, SiLU x up, the residual adds -- is a separate pass over memory, several of them per step, and on
a CPU with AMX those passes took more time than the matrix products of SmolLM2-135M. Each kernel here does one
step in a single pass over its rows.

Numerics: the kernels round to bf16 where transformers' modules do (after each bf16 operation), so they reproduce
the eager bf16 results up to the order of the RMSNorm sum and the last bit of ``exp`` in SiLU: a few bf16 units in
the last place on a handful of elements, below the spread bf16 already has between batch sizes.

Tensors are passed as ``uint16`` numpy views of bf16 storage (``as_u16``); bf16 -> fp32 is a 16-bit shift and
fp32 -> bf16 rounds to nearest even, both done on uint32 views of small per-row fp32 buffers so LLVM vectorises
every loop. ``nogil``: the scoring worker threads run kernels side by side.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_OPTS = dict(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"}, error_model="numpy",
             boundscheck=False)  # fmt: skip


@njit(**_OPTS)
def _scratch(n):
    """A row buffer of ``n`` fp32 values: (its bits as uint32, the same memory as float32)."""
    bits = np.empty(n, np.uint32)
    return bits, bits.view(np.float32)


@njit(**_OPTS)
def _load(src, bits):
    """bf16 bits (uint16) -> fp32 bits (uint32) in ``bits``."""
    for j in range(src.shape[0]):
        bits[j] = np.uint32(src[j]) << np.uint32(16)


@njit(**_OPTS)
def _round(bits):
    """fp32 bits in place -> the nearest bf16 (ties to even), still as fp32 bits."""
    for j in range(bits.shape[0]):
        u = bits[j]
        bits[j] = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)


@njit(**_OPTS)
def _store(bits, dst):
    """fp32 bits already rounded to bf16 -> bf16 bits."""
    for j in range(bits.shape[0]):
        dst[j] = np.uint16(bits[j] >> np.uint32(16))


@njit(**_OPTS)
def _exp_neg(x, out, bits):
    """out = exp(-x) for fp32 ``x`` (a Cody-Waite reduction and a degree-6 polynomial: ~1 ulp, vectorisable)."""
    for j in range(x.shape[0]):
        v = -x[j]
        v = v if v > np.float32(-87.0) else np.float32(-87.0)  # selects, not min / max: those do not vectorise
        v = v if v < np.float32(88.0) else np.float32(88.0)
        k = np.floor(v * np.float32(1.4426950408889634) + np.float32(0.5))
        r = v - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        out[j] = (p * r * r + r) + np.float32(1.0)
        bits[j] = np.uint32(np.int32(k) + np.int32(127)) << np.uint32(23)  # 2**k


@njit(**_OPTS)
def rms_norm(x, weight, eps, out):
    """out = weight * bf16(x * rsqrt(mean(x^2) + eps)), x (N, H) -> out (N, H); weight (H,) fp32 holding bf16
    values. As LlamaRMSNorm: statistics in fp32, the normalised row rounded to bf16, then times the weight."""
    n, h = x.shape
    bits, f = _scratch(h)
    for i in range(n):
        _load(x[i], bits)
        _normalise(f, bits, weight, eps)
        _store(bits, out[i])


@njit(**_OPTS)
def add_rms_norm(residual, delta, weight, eps, out):
    """residual = bf16(residual + delta) in place, then out = rms_norm(residual): a layer's residual add fused with
    the next norm. residual, delta, out (N, H)."""
    n, h = residual.shape
    bits, f = _scratch(h)
    other, g = _scratch(h)
    for i in range(n):
        _load(residual[i], bits)
        _load(delta[i], other)
        for j in range(h):
            f[j] = f[j] + g[j]
        _round(bits)
        _store(bits, residual[i])
        _normalise(f, bits, weight, eps)
        _store(bits, out[i])


@njit(**_OPTS)
def _normalise(f, bits, weight, eps):
    h = f.shape[0]
    total = np.float32(0.0)
    for j in range(h):
        total += f[j] * f[j]
    scale = np.float32(1.0) / np.sqrt(total / np.float32(h) + np.float32(eps))
    for j in range(h):
        f[j] = f[j] * scale
    _round(bits)
    for j in range(h):
        f[j] = f[j] * weight[j]
    _round(bits)


@njit(**_OPTS)
def silu_mul(gate, up, out):
    """out = bf16(bf16(silu(gate)) * up), all (N, I). ``out`` may be ``gate``."""
    n, width = gate.shape
    bits, f = _scratch(width)
    other, g = _scratch(width)
    e = np.empty(width, np.float32)
    scale, s = _scratch(width)
    for i in range(n):
        _load(gate[i], bits)
        _exp_neg(f, e, scale)
        for j in range(width):
            f[j] = f[j] / (np.float32(1.0) + e[j] * s[j])
        _round(bits)
        _load(up[i], other)
        for j in range(width):
            f[j] = f[j] * g[j]
        _round(bits)
        _store(bits, out[i])


@njit(**_OPTS)
def rotary(x, cos, sin, heads, out):
    """Rotary embeddings, as transformers' apply_rotary_pos_emb in bf16, and a transpose to head-major.

    x (N, heads * D) straight from the projection, cos / sin (N, D) bf16 bits, out (heads, N, D).
    out = bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)), rotate_half(x) = (-x2, x1).
    """
    n = x.shape[0]
    d = cos.shape[1]
    half = d // 2
    row, xf = _scratch(x.shape[1])
    cb, c = _scratch(d)
    sb, s = _scratch(d)
    ab, a = _scratch(d)
    bb, b = _scratch(d)
    for i in range(n):
        _load(x[i], row)
        _load(cos[i], cb)
        _load(sin[i], sb)
        for h in range(heads):
            base = h * d
            for j in range(half):
                a[j] = xf[base + j] * c[j]
                a[half + j] = xf[base + half + j] * c[half + j]
                b[j] = -xf[base + half + j] * s[j]
                b[half + j] = xf[base + j] * s[half + j]
            _round(ab)
            _round(bb)
            for j in range(d):
                a[j] = a[j] + b[j]
            _round(ab)
            _store(ab, out[h, i])


@njit(**_OPTS)
def _max(bits):
    """The largest of the finite fp32 values held in ``bits``, as an integer maximum (a float maximum does not
    vectorise): flipping the magnitude bits of negatives makes signed-int order equal float order."""
    signed = bits.view(np.int32)
    top = np.int32(-2147483647 - 1)
    for j in range(signed.shape[0]):
        x = signed[j]
        top = max(top, x ^ ((x >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    top = top ^ ((top >> np.int32(31)) & np.int32(0x7FFFFFFF))
    return np.array([top], np.int32).view(np.float32)[0]


@njit(**_OPTS)
def cross_entropy(logits, targets, out):
    """out[i] = logsumexp(logits[i]) - logits[i, targets[i]] in fp32, logits (N, V) bf16 bits: the NLL without an
    fp32 copy of the logits, in two passes over each row held in cache."""
    n, v = logits.shape
    bits, f = _scratch(v)
    e = np.empty(v, np.float32)
    scale, s = _scratch(v)
    for i in range(n):
        _load(logits[i], bits)
        top = _max(bits)
        target = f[targets[i]]
        for j in range(v):
            f[j] = top - f[j]
        _exp_neg(f, e, scale)
        total = np.float32(0.0)
        for j in range(v):
            total += e[j] * s[j]
        out[i] = np.log(total) + top - target


def as_u16(tensor) -> np.ndarray:
    """A zero-copy uint16 numpy view of a contiguous bf16 CPU tensor."""
    import torch

    return tensor.view(torch.int16).numpy().view(np.uint16)
