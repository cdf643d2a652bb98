"""Ingest, step 4 (both kinds): normalised rows -> the examples table, with ids, duplicate flags and a fingerprint.

Each kind of dataset supplies one function turning a record into a :class:`Row` (instruction records:
:func:`scoring.ingest.layouts.instruction_row`; preference pairs: :func:`scoring.ingest.pairs.pair_row`); everything
else -- ids, the ``duplicate`` flag, flag counts, the content fingerprint, the Arrow table -- is done once, here.

Rows are never dropped: a record that could not be read keeps its place with empty text and its read flag.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pyarrow as pa
from tqdm import tqdm

from scoring.errors import UserError
from scoring.ingest.sources import Raw
from scoring.ingest.turns import dumps, is_null
from scoring.schema import count_flags, join_flags

ID_COLUMNS = ("id", "uid", "example_id", "idx")
_ROW_BAR_MIN = 10_000  # show a per-row bar only when there is enough work to watch


@dataclass
class Row:
    """One record normalised: the examples-table text columns, the flags found, and what identifies its content."""

    messages: str  # JSON of the turns (instruction data: all of them; pairs: the prompt turns both sides share)
    prompt: str
    response: str  # the last assistant turn (pairs: the chosen reply)
    flags: list[str] = field(default_factory=list)
    key: str = ""  # text whose repeat marks a ``duplicate``
    content: str = ""  # fingerprinted text; "" -> fingerprint what was read instead
    rejected: str | None = None  # pairs only


@dataclass(frozen=True)
class Kind:
    """How one kind of dataset turns a record into a Row, and its table schema."""

    name: str  # "sft" | "pair"
    schema: pa.Schema
    normalise: Callable[[dict], Row]
    unread_content: Callable[[str], str]  # fingerprint text of a row that could not be read, from its original JSON


@dataclass
class Built:
    table: pa.Table
    fingerprint: str
    flag_counts: dict[str, int]
    id_column: str | None


def _column_ids(raws: list[Raw], column: str) -> tuple[list[str] | None, str]:
    """str() of the column's values if all are present and unique, else (None, why not)."""
    ids: list[str] = []
    seen: set[str] = set()
    for raw in raws:
        value = raw.record.get(column) if raw.record is not None else None
        if is_null(value):
            return None, f"row {raw.where} has no value"
        text = str(value)
        if text in seen:
            return None, f"value {text!r} repeats at {raw.where}"
        seen.add(text)
        ids.append(text)
    return ids, ""


def pick_ids(raws: list[Raw], mapped: str | None, columns: list[str]) -> tuple[list[str], str | None]:
    """Ids from a unique id column (``--map id=`` must qualify), else the global row numbers."""
    candidates = [mapped] if mapped else [c for c in ID_COLUMNS if c in columns]
    for column in candidates:
        ids, why = _column_ids(raws, column)
        if ids is not None:
            return ids, column
        if mapped:
            raise UserError(f"--map id={column}: ids must be present and unique, but {why}")
    return [str(i) for i in range(len(raws))], None


def fingerprint_rows(ids: Iterable[str], contents: Iterable[str]) -> str:
    """sha256 hex over (id, content) of every row in order; content is the messages JSON.

    Paths, times and flags stay out: the same data ingested from another place gives the same key, so model
    passes keyed by it are reused. Strings are length-prefixed so no two row lists hash alike by concatenation.
    """
    h = hashlib.sha256(b"davir-examples-sft-v1\n")
    for row_id, content in zip(ids, contents, strict=True):
        a, b = row_id.encode(), content.encode()
        h.update(b"%d:%s%d:%s\n" % (len(a), a, len(b), b))
    return h.hexdigest()


def build_table(raws: list[Raw], kind: Kind, id_column: str | None, columns: list[str], progress: bool) -> Built:
    """Normalise every record into the kind's schema, flagging repeats of earlier content as ``duplicate``."""
    ids, id_column = pick_ids(raws, id_column, columns)
    cols: dict[str, list] = {name: [] for name in kind.schema.names}
    seen: set[bytes] = set()
    contents = []
    show = progress and len(raws) >= _ROW_BAR_MIN
    for idx, raw in enumerate(tqdm(raws, desc="normalising", unit=" rows", file=sys.stderr, disable=not show)):
        original = dumps(raw.original)
        row = kind.normalise(raw.record) if raw.record is not None else Row("[]", "", "", rejected="")
        if raw.record is not None:
            digest = hashlib.blake2b(row.key.encode(), digest_size=16).digest()
            if digest in seen:
                row.flags.append("duplicate")
            seen.add(digest)
        contents.append(row.content or kind.unread_content(original))
        cols["idx"].append(idx)
        cols["messages"].append(row.messages)
        cols["prompt"].append(row.prompt)
        cols["response"].append(row.response)
        if "rejected" in cols:
            cols["rejected"].append(row.rejected)
        cols["flag"].append(join_flags(raw.flag, *row.flags))
        cols["source"].append(raw.where)
        cols["original"].append(original)
    cols["id"] = ids
    cols["kind"] = [kind.name] * len(raws)
    table = pa.table(cols, schema=kind.schema)
    return Built(table, fingerprint_rows(ids, contents), count_flags(cols["flag"]), id_column)

