"""GPU paths: bf16 scoring on CUDA agrees with fp32. Skipped cleanly where torch sees no CUDA device."""
from __future__ import annotations

import pytest
import torch

from scoring.formatting import encode
from scoring.losses import PassConfig, score_encoded
from scoring.models import ModelRef, load_model, load_tokenizer, pick_dtype

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_on_cuda_matches_fp32(tiny_model):
    ref = ModelRef("tiny", str(tiny_model), "x")
    tokenizer = load_tokenizer(ref)
    convs = [[{"role": "user", "content": f"Add {i} and {i}."}, {"role": "assistant", "content": f"{2 * i}."}] for i in range(16)]
    encoded = [encode(tokenizer, c, 128) for c in convs]
    assert pick_dtype("cuda") in (torch.bfloat16, torch.float16)
    fast = score_encoded(load_model(ref, "cuda", pick_dtype("cuda")), encoded, PassConfig(), tokenizer.pad_token_id)
    exact = score_encoded(load_model(ref, "cpu"), encoded, PassConfig(), tokenizer.pad_token_id)
    for a, b in zip(fast, exact):
        assert a["loss_sum"] == pytest.approx(b["loss_sum"], rel=3e-2)
