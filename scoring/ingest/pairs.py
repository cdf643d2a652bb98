"""Ingest of preference pairs: (prompt, chosen, rejected) records in the layouts found in the wild.

Detected from the column names whenever a source has ``chosen`` and ``rejected`` columns (``--map chosen=COL
--map rejected=COL`` names others); the first match wins:

    pair_prompt    a prompt column (prompt, question, instruction, query, input): a string or a list of turns;
                   chosen / rejected are reply strings (the UltraFeedback-binarized sample) or turn lists that may
                   repeat the prompt turns (HuggingFaceH4/ultrafeedback_binarized)
    pair_chat      a ``conversations`` / ``messages`` column of turns, chosen / rejected one {from, value} or
                   {role, content} turn each (LLaMA-Factory's ShareGPT-style dpo_en_demo.json)
    pair_dialogue  no prompt column: chosen / rejected are whole dialogues, as turn lists (trl-lib style) or as
                   HH-RLHF transcripts ("\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns)

Every side becomes a full conversation; the pair's prompt is the turns both conversations share, and each
response is that conversation's final assistant turn. A ``system`` column becomes a leading system turn.

Stored (schema.PAIR_EXAMPLES): ``kind`` = "pair", ``messages`` = the shared prompt turns (JSON, no final assistant
turn), ``prompt`` = their display text, ``response`` = the chosen reply, ``rejected`` = the rejected reply.
Degenerate pairs are kept and flagged (PAIR_FLAGS), never dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from scoring.errors import UserError
from scoring.ingest.tables import Row
from scoring.ingest.turns import CHAT_COLUMNS, Turns, display, dumps, turn_list

PAIR_LAYOUTS = ("pair_prompt", "pair_chat", "pair_dialogue")
PAIR_PROMPT_COLUMNS = ("prompt", "conversations", "messages", "question", "instruction", "query", "input")

# Reasons a pair can carry besides the SFT ones (invalid_json, not_an_object, non_string_field, malformed_turn,
# empty_prompt, duplicate keep their meaning from scoring.ingest.layouts.FLAGS).
PAIR_FLAGS = {
    "identical_pair": "chosen and rejected replies are the same text: the pair teaches nothing",
    "empty_chosen": "the chosen reply is blank",
    "empty_rejected": "the rejected reply is blank",
    "no_shared_prefix": "the two conversations differ before their final assistant turn; the prompt is the turns "
    "they share (possibly none)",
    "no_assistant_turn": "a side does not end with an assistant turn",
}

# HH-RLHF transcripts: turns start with "\n\nHuman: " or "\n\nAssistant: " (the first one at the very start too).
_TRANSCRIPT_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_TRANSCRIPT_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class PairSpec:
    """Which source columns hold the parts of a pair."""

    layout: str  # one of PAIR_LAYOUTS
    chosen: str
    rejected: str
    prompt: str | None = None
    system: str | None = None
    id: str | None = None


def detect_pair_layout(columns: list[str], field_map: dict[str, str] | None, where: str) -> PairSpec | None:
    """A PairSpec when the source holds preference pairs, else None (the SFT layouts apply)."""
    fm = field_map or {}
    if ("chosen" in fm) != ("rejected" in fm):
        raise UserError("--map needs both chosen=<column> and rejected=<column> for preference pairs")
    chosen = fm.get("chosen") or ("chosen" if "chosen" in columns else None)
    rejected = fm.get("rejected") or ("rejected" if "rejected" in columns else None)
    if not (chosen and rejected) or (("response" in fm or "messages" in fm) and "chosen" not in fm):
        return None
    for column in (c for c in fm.values() if c not in columns):
        raise UserError(f"{where}: --map names column {column!r}, which is not there; columns found: "
                        f"{', '.join(columns)}")
    prompt = fm.get("prompt") or next((c for c in PAIR_PROMPT_COLUMNS if c in columns), None)
    system = fm.get("system") or ("system" if "system" in columns else None)
    layout = "pair_dialogue" if prompt is None else "pair_chat" if prompt in CHAT_COLUMNS else "pair_prompt"
    return PairSpec(layout, chosen, rejected, prompt, system, fm.get("id"))


# ---- One record -> (prompt turns, chosen, rejected, flags) ----------------------------------------------------------


def parse_transcript(text: str) -> list[dict[str, str]] | None:
    """HH-RLHF "\\n\\nHuman: ... \\n\\nAssistant: ..." text as turns; None when the text is not a transcript."""
    if not re.search(r"(?:^|\n\n)Human:", text):
        return None
    pieces = _TRANSCRIPT_TURN.split(text)
    turns = [{"role": "user", "content": pieces[0].strip()}] if pieces[0].strip() else []  # text before any marker
    for role, content in zip(pieces[1::2], pieces[2::2]):
        turns.append({"role": _TRANSCRIPT_ROLES[role], "content": content.strip()})
    return turns


def _as_turns(value: Any, default_role: str, turns: Turns) -> list[dict[str, str]]:
    """A field as turns: a list of turns, one turn object, a transcript, or plain text in ``default_role``."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, str) and value.lstrip().startswith("["):  # turns stored as JSON text (CSV cells)
        decoded = turn_list(value)
        if decoded and all(isinstance(t, dict) and ("role" in t or "from" in t) for t in decoded):
            value = decoded  # anything else is a reply that happens to start with "["
    listed = None if isinstance(value, str) else turn_list(value)
    if listed is not None:
        part = Turns()
        part.add_chat(listed)
        turns.flags += part.flags
        return part.messages
    text = turns.text(value)
    parsed = parse_transcript(text)
    if parsed is not None:
        return parsed
    return [{"role": default_role, "content": text}] if text.strip() or default_role == "assistant" else []


def _shared_prefix(a: list[dict], b: list[dict]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def normalise_pair(record: dict, spec: PairSpec) -> tuple[list[dict], str, str, list[str]]:
    """(shared prompt turns, chosen reply, rejected reply, flags) of one record."""
    turns = Turns()
    system = turns.text(record.get(spec.system)) if spec.system else ""
    prompt = _as_turns(record.get(spec.prompt), "user", turns) if spec.prompt else []
    sides = []
    for column in (spec.chosen, spec.rejected):
        side = _as_turns(record.get(column), "assistant", turns)
        # A side that repeats the prompt turns (HuggingFaceH4 style) is a whole conversation already.
        sides.append(side if prompt and side[: len(prompt)] == prompt else prompt + side)
    flags = list(turns.flags)
    full_c, full_r = sides
    replies = []
    for full in sides:
        if full and full[-1]["role"] == "assistant":
            replies.append(full[-1]["content"])
        else:
            replies.append("")
            flags.append("no_assistant_turn")
    ends = [len(f) - 1 if f and f[-1]["role"] == "assistant" else len(f) for f in sides]
    n = min(_shared_prefix(full_c, full_r), *ends)
    shared = full_c[:n]
    if n != ends[0] or n != ends[1]:
        flags.append("no_shared_prefix")
    if system.strip() and not (shared and shared[0]["role"] == "system"):
        shared = [{"role": "system", "content": system}] + shared
    if not any(t["role"] == "user" and t["content"].strip() for t in shared):
        flags.append("empty_prompt")
    chosen, rejected = replies
    if not chosen.strip():
        flags.append("empty_chosen")
    if not rejected.strip():
        flags.append("empty_rejected")
    if chosen == rejected:
        flags.append("identical_pair")
    return shared, chosen, rejected, flags


# ---- Row -------------------------------------------------------------------------------------------------------


def pair_row(record: dict, spec: PairSpec) -> Row:
    """One pair in the examples table's terms; its duplicate key and fingerprint are (prompt turns, chosen,
    rejected)."""
    shared, chosen, rejected, found = normalise_pair(record, spec)
    content = dumps([shared, chosen, rejected])
    return Row(dumps(shared), display(shared), chosen, found, key=content, content="pair:" + content,
               rejected=rejected)
