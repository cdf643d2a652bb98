"""Ingest, step 4 (both kinds): normalised rows -> the examples table, with ids, duplicate flags and a fingerprint.

Each kind of dataset supplies one function turning a record into a :class:`Row` (instruction records:
:func:`scoring.ingest.layouts.instruction_row`; preference pairs: :func:`scoring.ingest.pairs.pair_row`); everything
else -- ids, the ``duplicate`` flag, flag counts, the content fingerprint, the Parquet file -- is done once, here.

The source is read twice, never held: :func:`survey` counts its records, gathers their columns and finds which id
column is unique; :func:`write_examples` then normalises the records :data:`BATCH` at a time into Parquet row
groups. What grows with the rows is ~100 bytes each (the duplicate and id-uniqueness digests), not their text.

Rows are never dropped: a record that could not be read keeps its place with empty text and its read flag.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from scoring.errors import UserError
from scoring.ingest.sources import Raw
from scoring.ingest.turns import dumps, is_null
from scoring.schema import count_flags, join_flags

ID_COLUMNS = ("id", "uid", "example_id", "idx")
_ROW_BAR_MIN = 10_000  # show a per-row bar only when there is enough work to watch
BATCH = 16_384  # records normalised and written at a time: one Parquet row group


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
    fingerprint: str
    flag_counts: dict[str, int]
    n_rows: int


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class _IdColumn:
    """Whether one column could give the ids: present in every record, no value twice (kept as digests)."""

    def __init__(self, name: str):
        self.name, self.seen, self.why = name, set(), ""

    def add(self, raw: Raw) -> None:
        if self.why:
            return
        value = raw.record.get(self.name) if raw.record is not None else None
        if is_null(value):
            self.why, self.seen = f"row {raw.where} has no value", set()
            return
        digest = _digest(str(value))
        if digest in self.seen:
            self.why, self.seen = f"value {str(value)!r} repeats at {raw.where}", set()
            return
        self.seen.add(digest)


@dataclass
class Survey:
    """What the first read of a source found: how many records, their columns in order of first appearance (records
    of one source need not share every key), the first record, and each id column tried (ID_COLUMNS and ``--map
    id=``): "" when its values are present and unique, else why not."""

    n: int
    columns: list[str]
    first: Raw | None
    ids: dict[str, str]


def survey(raws: Iterable[Raw], mapped_id: str | None = None, progress: bool = False) -> Survey:
    """Read every record once, keeping only what :class:`Survey` holds (``progress``: a count of the rows read,
    shown once reading takes over 2 s)."""
    columns: dict[str, None] = {}
    tried = {name: _IdColumn(name) for name in dict.fromkeys([*(mapped_id and [mapped_id] or []), *ID_COLUMNS])}
    n, first = 0, None
    for raw in tqdm(raws, desc="reading", unit=" rows", file=sys.stderr, delay=2, disable=not progress):
        n, first = n + 1, first or raw
        if raw.record is not None:
            columns.update(dict.fromkeys(raw.record))
        for column in tried.values():
            column.add(raw)
    names = [str(c) for c in columns]
    return Survey(n, names, first, {c.name: c.why for c in tried.values() if c.name in names or c.name == mapped_id})


def pick_id_column(found: Survey, mapped: str | None) -> str | None:
    """The id column: ``--map id=`` (which must qualify), else the first of ID_COLUMNS whose values are present and
    unique, else None (the global row numbers)."""
    if mapped:
        if found.ids.get(mapped, f"column {mapped!r} is not there"):
            raise UserError(f"--map id={mapped}: ids must be present and unique, but {found.ids.get(mapped)}")
        return mapped
    return next((c for c in ID_COLUMNS if found.ids.get(c) == ""), None)


class Fingerprint:
    """sha256 hex over (id, content) of every row in order; content is the messages JSON.

    Paths, times and flags stay out: the same data ingested from another place gives the same key, so model
    passes keyed by it are reused. Strings are length-prefixed so no two row lists hash alike by concatenation.
    """

    def __init__(self):
        self._h = hashlib.sha256(b"davir-examples-sft-v1\n")

    def add(self, row_id: str, content: str) -> None:
        a, b = row_id.encode(), content.encode()
        self._h.update(b"%d:%s%d:%s\n" % (len(a), a, len(b), b))

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def write_examples(raws: Iterable[Raw], kind: Kind, id_column: str | None, n: int, path: Path,
                   progress: bool) -> Built:  # fmt: skip
    """Normalise every record into the kind's schema, :data:`BATCH` at a time, flagging repeats of earlier content
    as ``duplicate``, and write them to the Parquet file ``path``; ``n``: the survey's count (for the bar)."""
    seen: set[bytes] = set()
    fingerprint, flag_counts = Fingerprint(), {}
    show = progress and n >= _ROW_BAR_MIN
    bar = tqdm(total=n, desc="normalising", unit=" rows", file=sys.stderr, disable=not show)
    with pq.ParquetWriter(path, kind.schema, compression="zstd") as writer, bar:
        cols, idx = _empty(kind), 0
        for raw in raws:
            row_id = str(raw.record.get(id_column)) if id_column else str(idx)
            _add_row(cols, kind, raw, idx, row_id, seen, fingerprint)
            idx += 1
            if len(cols["idx"]) == BATCH:
                _flush(writer, cols, kind, flag_counts)
                bar.update(BATCH)
                cols = _empty(kind)
        bar.update(len(cols["idx"]))
        _flush(writer, cols, kind, flag_counts)
    return Built(fingerprint.hexdigest(), flag_counts, idx)


def _empty(kind: Kind) -> dict[str, list]:
    return {name: [] for name in kind.schema.names}


def _add_row(cols: dict[str, list], kind: Kind, raw: Raw, idx: int, row_id: str, seen: set[bytes],
             fingerprint: Fingerprint) -> None:  # fmt: skip
    original = dumps(raw.original)
    row = kind.normalise(raw.record) if raw.record is not None else Row("[]", "", "", rejected="")
    if raw.record is not None:
        digest = _digest(row.key)
        if digest in seen:
            row.flags.append("duplicate")
        seen.add(digest)
    fingerprint.add(row_id, row.content or kind.unread_content(original))
    values = {"idx": idx, "id": row_id, "kind": kind.name, "messages": row.messages, "prompt": row.prompt,
              "response": row.response, "rejected": row.rejected, "flag": join_flags(raw.flag, *row.flags),
              "source": raw.where, "original": original}  # fmt: skip
    for name, column in cols.items():
        column.append(values[name])


def _flush(writer: pq.ParquetWriter, cols: dict[str, list], kind: Kind, flag_counts: dict[str, int]) -> None:
    """Write the batch as one row group (an empty batch writes nothing) and count its flags."""
    for reason, count in count_flags(cols["flag"]).items():
        flag_counts[reason] = flag_counts.get(reason, 0) + count
    if cols["idx"]:
        writer.write_table(pa.table(cols, schema=kind.schema))
