"""Ingest, step 2 (shared by both kinds): record fields as text and chat turns.

Why one normal form: model passes, scores and exports all read ``messages`` -- a JSON list of
``{"role": "system"|"user"|"assistant", "content": str}`` -- and never need to know whether the data came as
Alpaca, question/answer pairs, chat, ShareGPT or preference pairs. The helpers here turn a field into text or into
turns, collecting the flag of every coercion (``non_string_field``, ``malformed_turn``) instead of failing.
"""
from __future__ import annotations

import json
import math
from typing import Any

CHAT_COLUMNS = ("messages", "conversations")

# Role names seen in the wild (OpenAI, ShareGPT, OpenAssistant, Gemini) -> ours.
ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
}


def dumps(value: Any) -> str:
    """JSON text as stored in the examples table (UTF-8 kept, anything unknown as str)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def is_null(value: Any) -> bool:
    """None, or NaN: a null that went through pandas. Both mean "no value", never a coercion."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def as_text(value: Any) -> tuple[str, bool]:
    """Text for a field that should hold text, and whether it had to be coerced (-> ``non_string_field``)."""
    if is_null(value):
        return "", False
    if isinstance(value, str):
        return value, False
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str), True
    return str(value), True


def turn_list(value: Any) -> list | None:
    """A list of turns ([] for a null); None when it is not a list. Turns stored as a JSON string (CSV cells,
    some Parquet exports) are decoded, not flagged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return [] if is_null(value) else list(value) if isinstance(value, (list, tuple)) else None


class Turns:
    """Builds one record's messages, collecting flags as fields are coerced or turns are dropped."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.flags: list[str] = []

    def text(self, value: Any) -> str:
        text, coerced = as_text(value)
        if coerced:
            self.flags.append("non_string_field")
        return text

    def add(self, role: str, value: Any) -> None:
        self.messages.append({"role": role, "content": self.text(value)})

    def add_history(self, value: Any) -> None:
        value = turn_list(value)
        if value is None:
            self.flags.append("malformed_turn")
        for pair in value or []:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                self.add("user", pair[0])
                self.add("assistant", pair[1])
            else:
                self.flags.append("malformed_turn")

    def add_chat(self, value: Any) -> None:
        value = turn_list(value)
        if value is None:
            self.flags.append("malformed_turn")
        for turn in value or []:
            role = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
            role = ROLE_ALIASES.get(str(role).strip().lower()) if role is not None else None
            if role is None:
                self.flags.append("malformed_turn")
                continue
            self.add(role, turn["content"] if "content" in turn else turn.get("value"))


def display(turns: list[dict[str, str]]) -> str:
    """Prompt text: the user text for a lone user turn, else "role: content" blocks."""
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{t['role']}: {t['content']}" for t in turns)
