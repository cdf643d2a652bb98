"""The template cut: scored tokens are exactly the assistant turns, under a chat template and the plain one."""
from __future__ import annotations

import pytest

from scoring.models.formatting import PLAIN_TEMPLATE, encode, template_fingerprint, template_text
from scoring.models.loading import ModelRef, load_tokenizer

SINGLE = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]
MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Red."},
]


def tok(folder):
    return load_tokenizer(ModelRef(name="tiny", path=str(folder), fingerprint="x"))


def scored_text(tokenizer, e):
    return tokenizer.decode([t for t, s in zip(e.ids, e.scored) if s])


def test_chat_template_scores_the_assistant_turn_and_its_end_token(tiny_model):
    t = tok(tiny_model)
    e = encode(t, SINGLE, 256)
    assert scored_text(t, e) == "2 + 3 = 5.<|im_end|>"
    assert t.decode(e.ids[: e.n_prompt_tokens]).endswith("<|im_start|>assistant\n")
    assert e.flag == "" and e.n_response_tokens == sum(e.scored)


def test_multi_turn_scores_every_assistant_turn_only(tiny_model):
    t = tok(tiny_model)
    e = encode(t, MULTI, 256)
    assert scored_text(t, e) == "Blue.<|im_end|>Red.<|im_end|>"
    assert "Another?" in t.decode(e.ids) and "Another?" not in scored_text(t, e)
    # concatenating the segments reproduces the template's own rendering
    assert t.decode(e.ids) == t.apply_chat_template(MULTI, tokenize=False).rstrip()


def test_plain_template_when_the_tokenizer_has_none(tiny_plain_model):
    t = tok(tiny_plain_model)
    assert not t.chat_template
    e = encode(t, SINGLE, 256)
    assert scored_text(t, e) == "2 + 3 = 5.<|endoftext|>"
    assert t.decode(e.ids[: e.n_prompt_tokens]) == "<|endoftext|>### Instruction:\nWhat is 2 + 3?\n\n### Response:\n"
    assert template_text(t).startswith("plain:") and "### Instruction" in template_text(t)
    assert PLAIN_TEMPLATE["assistant"] == "{content}{eos}"


def test_alone_ids_are_a_start_token_then_the_same_scored_tokens(tiny_model):
    t = tok(tiny_model)
    e = encode(t, SINGLE, 256)
    assert e.alone_ids[0] == t.bos_token_id
    assert e.alone_ids[1:] == [i for i, s in zip(e.ids, e.scored) if s]


def test_too_long_is_cut_at_the_right_and_flagged(tiny_model):
    t = tok(tiny_model)
    full = encode(t, SINGLE, 256)
    cut = encode(t, SINGLE, full.n_prompt_tokens + 2)
    assert cut.flag == "too_long" and len(cut.ids) == full.n_prompt_tokens + 2
    assert cut.n_response_tokens == 2
    nothing = encode(t, SINGLE, 5)
    assert nothing.flag == "too_long" and nothing.n_response_tokens == 0 and nothing.alone_ids == []


def test_empty_response_scores_only_the_end_token(tiny_model):
    t = tok(tiny_model)
    e = encode(t, [SINGLE[0], {"role": "assistant", "content": ""}], 256)
    assert scored_text(t, e) == "<|im_end|>"


def test_template_fingerprint_differs_between_templates(tiny_model, tiny_plain_model):
    assert template_fingerprint(tok(tiny_model)) != template_fingerprint(tok(tiny_plain_model))
    assert template_fingerprint(tok(tiny_model)) == template_fingerprint(tok(tiny_model))


@pytest.mark.parametrize("messages", [SINGLE, MULTI])
def test_encoding_is_deterministic(tiny_model, messages):
    t = tok(tiny_model)
    assert encode(t, messages, 64) == encode(t, messages, 64)


def _one_call_per_segment(tokenizer, messages, max_length):
    """:func:`encode` as it was before segments were tokenised in one batch: one tokenizer call per segment."""
    from scoring.models import formatting

    if tokenizer.chat_template:
        segments, flag = formatting.chat_segments(tokenizer, messages)
    else:
        segments, flag = formatting.plain_segments(tokenizer, messages), ""
    pieces = [(tokenizer.encode(text, add_special_tokens=False), is_scored) for text, is_scored in segments]
    return formatting._assemble(tokenizer, pieces, flag, max_length)


def test_a_batch_of_conversations_tokenised_together_is_each_one_tokenised_alone(tiny_model, tiny_plain_model):
    """encode_many (the passes and the fine-tune tokenise a chunk at once) gives each conversation exactly the ids,
    mask, response-alone ids and flags of one tokenizer call per segment; encode_pairs each side's encode_side."""
    from scoring.models.formatting import encode_many, encode_pairs, encode_side

    conversations = [SINGLE, MULTI, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}],
                     [{"role": "user", "content": "  "}, {"role": "assistant", "content": "é ü 中文 " * 30}],
                     [{"role": "user", "content": "No reply."}]]  # fmt: skip
    for folder in (tiny_model, tiny_plain_model):
        t = tok(folder)
        for max_length in (4096, 24):  # 24: the long ones cut and flagged too_long
            together = encode_many(t, conversations, max_length)
            assert together == [_one_call_per_segment(t, c, max_length) for c in conversations]
            assert any("too_long" in e.flag for e in together) == (max_length == 24)
        pairs = [(MULTI[:4], "Green.", "I will not."), (SINGLE[:1], "5", "six " * 40)]
        assert encode_pairs(t, pairs, 30) == [(encode_side(t, p, c, 30), encode_side(t, p, r, 30)) for p, c, r in pairs]
    assert encode_many(t, [], 256) == []
