"""Ingest, step 3 for instruction data: which source columns play which part, and a record as messages.

Layouts, detected from the column names (first match wins; ``--map FIELD=COLUMN`` overrides, see detect_layout):

    chat             a ``messages`` or ``conversations`` column: turns as {role, content} or ShareGPT {from, value}
    alpaca           instruction + output; ``input`` is folded into the user turn (instruction + "\\n\\n" + input);
                     a ``history`` list of [prompt, response] pairs (LLaMA-Factory's LIMA) gives the earlier turns
    prompt_response  the first pair of PROMPT_RESPONSE_COLUMNS present, e.g. question/answer (gsm8k),
                     prompt/completion; a ``context`` column (else an ``input`` column not already used) is folded
                     into the prompt as prompt + "\\n\\n" + context -- Dolly's instruction/context/response reads
                     naturally
    mapped           whatever ``--map`` names

In every layout a ``system`` column becomes a leading system turn (it is an instruction to the model, not part of
what the user asked, so it is not folded into the prompt text).

Display columns: ``response`` is the last assistant turn; ``prompt`` is everything before it -- the user text
alone for a single user turn, otherwise the turns as "role: content" blocks separated by blank lines.
(Preference pairs, with chosen + rejected columns, are read by :mod:`scoring.ingest.pairs`.)
"""
from __future__ import annotations

from dataclasses import dataclass

from scoring.errors import UserError
from scoring.ingest.tables import Row
from scoring.ingest.turns import CHAT_COLUMNS, Turns, display, dumps

# Every reason ingest can put in ``flag``; a row may carry several ("a,b").
FLAGS = {
    "invalid_json": "a JSONL line that does not parse; kept with empty prompt/response, original = {'raw': line}",
    "bad_encoding": "bytes that are not UTF-8; decoded with U+FFFD replacement characters",
    "not_an_object": "a record that is not a JSON object (e.g. a line holding a bare number)",
    "non_string_field": "a number, bool, list or dict where text was expected; coerced to text",
    "malformed_turn": "a chat turn with no known role, or a history item that is not a [prompt, response] pair",
    "empty_prompt": "no non-blank user text before the last assistant turn",
    "empty_response": "the last assistant turn is blank",
    "no_assistant_turn": "the conversation has no assistant turn, or does not end with one",
    "duplicate": "the same messages as an earlier row (the first occurrence stays unflagged)",
}

# Fields accepted by --map FIELD=COLUMN.
MAP_FIELDS = ("prompt", "response", "context", "system", "messages", "id", "chosen", "rejected")
CONTENT_FIELDS = ("prompt", "response", "messages")

# Column pairs (prompt, response) tried in order for the prompt_response layout.
PROMPT_RESPONSE_COLUMNS = (
    ("prompt", "response"), ("prompt", "completion"), ("prompt", "output"), ("prompt", "answer"),
    ("question", "answer"), ("question", "response"), ("query", "response"), ("query", "answer"),
    ("instruction", "response"), ("instruction", "completion"), ("input", "output"), ("input", "response"),
)
CONTEXT_COLUMNS = ("context", "input")


@dataclass
class LayoutSpec:
    """Which source column plays which part. ``None`` means the part is absent."""

    layout: str
    prompt: str | None = None
    response: str | None = None
    context: str | None = None
    system: str | None = None
    messages: str | None = None
    history: str | None = None
    id: str | None = None  # only from --map; otherwise ID_COLUMNS are tried


def parse_field_map(pairs: list[str]) -> dict[str, str]:
    """``["prompt=question", "response=answer"]`` -> ``{"prompt": "question", "response": "answer"}``.

    The column part may itself contain "=" (only the first one splits).
    """
    out: dict[str, str] = {}
    for pair in pairs or []:
        fld, sep, column = str(pair).partition("=")
        fld, column = fld.strip(), column.strip()
        if not sep or not fld or not column:
            raise UserError(f"--map {pair!r}: expected FIELD=COLUMN, e.g. --map prompt=question")
        if fld not in MAP_FIELDS:
            raise UserError(f"--map {pair!r}: unknown field {fld!r}; fields are {', '.join(MAP_FIELDS)}")
        if fld in out:
            raise UserError(f"--map {fld}= given twice ({out[fld]!r} and {column!r})")
        out[fld] = column
    return out


