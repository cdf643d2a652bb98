"""A pass tokenises its next chunk on a thread while the current one is scored: the same parts as tokenising each
chunk just before its forward, errors surface in the pass, and a chunk tokenised ahead that another worker takes is
dropped, never written twice."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import pandas as pd
import pytest

from scoring.passes.engine import PassConfig
from scoring.passes.runner import INSTRUCTIONS, chunk_ranges, run_pass
from scoring.store.claims import try_claim
from scoring.store.parts import claim_path, done_ranges, read_pass
from tests.passes.test_engine import examples_frame, load

COLUMNS = ["idx", "id", "loss_sum", "alone_loss_sum", "token_ids", "token_losses", "flag"]
CONFIG = PassConfig(chunk_size=6, max_length=128)


def recording(calls: list, fail_at: int | None = None):
    """INSTRUCTIONS whose encode records (thread name, the chunk's first idx), raising for a chunk holding idx
    ``fail_at``."""

    def encode(tokenizer, examples, config):
        idxs = [int(e["idx"]) for e in examples]
        calls.append((threading.current_thread().name, idxs[0]))
        if fail_at in idxs:
            raise ValueError(f"cannot tokenise example {fail_at}")
        return INSTRUCTIONS.encode(tokenizer, examples, config)

    return replace(INSTRUCTIONS, encode=encode)


def tokenising_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("davir-tokenise")]


def test_prefetch_tokenises_ahead_on_its_thread_and_changes_no_number(tiny_model, cache):
    model, tokenizer = load(tiny_model)
    frame = examples_frame(40)
    ahead, inline = [], []
    assert run_pass(cache, "ahead", recording(ahead), model, tokenizer, frame, CONFIG) is True
    assert run_pass(cache, "inline", recording(inline), model, tokenizer, frame, CONFIG, prefetch=False) is True
    pd.testing.assert_frame_equal(read_pass(cache, "ahead", COLUMNS), read_pass(cache, "inline", COLUMNS))
    n_chunks = len(chunk_ranges(40, 6))
    assert [name for name, _ in inline] == ["MainThread"] * n_chunks
    assert ahead[0][0] == "MainThread"  # the first chunk has nothing to hide behind
    assert all(name.startswith("davir-tokenise") for name, _ in ahead[1:]) and len(ahead) == n_chunks
    assert [first for _, first in ahead] == [first for _, first in inline]  # each chunk tokenised once, in order


def test_an_error_tokenising_ahead_stops_the_pass_after_the_chunks_before_it(tiny_model, cache):
    model, tokenizer = load(tiny_model)
    frame = examples_frame(40)
    order_calls: list = []
    run_pass(cache, "order", recording(order_calls), model, tokenizer, frame, CONFIG, prefetch=False)
    third_chunk_first = order_calls[2][1]  # an idx of the third chunk of the shuffled order
    calls: list = []
    with pytest.raises(ValueError, match=f"cannot tokenise example {third_chunk_first}"):
        run_pass(cache, "k", recording(calls, fail_at=third_chunk_first), model, tokenizer, frame, CONFIG)
    assert len(done_ranges(cache.parts_dir("k"))) == 2  # the chunk being scored while the third failed is kept
    assert calls[2][0].startswith("davir-tokenise")  # it failed on the thread and was raised in the pass
    deadline = time.monotonic() + 5
    while tokenising_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tokenising_threads()  # the pass shut its thread down


def test_a_chunk_tokenised_ahead_that_another_worker_holds_is_dropped(tiny_model, cache):
    model, tokenizer = load(tiny_model)
    frame = examples_frame(24)
    ranges = chunk_ranges(24, 6)
    parts = cache.parts_dir("k")
    parts.mkdir(parents=True)
    held = try_claim(claim_path(parts, *ranges[1]))  # "another worker" holds the second chunk
    polls = {"n": 0}

    def release_later() -> bool:  # the other worker gives the chunk up once the rest is done
        polls["n"] += 1
        if polls["n"] == len(ranges):
            held.release()
        return False

    calls: list = []
    assert run_pass(cache, "k", recording(calls), model, tokenizer, frame, CONFIG, should_stop=release_later) is True
    assert run_pass(cache, "straight", INSTRUCTIONS, model, tokenizer, frame, CONFIG, prefetch=False) is True
    pd.testing.assert_frame_equal(read_pass(cache, "k", COLUMNS), read_pass(cache, "straight", COLUMNS))
    firsts = [first for _, first in calls]
    assert len(firsts) == len(ranges) + 1  # the held chunk: tokenised ahead, dropped, tokenised again when taken
    assert len(set(firsts)) == len(ranges)
    assert sorted(done_ranges(parts)) == ranges
