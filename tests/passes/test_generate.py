"""Greedy answers: the prompt formatted as the passes format it, one reply per conversation whatever the batching;
and the answer check: whole tokens, numbers never inside longer numbers."""
from __future__ import annotations

import pytest

from scoring.models.formatting import encode
from scoring.passes.generate import answer_correct, greedy_answers, prompt_ids

CONVS = [
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Reverse the word planet."}],
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Sort the numbers 5, 2, 9 from smallest to largest, please, and say nothing else."}],
    [{"role": "user", "content": "Convert 3 km to meters."}],
]


# --------------------------------------------------------------------------- answer_correct


@pytest.mark.parametrize("generated, answer", [
    ("The capital is Paris.", "Paris"),
    ("paris", "Paris"),
    ("  It   is NEW\n delhi.", "New Delhi"),
    ("12 + 30 = 42.", "42"),
    ("Answer: 42", "42"),
    ("(42)", "42"),
    ("42, then 43", "42"),
    ("5 - 12 = -7", "12"),
    ("Sorted: 3, 17, 42.", "3, 17, 42"),
    ("3,17,42", "3, 17, 42"),
    ("The reversed word is 'tenalp'.", "tenalp"),
    ("It will be monday", "Monday"),
])  # fmt: skip
def test_answer_stated(generated, answer):
    assert answer_correct(generated, answer)


@pytest.mark.parametrize("generated, answer", [
    ("123", "12"),
    ("1.25", "12"),
    ("12.5", "12"),
    ("112", "12"),
    ("1.12", "12"),
    ("12,000", "12"),
    ("3,012", "12"),
    ("-12", "12"),
    ("the 12th", "12"),
    ("Parisian food", "Paris"),
    ("recalled", "called"),
    ("42, 17, 3", "3, 17, 42"),
    ("13, 17, 42", "3, 17, 42"),
    ("Paris", "Berlin"),
    ("", "12"),
    ("anything", ""),
    ("anything", "   "),
])  # fmt: skip
def test_answer_not_stated(generated, answer):
    assert not answer_correct(generated, answer)


# --------------------------------------------------------------------------- prompts


def load(folder, sharp: bool = False):
    """The tiny model and its tokenizer. ``sharp``: its matrices redrawn with a larger spread (seeded): the saved
    model's near-zero logits make it repeat one token whatever the prompt, which would hide a batching bug."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    if sharp:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model, AutoTokenizer.from_pretrained(folder)


def test_chat_prompt_is_the_generation_prompt(tiny_model):
    _, tokenizer = load(tiny_model)
    for conv in CONVS:
        turns = [m for m in conv if m["role"] != "assistant"]
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|im_start|>assistant\n")
        assert prompt_ids(tokenizer, conv) == tokenizer.encode(text, add_special_tokens=False)
        # the same ids the passes give the prompt when they score a reply to it
        scored = encode(tokenizer, [*turns, {"role": "assistant", "content": "Paris."}], 1024)
        assert prompt_ids(tokenizer, conv) == scored.ids[: scored.n_prompt_tokens]


def test_plain_prompt_ends_at_the_response_header(tiny_plain_model):
    _, tokenizer = load(tiny_plain_model)
    ids = prompt_ids(tokenizer, CONVS[1])
    assert tokenizer.decode(ids) == ("<|endoftext|>### System:\nAnswer briefly.\n\n"
                                     "### Instruction:\nReverse the word planet.\n\n### Response:\n")  # fmt: skip
    scored = encode(tokenizer, [*CONVS[1], {"role": "assistant", "content": "tenalp"}], 1024)
    assert ids == scored.ids[: scored.n_prompt_tokens]
    assert prompt_ids(tokenizer, CONVS[1], max_length=5) == ids[-5:]  # cut at the left: the header stays


# --------------------------------------------------------------------------- greedy_answers


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_plain_model"])
def test_greedy_answers_one_per_conversation_whatever_the_batching(request, fixture, cpu_one_thread):
    model, tokenizer = load(request.getfixturevalue(fixture), sharp=True)
    model.train()
    first = greedy_answers(model, tokenizer, CONVS, max_new_tokens=8, batch_size=4)
    assert model.training  # the caller's mode is restored
    assert len(first) == len(CONVS) and all(isinstance(t, str) for t in first)
    assert len(set(first)) == len(CONVS)  # each prompt gets its own reply: rows are not mixed up
    assert greedy_answers(model, tokenizer, CONVS, max_new_tokens=8, batch_size=4) == first
    assert greedy_answers(model, tokenizer, CONVS, max_new_tokens=8, batch_size=1) == first
    assert greedy_answers(model, tokenizer, CONVS[::-1], max_new_tokens=8, batch_size=3) == first[::-1]


def test_greedy_answers_decode_only_the_new_tokens(tiny_model, cpu_one_thread):
    import torch

    model, tokenizer = load(tiny_model, sharp=True)
    [text] = greedy_answers(model, tokenizer, CONVS[:1], max_new_tokens=6)
    ids = torch.tensor([prompt_ids(tokenizer, CONVS[0])])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    new = out[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    assert text == tokenizer.decode(new, skip_special_tokens=True)
    assert "What is 12 + 30?" not in text
    assert greedy_answers(model, tokenizer, []) == []