def _detect(columns: set[str]) -> LayoutSpec | None:
    """The layout implied by column names alone, or None."""
    system = "system" if "system" in columns else None
    history = "history" if "history" in columns else None
    for col in CHAT_COLUMNS:
        if col in columns:
            return LayoutSpec("chat", messages=col, system=system)
    if "instruction" in columns and "output" in columns:
        context = "input" if "input" in columns else None
        return LayoutSpec("alpaca", "instruction", "output", context, system, history=history)
    for prompt, response in PROMPT_RESPONSE_COLUMNS:
        if prompt in columns and response in columns:
            context = next((c for c in CONTEXT_COLUMNS if c in columns and c not in (prompt, response)), None)
            return LayoutSpec("prompt_response", prompt, response, context, system, history=history)
    return None


def _unknown_layout(columns: list[str], where: str) -> UserError:
    return UserError(  # (preference pairs, with chosen + rejected columns, are read by scoring.ingest.pairs)
        f"{where}: cannot tell which columns hold the prompt and the response. Columns found: "
        f"{', '.join(columns)}. Name them with --map, e.g. --map prompt=<column> --map response=<column> (add "
        "--map context=<column>, --map system=<column> or --map id=<column> as needed), or --map messages=<column> "
        "for a column of chat turns.")


def detect_layout(columns: list[str], field_map: dict[str, str] | None = None, where: str = "source") -> LayoutSpec:
    """Which columns play which part.

    With a field map the layout is "mapped". If the map names content (prompt/response or messages) nothing else
    is guessed; a map naming only id/context/system keeps the detected content columns, so ``--map id=uuid``
    alone works on Alpaca-shaped data.
    """
    field_map = field_map or {}
    missing = [c for c in field_map.values() if c not in columns]
    if missing:
        raise UserError(f"{where}: --map names column {missing[0]!r}, which is not there; "
                        f"columns found: {', '.join(columns)}")
    content = {f for f in CONTENT_FIELDS if f in field_map}
    if not content:
        spec = _detect(set(columns))
        if spec is None:
            raise _unknown_layout(columns, where)
        if not field_map:
            return spec
    elif content in ({"messages"}, {"prompt", "response"}):
        spec = LayoutSpec("mapped")
    else:
        raise UserError("--map needs both prompt=<column> and response=<column>, or messages=<column> without them")
    spec.layout = "mapped"
    for fld, column in field_map.items():
        setattr(spec, fld, column)
    return spec


def build_messages(record: dict, spec: LayoutSpec) -> tuple[list[dict[str, str]], list[str]]:
    """The record's turns in order: system, earlier history, then the final user/assistant pair (or chat turns)."""
    turns = Turns()
    system = turns.text(record.get(spec.system)) if spec.system else ""
    if spec.messages:
        turns.add_chat(record.get(spec.messages))
        if system.strip() and not (turns.messages and turns.messages[0]["role"] == "system"):
            turns.messages.insert(0, {"role": "system", "content": system})
        return turns.messages, turns.flags
    if system.strip():
        turns.messages.append({"role": "system", "content": system})
    if spec.history:
        turns.add_history(record.get(spec.history))
    user = turns.text(record.get(spec.prompt)) if spec.prompt else ""
    context = turns.text(record.get(spec.context)) if spec.context else ""
    if context.strip():
        user = f"{user}\n\n{context}" if user else context
    turns.messages.append({"role": "user", "content": user})
    turns.add("assistant", record.get(spec.response) if spec.response else None)
    return turns.messages, turns.flags


def split_last_turn(messages: list[dict[str, str]], flags: list[str]) -> tuple[str, str]:
    """(prompt, response) around the last assistant turn, adding the conversation-shape flags."""
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)
    if last is None:
        flags.append("no_assistant_turn")
        before, response = messages, ""
    else:
        if last != len(messages) - 1:
            flags.append("no_assistant_turn")
        before, response = messages[:last], messages[last]["content"]
        if not response.strip():
            flags.append("empty_response")
    if not any(t["role"] == "user" and t["content"].strip() for t in before):
        flags.append("empty_prompt")
    return display(before), response


def instruction_row(record: dict, spec: LayoutSpec) -> Row:
    """One instruction record in the examples table's terms (its duplicate key and fingerprint: the messages)."""
    messages, found = build_messages(record, spec)
    prompt, response = split_last_turn(messages, found)
    messages_json = dumps(messages)
    # A row whose messages are empty is fingerprinted by what was read instead (content "" -> the original).
    return Row(messages_json, prompt, response, found, key=messages_json,
               content=messages_json if messages_json != "[]" else "")
