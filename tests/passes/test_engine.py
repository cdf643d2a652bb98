"""The engine's losses equal transformers' own loss, batching changes nothing, and a stopped pass resumes exactly."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from scoring import schema
from scoring.models.formatting import encode
from scoring.models.loading import ModelRef, load_model, load_tokenizer
from scoring.passes.engine import PassConfig, default_batch_tokens, default_chunk_size, fingerprint_fields, micro_batches
from scoring.passes.engine import score_encoded
from scoring.passes.runner import INSTRUCTIONS, run_pass
from scoring.store.parts import done_ranges, read_pass

CONVS = [
    [{"role": "user", "content": f"What is {i} + {i * 7}?"}, {"role": "assistant", "content": f"{i} + {i * 7} = {i * 8}." * (1 + i % 4)}]
    for i in range(23)
]


def load(folder):
    ref = ModelRef(name="tiny", path=str(folder), fingerprint="x")
    return load_model(ref, "cpu"), load_tokenizer(ref)


def hf_mean_loss(model, e) -> float:
    ids = torch.tensor([e.ids])
    labels = ids.clone()
    labels[0, ~torch.tensor(e.scored)] = -100
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_plain_model"])
def test_engine_loss_equals_transformers_loss(request, fixture):
    model, tokenizer = load(request.getfixturevalue(fixture))
    encoded = [encode(tokenizer, c, 256) for c in CONVS]
    rows = score_encoded(model, encoded, PassConfig(), tokenizer.pad_token_id)
    for e, row in zip(encoded, rows):
        assert row["n_response_tokens"] == e.n_response_tokens
        assert row["loss_sum"] / row["n_response_tokens"] == pytest.approx(hf_mean_loss(model, e), rel=1e-5)
        per_token = schema.decode_f16(row["token_losses"])
        assert len(per_token) == e.n_response_tokens
        assert per_token.astype(float).sum() == pytest.approx(row["loss_sum"], rel=1e-2)
        assert len(schema.decode_f16(row["embedding"])) == model.config.hidden_size


def test_alone_loss_is_the_response_without_its_prompt(tiny_model):
    model, tokenizer = load(tiny_model)
    e = encode(tokenizer, CONVS[3], 256)
    row = score_encoded(model, [e], PassConfig(), tokenizer.pad_token_id)[0]
    ids = torch.tensor([e.alone_ids])
    with torch.no_grad():
        alone = model(input_ids=ids, labels=ids).loss.item()  # every token after the start token
    assert row["alone_loss_sum"] / row["n_response_tokens"] == pytest.approx(alone, rel=1e-5)


def test_batching_changes_nothing_but_low_order_bits(tiny_model):
    model, tokenizer = load(tiny_model)
    encoded = [encode(tokenizer, c, 256) for c in CONVS]
    together = score_encoded(model, encoded, PassConfig(batch_tokens=4096), tokenizer.pad_token_id)
    alone = [score_encoded(model, [e], PassConfig(), tokenizer.pad_token_id)[0] for e in encoded]
    for a, b in zip(together, alone):
        assert a["loss_sum"] == pytest.approx(b["loss_sum"], rel=1e-5)
        assert a["alone_loss_sum"] == pytest.approx(b["alone_loss_sum"], rel=1e-5)


def test_examples_with_nothing_to_score_get_nan_not_an_error(tiny_model):
    model, tokenizer = load(tiny_model)
    e = encode(tokenizer, CONVS[0], 4)  # everything scored falls past the cut
    row = score_encoded(model, [e], PassConfig(), tokenizer.pad_token_id)[0]
    assert np.isnan(row["loss_sum"]) and row["n_response_tokens"] == 0 and row["flag"] == "too_long"


def test_micro_batches_respect_the_token_budget_and_cover_everything():
    lengths = [5, 90, 12, 40, 40, 7, 300, 64]
    batches = list(micro_batches(lengths, 128))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 128


def examples_frame(n: int) -> pd.DataFrame:
    convs = (CONVS * (n // len(CONVS) + 1))[:n]
    return pd.DataFrame({"idx": range(n), "id": [f"ex{i}" for i in range(n)], "messages": [json.dumps(c) for c in convs]})


def test_a_stopped_pass_resumes_to_identical_numbers(tiny_model, cache):
    model, tokenizer = load(tiny_model)
    frame = examples_frame(40)
    config = PassConfig(chunk_size=6, max_length=128)
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    stopped = run_pass(cache, "interrupted", INSTRUCTIONS, model, tokenizer, frame, config, should_stop=stop_after_three)
    assert stopped is False
    assert len(done_ranges(cache.parts_dir("interrupted"))) == 3
    assert run_pass(cache, "interrupted", INSTRUCTIONS, model, tokenizer, frame, config) is True
    assert run_pass(cache, "straight", INSTRUCTIONS, model, tokenizer, frame, config) is True
    a = read_pass(cache, "interrupted", ["idx", "id", "loss_sum", "alone_loss_sum", "token_losses"])
    b = read_pass(cache, "straight", ["idx", "id", "loss_sum", "alone_loss_sum", "token_losses"])
    assert a["idx"].tolist() == list(range(40))  # no duplicate, none missing
    pd.testing.assert_frame_equal(a, b)  # bit-identical


def test_scoring_order_is_shuffled_so_partial_results_are_a_sample(tiny_model, cache):
    model, tokenizer = load(tiny_model)
    frame = examples_frame(40)
    run_pass(cache, "k", INSTRUCTIONS, model, tokenizer, frame, PassConfig(chunk_size=10),
             should_stop=iter([False, True]).__next__)
    first = sorted(read_pass(cache, "k", ["idx"])["idx"])
    assert len(first) == 10 and first != list(range(10))


def test_a_half_written_part_left_by_a_dead_worker_is_cleaned_up(tiny_model, cache):
    model, tokenizer = load(tiny_model)
    frame = examples_frame(12)
    parts = cache.parts_dir("k")
    parts.mkdir(parents=True)
    stale = parts / ".part-000000000-000000006.parquet.deadbeef.tmp"  # what a kill -9 mid-write leaves
    stale.write_bytes(b"PAR1 half a file")
    assert run_pass(cache, "k", INSTRUCTIONS, model, tokenizer, frame, PassConfig(chunk_size=6, max_length=128)) is True
    assert not stale.exists() and not list(parts.glob(".*.tmp"))
    assert read_pass(cache, "k", ["idx"])["idx"].tolist() == list(range(12))


def test_compile_is_keyed_only_when_asked_and_left_alone_on_a_cpu(tiny_model):
    """``compile`` joins the pass key only when on (older keys still match); a CPU pass ignores it."""
    from scoring.cli import build_parser

    assert "compile" not in fingerprint_fields(PassConfig())
    assert fingerprint_fields(PassConfig(compile=True))["compile"] is True
    assert build_parser().parse_args(["score", "x", "--compile"]).compile is True
    assert build_parser().parse_args(["score", "x"]).batch_tokens is None  # then the device's default:
    assert (default_batch_tokens("cpu"), default_batch_tokens("cuda:0")) == (PassConfig().batch_tokens, 65536)
    model, tokenizer = load(tiny_model)
    encoded = [encode(tokenizer, c, 256) for c in CONVS[:6]]
    asked = score_encoded(model, encoded, PassConfig(compile=True), tokenizer.pad_token_id)
    plain = score_encoded(model, encoded, PassConfig(), tokenizer.pad_token_id)
    assert not getattr(model, "_davir_compiled", False)
    assert [r["loss_sum"] for r in asked] == [r["loss_sum"] for r in plain]


def test_a_chunk_holds_as_many_micro_batches_on_every_device():
    """64 examples per chunk at the CPU's 8,192 batch tokens (so CPU pass keys are unchanged), in proportion above
    it: a GPU's 65,536 gets 512, where 64 would fill a fifth of one micro-batch; never fewer than 64."""
    from scoring.jobs.requests import pass_config_for

    assert default_chunk_size(PassConfig().batch_tokens) == PassConfig().chunk_size == 64
    assert (default_chunk_size(65536), default_chunk_size(16384), default_chunk_size(1024)) == (512, 128, 64)
    for kind in ("sft", "pair"):
        assert pass_config_for(kind).chunk_size == 64  # this CPU's default
        assert pass_config_for(kind, batch_tokens=65536).chunk_size == 512
        assert pass_config_for(kind) == pass_config_for(kind, batch_tokens=8192)
