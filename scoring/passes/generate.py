"""Greedy answers of a model to prompts, and whether an answer states the computed one: accuracy on held-out tasks.

Why generation at all: the scores (davir, ifd, ...) and the eval NLL say how likely a model finds a *given* answer;
accuracy says whether the model, left to itself, *gives* the right one. The held-out demo tasks
(:func:`scoring.ingest.demo.generate_heldout`) carry each task's computed answer, so a greedy reply can be checked
against it without a judge model.

The prompt is formatted exactly as the scoring passes format it (:func:`scoring.models.formatting.encode`: the
chat template with its generation prompt, or the plain template's ``### Response:`` header), so the model answers
from the same context in which its losses are measured.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from scoring.models.formatting import encode

_NEW_REPLY = {"role": "assistant", "content": ""}


def prompt_ids(tokenizer, conversation: list[dict], max_length: int = 1024) -> list[int]:
    """Token ids of ``conversation`` formatted up to the first token of the assistant's reply.

    Trailing assistant turns (a reference reply) are dropped; earlier ones stay as context. The ids are those
    ``encode`` gives the conversation followed by an empty assistant turn, without that turn's own tokens (its
    end-of-turn marker): with a chat template, the rendering with ``add_generation_prompt=True``; without one, the
    plain template up to ``### Response:\\n``, each segment tokenised as ``encode`` does. A prompt longer than
    ``max_length`` keeps its last ``max_length`` tokens, so the reply header is never cut off.
    """
    turns = list(conversation)
    while turns and turns[-1]["role"] == "assistant":
        turns.pop()
    probe = encode(tokenizer, [*turns, _NEW_REPLY], max_length=1 << 30)
    end = len(probe.ids)
    while end and probe.scored[end - 1]:  # the empty reply's scored tokens (e.g. "<|im_end|>" or eos)
        end -= 1
    return probe.ids[:end][-max_length:]


def greedy_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 48, batch_size: int = 16,
                   max_length: int = 1024, on_progress: Callable[[int], None] | None = None) -> list[str]:  # fmt: skip
    """The greedy (``do_sample=False``) reply of ``model`` to each conversation's prompt turns, one string each.

    Prompts are formatted by :func:`prompt_ids`, grouped by length into batches of ``batch_size`` (less padding),
    left-padded with an attention mask, and decoded for at most ``max_new_tokens`` new tokens, stopping at the
    tokenizer's eos. Only the new tokens are decoded (``skip_special_tokens=True``), cut at the first eos, in the
    order of ``conversations``. The model is put in eval mode for the call and its mode restored after.
    ``on_progress(n)`` is called with the number of replies done after each batch.
    """
    import torch

    prompts = [prompt_ids(tokenizer, c, max_length) for c in conversations]
    if any(not p for p in prompts):
        raise ValueError("a conversation formats to no prompt tokens; give it a user message")
    eos = tokenizer.eos_token_id
    pad = next(t for t in (tokenizer.pad_token_id, eos, 0) if t is not None)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(prompts[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T), left-padded
                mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T), 1 on real tokens
                for row, i in enumerate(batch):
                    ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i], dtype=torch.long)
                    mask[row, width - len(prompts[i]) :] = 1
                out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                     do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, use_cache=True,
                                     eos_token_id=eos)  # (B, T + new)  # fmt: skip
                for row, i in enumerate(batch):
                    new = out[row, width:].tolist()
                    if eos is not None and eos in new:
                        new = new[: new.index(eos)]
                    texts[i] = tokenizer.decode(new, skip_special_tokens=True)
                if on_progress:
                    on_progress(min(start + batch_size, len(order)))
    finally:
        model.train(training)
    return texts


def _answer_pattern(answer: str) -> str:
    """A regex for ``answer`` (already whitespace-normalised) as a whole token sequence; see answer_correct."""
    pieces = re.split(r"(\s*,\s*|\s+)", answer)  # text, separator, text, ...
    body = "".join(
        (r"\s*,\s*" if "," in piece else r"\s+") if k % 2 else re.escape(piece) for k, piece in enumerate(pieces)
    )
    head = tail = ""
    if answer[0].isdigit():  # not the tail of a longer number (112, 1.12, 3,012) nor a negative one (-12)
        head = r"(?<![\w.])(?<!\d,)(?<!\s-)"
    elif re.match(r"\w", answer[0]):
        head = r"(?<!\w)"
    if answer[-1].isdigit():  # not the head of a longer number (123, 12.5, 12,000)
        tail = r"(?!\w)(?![.,]\d)"
    elif re.match(r"\w", answer[-1]):
        tail = r"(?!\w)"
    return head + body + tail


def answer_correct(generated: str, answer: str) -> bool:
    """Whether ``generated`` states ``answer``: a containment check on whole tokens, not string equality.

    What counts as correct: after collapsing every whitespace run to one space, ``answer`` occurs in
    ``generated`` ignoring case, as a whole token sequence:

    - where the answer starts (ends) with a letter, digit or underscore, the character before (after) it in the
      text must not be one: "Paris" matches "The capital is Paris." but not "Parisian"; "called" not "recalled";
    - a number must not be part of a longer number: "12" matches "= 12." and "12, 15" but not "112", "123",
      "1.12", "12.5", "3,012", "12,000", nor the negative "-12";
    - inside the answer, any whitespace run matches any whitespace run, and a comma may have any spacing around
      it, so the sorted list "3, 17, 42" matches "3,17,42" (in that order only).

    Why not ``generated == output``: the demo's reference outputs phrase one answer several ways ("17", "5 + 12 =
    17.", "Answer: 5 + 12 = 17."), so whole-output equality would measure whether a model copies a phrasing, not
    whether it knows the answer; every phrasing contains the computed answer, which is what is checked.
    Limits: a reply that states several candidates counts if any is the answer (a reply echoing "45 or 67" is
    right for "which is larger?" whichever it is), and other spellings of a number ("3,000" for "3000",
    "twelve" for "12") do not count. An empty answer is never matched.
    """
    text = " " + " ".join(generated.split()) + " "  # the padding lets the look-behinds see a start of text
    target = " ".join(answer.split())
    if not target:
        return False
    return re.search(_answer_pattern(target), text, flags=re.IGNORECASE) is not None
