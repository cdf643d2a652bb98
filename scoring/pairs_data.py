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

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from .data import (CHAT_COLUMNS, LayoutSpec, _Built, _display, _dumps, _pick_ids, _Raw, _Turns,
                   _turn_list, fingerprint_rows)  # fmt: skip
from .errors import UserError
from .schema import PAIR_EXAMPLES, join_flags

PAIR_LAYOUTS = ("pair_prompt", "pair_chat", "pair_dialogue")
PAIR_PROMPT_COLUMNS = ("prompt", "conversations", "messages", "question", "instruction", "query", "input")

# Reasons a pair can carry besides the SFT ones (invalid_json, not_an_object, non_string_field, malformed_turn,
# empty_prompt, duplicate keep their meaning from scoring.data.FLAGS).
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


def _as_turns(value: Any, default_role: str, turns: _Turns) -> list[dict[str, str]]:
    """A field as turns: a list of turns, one turn object, a transcript, or plain text in ``default_role``."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, str) and value.lstrip().startswith("["):  # turns stored as JSON text (CSV cells)
        decoded = _turn_list(value)
        if decoded and all(isinstance(t, dict) and ("role" in t or "from" in t) for t in decoded):
            value = decoded  # anything else is a reply that happens to start with "["
    listed = None if isinstance(value, str) else _turn_list(value)
    if listed is not None:
        part = _Turns()
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
    turns = _Turns()
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


# ---- Table -------------------------------------------------------------------------------------------------------


def build_pair_table(raws: list[_Raw], spec: PairSpec, columns: list[str]) -> _Built:
    """Normalise every record into the PAIR_EXAMPLES columns, flagging degenerate and duplicate pairs."""
    ids, id_column = _pick_ids(raws, LayoutSpec("pair", id=spec.id), columns)
    cols: dict[str, list] = {name: [] for name in PAIR_EXAMPLES.names}
    seen: set[bytes] = set()
    contents = []
    for idx, raw in enumerate(raws):
        flags = [raw.flag]
        if raw.record is None:
            shared, chosen, rejected = [], "", ""
        else:
            shared, chosen, rejected, found = normalise_pair(raw.record, spec)
            key = hashlib.blake2b(_dumps([shared, chosen, rejected]).encode(), digest_size=16).digest()
            if key in seen:
                found.append("duplicate")
            seen.add(key)
            flags += found
        cols["idx"].append(idx)
        cols["messages"].append(_dumps(shared))
        cols["prompt"].append(_display(shared))
        cols["response"].append(chosen)
        cols["rejected"].append(rejected)
        cols["flag"].append(join_flags(*flags))
        cols["source"].append(raw.where)
        cols["original"].append(_dumps(raw.original))
        # Fingerprinted by content; a row that could not be read by what was read instead.
        contents.append("pair:" + (_dumps([shared, chosen, rejected]) if raw.record is not None else cols["original"][-1]))
    cols["id"] = ids
    cols["kind"] = ["pair"] * len(raws)
    counts: dict[str, int] = {}
    for flag in cols["flag"]:
        for reason in flag.split(",") if flag else ():
            counts[reason] = counts.get(reason, 0) + 1
    return _Built(pa.table(cols, schema=PAIR_EXAMPLES), fingerprint_rows(ids, contents), counts, id_column)


# ---- Planted check: swapped pairs ----------------------------------------------------------------------------------

SWAP_LABEL = "swapped_pair"


def write_planted_pairs(source: str, path: Path, limit: int | None = None, fraction: float = 0.2,
                        seed: int = 0) -> tuple[Path, int]:
    """Copy the first ``limit`` records of a pair SOURCE to JSONL ``path``, swapping chosen and rejected in a
    seeded ``fraction`` of the pairs whose two sides differ, labelled ``defect`` = "swapped_pair" ("" elsewhere).

    A swapped pair prefers the worse reply: a score that tracks pair quality (``irm``) should rank it low;
    ``status`` reports that as an AUROC. Returns (path, number of swapped pairs).
    """
    from .data import _columns, _read_records, _resolve_source

    if not 0 < fraction < 1:
        raise UserError(f"--swap {fraction}: the share of swapped pairs must lie strictly between 0 and 1")
    raws = [r for r in _read_records(_resolve_source(source), limit, progress=False) if r.record is not None]
    spec = detect_pair_layout(_columns(raws), None, source) if raws else None
    if spec is None:
        raise UserError(f"{source}: no preference pairs found (need chosen and rejected columns)")
    if "defect" in _columns(raws):
        raise UserError(f"{source}: already has a 'defect' column; plant swaps into a source without one")
    candidates = [i for i, r in enumerate(raws) if r.record.get(spec.chosen) != r.record.get(spec.rejected)]
    swapped = set(random.Random(seed).sample(candidates, round(fraction * len(candidates))))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i, raw in enumerate(raws):
            record = dict(raw.record)
            if i in swapped:
                record[spec.chosen], record[spec.rejected] = record[spec.rejected], record[spec.chosen]
            record["defect"] = SWAP_LABEL if i in swapped else ""
            fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    return path, len(swapped)
