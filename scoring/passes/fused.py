"""The trunk of a Llama-style model over one packed row, on a CPU in bf16, with fused element-wise kernels.

The same computation as the model's own forward (scoring/passes/packing.py's packed row, same modules, same attention
function), with every step outside the matrix products and attention done by a kernel of scoring/passes/cpu_kernels.py:
the residual add fused with the next RMSNorm, rotary embeddings written straight into the head-major layout
attention reads, and SiLU x up in one pass. The projections stay the model's own ``nn.Linear`` modules (PEFT
wrappers included), so AMX runs them as before.

Used only where it computes what the model defines: a decoder stack of the Llama family (Llama, Mistral, Qwen2;
SmolLM2 is a Llama) with RMSNorm, SiLU gating, rotary embeddings and no extra norms, all in bf16 on a CPU.
Anything else keeps the model's own forward.
"""
from __future__ import annotations

from scoring.passes.attention import packed_attention

FAMILIES = ("llama", "mistral", "qwen2")


def supports(model, trunk) -> bool:
    """True when ``packed_trunk(trunk, ...)`` computes the forward of ``model`` (whose decoder ``trunk`` is): a
    supported family, bf16 on a CPU."""
    import torch

    config = model.config
    if getattr(config, "model_type", None) not in FAMILIES or getattr(config, "hidden_act", None) != "silu":
        return False
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.bfloat16:
        return False
    layers = getattr(trunk, "layers", None)
    if layers is None or not all(hasattr(trunk, name) for name in ("embed_tokens", "rotary_emb", "norm")):
        return False
    if any(hasattr(layer.self_attn, "q_norm") for layer in layers):  # a Qwen3-like layer: more than we compute
        return False
    inv_freq = getattr(trunk.rotary_emb, "inv_freq", None)
    if inv_freq is None or 2 * inv_freq.numel() != layers[0].self_attn.head_dim:  # partial rotary: not ours
        return False
    try:
        import numba  # noqa: F401  (a dependency of umap-learn; its absence just means the model's own forward)
    except ImportError:
        return False
    return True


def packed_trunk(trunk, ids, positions, pack):
    """Final-norm hidden states (N, H) bf16 of a packed row: ids, positions (N,) long; ``pack`` as in attention.py."""
    import torch

    from scoring.passes import cpu_kernels as kernels  # compiled with numba on first use

    u16 = kernels.as_u16
    n = ids.shape[0]
    residual = trunk.embed_tokens(ids)  # (N, H): a fresh tensor, updated in place from here on
    cos, sin = trunk.rotary_emb(residual[None], positions[None])  # (1, N, D) each
    cos, sin = u16(cos[0].contiguous()), u16(sin[0].contiguous())
    normed = torch.empty_like(residual)
    layers = trunk.layers[: trunk.config.num_hidden_layers]
    norms = [layer.input_layernorm for layer in layers] + [trunk.norm]

    def norm_args(norm):
        return norm.weight.detach().float().numpy(), float(norm.variance_epsilon)

    kernels.rms_norm(u16(residual), *norm_args(norms[0]), u16(normed))
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        d = attn.head_dim
        q, k, v = attn.q_proj(normed), attn.k_proj(normed), attn.v_proj(normed)  # (N, heads x D)
        heads_q, heads_kv = q.shape[1] // d, k.shape[1] // d
        query = q.new_empty(1, heads_q, n, d)
        key = k.new_empty(1, heads_kv, n, d)
        kernels.rotary(u16(q), cos, sin, heads_q, u16(query[0]))
        kernels.rotary(u16(k), cos, sin, heads_kv, u16(key[0]))
        value = v.view(1, n, heads_kv, d).transpose(1, 2)
        out, _ = packed_attention(attn, query, key, value, None, scaling=attn.scaling, davir_pack=pack)  # (1, N, Hq, D)
        delta = attn.o_proj(out.view(n, heads_q * d))
        kernels.add_rms_norm(u16(residual), u16(delta), *norm_args(layer.post_attention_layernorm), u16(normed))
        mlp = layer.mlp
        gate, up = mlp.gate_proj(normed), mlp.up_proj(normed)
        kernels.silu_mul(u16(gate), u16(up), u16(gate))
        delta = mlp.down_proj(gate)
        kernels.add_rms_norm(u16(residual), u16(delta), *norm_args(norms[i + 1]), u16(normed))
    return normed
