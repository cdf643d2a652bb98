"""Ingest: turn a source (files, a ``save_to_disk`` folder or a Hugging Face id) into the examples table.

Why one normal form: model passes, scores and exports all read ``messages`` -- a JSON list of
``{"role": "system"|"user"|"assistant", "content": str}`` -- and never need to know whether the data came as
Alpaca, question/answer pairs, chat or ShareGPT. This module is the only one that knows about source layouts.

Layouts, detected from the column names (first match wins; ``--map FIELD=COLUMN`` overrides, see detect_layout):

    chat             a ``messages`` or ``conversations`` column: turns as {role, content} or ShareGPT {from, value}
    alpaca           instruction + output; ``input`` is folded into the user turn (instruction + "\\n\\n" + input);
                     a ``history`` list of [prompt, response] pairs (LLaMA-Factory's LIMA) gives the earlier turns
    prompt_response  the first pair of PAIR_COLUMNS present, e.g. question/answer (gsm8k), prompt/completion;
                     a ``context`` column (else an ``input`` column not already used) is folded into the prompt
                     as prompt + "\\n\\n" + context -- Dolly's instruction/context/response reads naturally
    mapped           whatever ``--map`` names

In every layout a ``system`` column becomes a leading system turn (it is an instruction to the model, not part of
what the user asked, so it is not folded into the prompt text).

Display columns: ``response`` is the last assistant turn; ``prompt`` is everything before it -- the user text
alone for a single user turn, otherwise the turns as "role: content" blocks separated by blank lines.

Rows are never dropped: a problem either stops ingest with a UserError naming file and line (a file that does
not parse as a whole, a missing file, an empty source) or is kept as a row carrying snake_case reasons in
``flag`` (see FLAGS), so the user can see and filter them.
"""
from __future__ import annotations

import codecs
import csv
import glob as globlib
import gzip
import hashlib
import itertools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from scoring.errors import UserError
from scoring.schema import EXAMPLES, PAIR_EXAMPLES, join_flags
from scoring.store import Cache, atomic_write_json, atomic_write_parquet, read_json

LAYOUTS = ("alpaca", "prompt_response", "chat", "mapped")

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
PAIR_COLUMNS = (
    ("prompt", "response"), ("prompt", "completion"), ("prompt", "output"), ("prompt", "answer"),
    ("question", "answer"), ("question", "response"), ("query", "response"), ("query", "answer"),
    ("instruction", "response"), ("instruction", "completion"), ("input", "output"), ("input", "response"),
)
CONTEXT_COLUMNS = ("context", "input")
CHAT_COLUMNS = ("messages", "conversations")
ID_COLUMNS = ("id", "uid", "example_id", "idx")

# Role names seen in the wild (OpenAI, ShareGPT, OpenAssistant, Gemini) -> ours.
ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
}

# Longest first, so "x.jsonl.gz" is not taken for ".gz" of something else.
DATA_SUFFIXES = (".jsonl.gz", ".ndjson.gz", ".json.gz", ".csv.gz", ".jsonl", ".ndjson", ".json", ".parquet", ".csv")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SURROGATES = re.compile("[\udc80-\udcff]")
_ROW_BAR_MIN = 10_000  # show a per-row bar only when there is enough work to watch


@dataclass
class IngestResult:
    """What ``ingest`` did, for the CLI and app to report."""

    name: str
    fingerprint: str  # sha256 hex of the normalised content (ids + messages), independent of paths and times
    n_rows: int
    flag_counts: dict[str, int]  # reason -> rows carrying it (a row flagged "a,b" counts in both)
    layout: str  # one of LAYOUTS
    already_present: bool  # True when the same name already held identical content (nothing was written)
    path: Path  # the examples.parquet


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


@dataclass(slots=True)
class _Raw:
    """One record as read, before normalisation."""

    record: dict | None  # None when the item is not a usable object (invalid JSON, a bare number ...)
    original: Any  # what goes, as JSON, into the ``original`` column
    where: str  # "file:line" (JSONL, 1-based) or "file:#i" (array / table rows, 0-based)
    flag: str = ""  # reasons found while reading


@dataclass
class _Source:
    """A source string resolved once, before anything is read."""

    kind: str  # "files" | "disk" (save_to_disk folder) | "hub"
    display: str  # recorded in meta.json: absolute path or pattern, or the hub id as given
    default_name: str
    files: list[Path] = field(default_factory=list)
    root: Path | None = None  # row sources are named relative to this


# ---- Resolving the source ------------------------------------------------------------------------------------------


def _data_suffix(path: Path) -> str | None:
    lower = path.name.lower()
    return next((s for s in DATA_SUFFIXES if lower.endswith(s)), None)


def _sanitise(text: str) -> str:
    """A default dataset name: lower case, [a-z0-9_-] only, starting with a letter or digit."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return re.sub(r"-{2,}", "-", cleaned)[:64].rstrip("-_") or "dataset"


def _file_default_name(path: Path) -> str:
    """"<parent>-<stem>" (gsm8k/train.jsonl -> gsm8k-train): a bare stem like "train" says too little."""
    suffix = _data_suffix(path) or path.suffix
    stem, parent = path.name[: len(path.name) - len(suffix)], path.parent.name
    return _sanitise(stem if not parent or stem.lower() == parent.lower() else f"{parent}-{stem}")


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _looks_local(text: str) -> bool:
    """True for strings meant as paths: a hub id is "name" or "owner/name", never "./x", "/x" or "x.jsonl"."""
    return text.startswith(("/", ".", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", text) is not None or (
        _data_suffix(Path(text)) is not None)


def _check_supported(files: list[Path], where: str) -> None:
    for f in files:
        if _data_suffix(f) is None:
            raise UserError(f"{f}: unsupported file type (from {where}); ingest reads {', '.join(DATA_SUFFIXES)} "
                            "files, save_to_disk folders and Hugging Face dataset ids")


def _resolve_source(source: str) -> _Source:
    """Decide what SOURCE names: a file, a folder, a glob, a save_to_disk folder or a Hugging Face id."""
    text = str(source).strip()
    if not text:
        raise UserError("no source given: pass a file, folder, glob pattern or Hugging Face dataset id")
    path = Path(text).expanduser()
    if path.is_file():
        path = path.resolve()
        _check_supported([path], text)
        return _Source("files", str(path), _file_default_name(path), [path], path.parent)
    if path.is_dir():
        path = path.resolve()
        if _is_saved_dataset(path):
            return _Source("disk", str(path), _sanitise(path.name), root=path)
        files = sorted(
            (f for f in path.rglob("*") if f.is_file() and _data_suffix(f)
             and not any(p.startswith(".") for p in f.relative_to(path).parts)),
            key=lambda f: f.relative_to(path).as_posix(),
        )
        if not files:
            raise UserError(f"{path}: no data files in this folder (looked for {', '.join(DATA_SUFFIXES)})")
        return _Source("files", str(path), _sanitise(path.name), files, path)
    if globlib.has_magic(text):
        pattern = os.path.abspath(os.path.expanduser(text))
        files = sorted(Path(m) for m in globlib.glob(pattern, recursive=True) if Path(m).is_file())
        if not files:
            raise UserError(f"no files match {pattern}")
        _check_supported(files, pattern)
        # The folder before the first wildcard names the rows' sources and the dataset.
        root = Path(*itertools.takewhile(lambda p: not globlib.has_magic(p), Path(pattern).parts[:-1]))
        return _Source("files", pattern, _sanitise(root.name), files, root)
    if _looks_local(text):
        raise UserError(f"{os.path.abspath(os.path.expanduser(text))}: no such file or folder")
    return _Source("hub", text, _sanitise(text.replace("/", "-")))


# ---- Reading records -----------------------------------------------------------------------------------------------


def _decode(data: bytes) -> tuple[str, str]:
    """UTF-8 text and "bad_encoding" when bytes had to be replaced (never an exception for bad bytes)."""
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), "bad_encoding"


def _as_raw(value: Any, where: str, flag: str = "") -> _Raw:
    if isinstance(value, dict):
        return _Raw(value, value, where, flag)
    return _Raw(None, value, where, join_flags(flag, "not_an_object"))


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_jsonl(path: Path, label: str) -> Iterator[_Raw]:
    """One record per line, read lazily so --limit stops early. Blank lines are not records and are skipped."""
    with _open_binary(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if lineno == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            if not line.strip():
                continue
            text, flag = _decode(line)
            where = f"{label}:{lineno}"
            try:
                value = json.loads(text)
            except ValueError:
                yield _Raw(None, {"raw": text.rstrip("\r\n")}, where, join_flags(flag, "invalid_json"))
                continue
            yield _as_raw(value, where, flag)


def _records_in(value: Any, path: Path) -> list:
    """The record list of a parsed .json file: the array itself, or the one list inside an object."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
        keys = ", ".join(map(str, list(value)[:10]))
        raise UserError(f"{path}: expected a JSON array of records or an object holding one list of records; "
                        f"found an object with keys {keys} ({len(lists)} of them lists)")
    raise UserError(f"{path}: expected a JSON array of records, found a JSON {type(value).__name__}")


def _read_json(path: Path, label: str) -> Iterator[_Raw]:
    """A whole-file JSON document; a parse error names file, line and column because no row can be salvaged."""
    with _open_binary(path) as fh:
        data = fh.read()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    text, file_flag = _decode(data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and e.lineno > 1:  # JSON Lines named .json, common on the Hub
            yield from _read_jsonl(path, label)
            return
        raise UserError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    for i, item in enumerate(_records_in(value, path)):
        raw = _as_raw(item, f"{label}:#{i}")
        # Only the records that actually hold a replacement character came from the bad bytes.
        if file_flag and "\ufffd" in json.dumps(item, ensure_ascii=False, default=str):
            raw.flag = join_flags(raw.flag, file_flag)
        yield raw


def _read_parquet(path: Path, label: str) -> Iterator[_Raw]:
    """Row groups are read in batches, so --limit does not load the whole file."""
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file: {e}") from None
    rows = (row for batch in batches for row in batch.to_pylist())
    for i, row in enumerate(rows):
        yield _Raw(row, row, f"{label}:#{i}")


def _fix_surrogates(row: dict) -> tuple[dict, str]:
    """CSV is read with errors="surrogateescape" so bad bytes survive to here, where they are replaced and flagged."""
    if not any(isinstance(v, str) and _SURROGATES.search(v) for v in row.values()):
        return row, ""
    fixed = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(v, str) else v
             for k, v in row.items()}
    return fixed, "bad_encoding"


def _read_csv(path: Path, label: str) -> Iterator[_Raw]:
    """A header row then records; every cell is text. Extra cells go to "_extra", missing ones are empty."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long answers exceed the 128 KiB default
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, restkey="_extra")
        try:
            for i, row in enumerate(reader):
                row, flag = _fix_surrogates(row)
                yield _Raw(row, row, f"{label}:#{i}", flag)
        except csv.Error as e:
            raise UserError(f"{path}: line {reader.line_num}: not valid CSV: {e}") from None


def _read_file(path: Path, label: str) -> Iterator[_Raw]:
    suffix = _data_suffix(path) or ""
    kind = suffix.removesuffix(".gz")
    reader = {".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}.get(kind, _read_jsonl)
    try:
        yield from reader(path, label)
    except (OSError, EOFError) as e:  # unreadable, truncated or not-really-gzip files
        raise UserError(f"{path}: cannot read: {e}") from None


def _iter_dataset(ds, label: str, limit: int | None) -> Iterator[_Raw]:
    """Rows of a ``datasets.Dataset`` in order, read in batches (row-by-row iteration is slow)."""
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    i = 0
    for batch in ds.iter(batch_size=1000):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            row = dict(zip(keys, values))
            yield _Raw(row, row, f"{label}:#{i}")
            i += 1


def _load_saved(path: Path):
    """A save_to_disk folder; of a DatasetDict, the "train" split, else the only split."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 -- any failure here is a problem with the user's folder
        raise UserError(f"{path}: cannot load this save_to_disk folder: {e}") from None
    if not isinstance(ds, datasets.DatasetDict):
        return ds
    if "train" in ds or len(ds) == 1:
        return ds["train"] if "train" in ds else next(iter(ds.values()))
    raise UserError(f"{path}: holds splits {', '.join(ds)} and none is called 'train'; save the one you want alone")


def _load_hub(source: str):
    """``datasets.load_dataset(source, split="train")``; every failure becomes a UserError with its message.

    ``datasets`` reads HF_HUB_OFFLINE once, at import; we re-read it here so that setting it later (a test, a
    long-lived app process) still prevents minutes of network retries.
    """
    import datasets
    import datasets.config

    saved = datasets.config.HF_HUB_OFFLINE
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        datasets.config.HF_HUB_OFFLINE = True
    try:
        ds = datasets.load_dataset(source, split="train")
    except Exception as e:  # noqa: BLE001 -- not found, offline, bad config: all the user's to fix
        raise UserError(f"{source!r} is not a local file or folder, and loading it as a Hugging Face dataset "
                        f"failed: {type(e).__name__}: {e}") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = saved
    return ds


def _iter_source(src: _Source, limit: int | None, progress: bool) -> Iterator[_Raw]:
    if src.kind == "disk":
        yield from _iter_dataset(_load_saved(src.root), src.root.name, limit)
    elif src.kind == "hub":
        yield from _iter_dataset(_load_hub(src.display), src.display, limit)
    else:
        show = progress and len(src.files) > 1
        with tqdm(src.files, desc="reading", unit=" file", file=sys.stderr, disable=not show) as files:
            for path in files:
                yield from _read_file(path, path.relative_to(src.root).as_posix())


def _read_records(src: _Source, limit: int | None, progress: bool) -> list[_Raw]:
    """All records (or the first ``limit``), stopping the readers as soon as enough are read."""
    stream = _iter_source(src, limit, progress)
    try:
        return list(itertools.islice(stream, limit))
    finally:
        stream.close()


def _columns(raws: list[_Raw]) -> list[str]:
    """Column names in order of first appearance (records of one source need not share every key)."""
    seen: dict[str, None] = {}
    for raw in raws:
        if raw.record is not None:
            seen.update(dict.fromkeys(raw.record))
    return [str(c) for c in seen]


# ---- Layout --------------------------------------------------------------------------------------------------------


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
    for prompt, response in PAIR_COLUMNS:
        if prompt in columns and response in columns:
            context = next((c for c in CONTEXT_COLUMNS if c in columns and c not in (prompt, response)), None)
            return LayoutSpec("prompt_response", prompt, response, context, system, history=history)
    return None


def _unknown_layout(columns: list[str], where: str) -> UserError:
    return UserError(  # (preference pairs, with chosen + rejected columns, are read by scoring.pairs_data)
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


# ---- Normalisation: record -> messages + flags ---------------------------------------------------------------------


def _is_null(value: Any) -> bool:
    """None, or NaN: a null that went through pandas. Both mean "no value", never a coercion."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> tuple[str, bool]:
    """Text for a field that should hold text, and whether it had to be coerced (-> ``non_string_field``)."""
    if _is_null(value):
        return "", False
    if isinstance(value, str):
        return value, False
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str), True
    return str(value), True


def _turn_list(value: Any) -> list | None:
    """A list of turns ([] for a null); None when it is not a list. Turns stored as a JSON string (CSV cells,
    some Parquet exports) are decoded, not flagged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return [] if _is_null(value) else list(value) if isinstance(value, (list, tuple)) else None


class _Turns:
    """Builds one record's messages, collecting flags as fields are coerced or turns are dropped."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.flags: list[str] = []

    def text(self, value: Any) -> str:
        text, coerced = _text(value)
        if coerced:
            self.flags.append("non_string_field")
        return text

    def add(self, role: str, value: Any) -> None:
        self.messages.append({"role": role, "content": self.text(value)})

    def add_history(self, value: Any) -> None:
        value = _turn_list(value)
        if value is None:
            self.flags.append("malformed_turn")
        for pair in value or []:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                self.add("user", pair[0])
                self.add("assistant", pair[1])
            else:
                self.flags.append("malformed_turn")

    def add_chat(self, value: Any) -> None:
        value = _turn_list(value)
        if value is None:
            self.flags.append("malformed_turn")
        for turn in value or []:
            role = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
            role = ROLE_ALIASES.get(str(role).strip().lower()) if role is not None else None
            if role is None:
                self.flags.append("malformed_turn")
                continue
            self.add(role, turn["content"] if "content" in turn else turn.get("value"))


def _build_messages(record: dict, spec: LayoutSpec) -> tuple[list[dict[str, str]], list[str]]:
    """The record's turns in order: system, earlier history, then the final user/assistant pair (or chat turns)."""
    turns = _Turns()
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


def _display(turns: list[dict[str, str]]) -> str:
    """Prompt text: the user text for a lone user turn, else "role: content" blocks."""
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{t['role']}: {t['content']}" for t in turns)


def _split(messages: list[dict[str, str]], flags: list[str]) -> tuple[str, str]:
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
    return _display(before), response


# ---- Ids, fingerprint, table ---------------------------------------------------------------------------------------


def _column_ids(raws: list[_Raw], column: str) -> tuple[list[str] | None, str]:
    """str() of the column's values if all are present and unique, else (None, why not)."""
    ids: list[str] = []
    seen: set[str] = set()
    for raw in raws:
        value = raw.record.get(column) if raw.record is not None else None
        if _is_null(value):
            return None, f"row {raw.where} has no value"
        text = str(value)
        if text in seen:
            return None, f"value {text!r} repeats at {raw.where}"
        seen.add(text)
        ids.append(text)
    return ids, ""


def _pick_ids(raws: list[_Raw], spec: LayoutSpec, columns: list[str]) -> tuple[list[str], str | None]:
    """Ids from a unique id column (a mapped one must qualify), else the global row numbers."""
    candidates = [spec.id] if spec.id else [c for c in ID_COLUMNS if c in columns]
    for column in candidates:
        ids, why = _column_ids(raws, column)
        if ids is not None:
            return ids, column
        if spec.id:
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


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class _Built:
    table: pa.Table
    fingerprint: str
    flag_counts: dict[str, int]
    id_column: str | None


def _build_table(raws: list[_Raw], spec: LayoutSpec, columns: list[str], progress: bool) -> _Built:
    """Normalise every record into the EXAMPLES columns, flagging duplicates of earlier messages."""
    ids, id_column = _pick_ids(raws, spec, columns)
    cols: dict[str, list] = {name: [] for name in EXAMPLES.names}
    seen: set[bytes] = set()
    show = progress and len(raws) >= _ROW_BAR_MIN
    for idx, raw in enumerate(tqdm(raws, desc="normalising", unit=" rows", file=sys.stderr, disable=not show)):
        flags = [raw.flag]
        if raw.record is None:
            messages_json, prompt, response = "[]", "", ""
        else:
            messages, found = _build_messages(raw.record, spec)
            prompt, response = _split(messages, found)
            messages_json = _dumps(messages)
            key = hashlib.blake2b(messages_json.encode(), digest_size=16).digest()
            if key in seen:
                found.append("duplicate")
            seen.add(key)
            flags += found
        cols["idx"].append(idx)
        cols["messages"].append(messages_json)
        cols["prompt"].append(prompt)
        cols["response"].append(response)
        cols["flag"].append(join_flags(*flags))
        cols["source"].append(raw.where)
        cols["original"].append(_dumps(raw.original))
    cols["id"] = ids
    cols["kind"] = ["sft"] * len(raws)
    # A row without messages (invalid JSON, not an object) is fingerprinted by what was read instead.
    contents = (m if m != "[]" else o for m, o in zip(cols["messages"], cols["original"]))
    counts: dict[str, int] = {}
    for flag in cols["flag"]:
        for reason in flag.split(",") if flag else ():
            counts[reason] = counts.get(reason, 0) + 1
    return _Built(pa.table(cols, schema=EXAMPLES), fingerprint_rows(ids, contents), counts, id_column)


# ---- Public API ----------------------------------------------------------------------------------------------------


def _result(meta: dict, cache: Cache, already_present: bool) -> IngestResult:
    return IngestResult(
        name=meta["name"], fingerprint=meta["fingerprint"], n_rows=int(meta["n_rows"]),
        flag_counts=dict(meta["flag_counts"]), layout=meta["layout"], already_present=already_present,
        path=cache.examples_path(meta["name"]),
    )


def ingest(source: str, cache: Cache, name: str | None = None, limit: int | None = None,
           field_map: dict[str, str] | None = None, replace: bool = False, progress: bool = True) -> IngestResult:
    """Read SOURCE, normalise every record to messages, and store ``datasets/<name>/`` in the cache.

    Re-ingesting identical content under the same name is a no-op (``already_present``), so scripts can call
    this unconditionally. Different content under an existing name is refused unless ``replace``, because model
    passes and selections made on the old data would silently stop matching it.

    Example::

        ingest("/data/alpaca/*.json", Cache("cache"))            # -> dataset "alpaca", layout "alpaca"
        ingest("gsm8k/train.jsonl", cache, limit=100)             # -> "gsm8k-train", question/answer
        ingest("qa.csv", cache, field_map={"prompt": "q", "response": "a"})
    """
    if name is not None and not NAME_RE.match(name):
        raise UserError(f"dataset name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
                        "letter or digit")
    if limit is not None and int(limit) < 1:
        raise UserError(f"--limit {limit}: must be a positive number of rows")
    src = _resolve_source(source)
    name = name or src.default_name
    raws = _read_records(src, None if limit is None else int(limit), progress)
    if not raws:
        raise UserError(f"{src.display}: no records found")
    columns = _columns(raws)
    if not columns:
        raise UserError(f"{src.display}: none of the {len(raws)} records is a JSON object "
                        f"(first at {raws[0].where}: {_dumps(raws[0].original)[:80]})")
    from scoring.pairs_data import build_pair_table, detect_pair_layout  # pairs first: they may look like chat
    spec = detect_pair_layout(columns, field_map, src.display) or detect_layout(columns, field_map, src.display)
    kind = "sft" if isinstance(spec, LayoutSpec) else "pair"
    built = _build_table(raws, spec, columns, progress) if kind == "sft" else build_pair_table(raws, spec, columns)

    old = read_json(cache.dataset_meta_path(name))
    if old and cache.examples_path(name).is_file():
        if old.get("fingerprint") == built.fingerprint:
            return _result(old, cache, already_present=True)
        if not replace:
            raise UserError(f"dataset {name!r} already holds other data (from {old.get('source')}); "
                            "pass --replace to overwrite it, or --name to store this one under another name")
    meta = {
        "name": name, "fingerprint": built.fingerprint, "source": src.display, "layout": spec.layout,
        "kind": kind, "n_rows": len(raws), "flag_counts": built.flag_counts, "columns": columns,
        "id_column": built.id_column, "limit": limit, "field_map": field_map or None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # Examples first, meta last: a dataset is listed only once its examples are complete.
    atomic_write_parquet(cache.examples_path(name), built.table)
    atomic_write_json(cache.dataset_meta_path(name), meta)
    return _result(meta, cache, already_present=False)


def list_datasets(cache: Cache) -> list[dict]:
    """The meta of every ingested dataset, sorted by name."""
    metas = []
    for path in sorted((cache.root / "datasets").glob("*/meta.json")):
        try:
            meta = read_json(path)
        except (OSError, ValueError):  # unreadable: leave it out rather than break every listing
            continue
        if isinstance(meta, dict) and "name" in meta:
            metas.append(meta)
    return sorted(metas, key=lambda m: m["name"])


def dataset_meta(cache: Cache, name: str) -> dict:
    """One dataset's meta; a UserError naming the datasets that do exist when it is missing."""
    meta = read_json(cache.dataset_meta_path(name)) if NAME_RE.match(name or "") else None
    if meta is None:
        known = [m["name"] for m in list_datasets(cache)]
        listing = f"known datasets: {', '.join(known)}" if known else "no datasets have been ingested yet"
        raise UserError(f"no dataset named {name!r} in {cache.root} ({listing})")
    return meta


def load_examples(cache: Cache, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The examples table of a dataset (optionally only some columns), in idx order."""
    dataset_meta(cache, name)
    unknown = [c for c in columns or [] if c not in PAIR_EXAMPLES.names]  # pair datasets add "rejected"
    if unknown:
        raise UserError(f"unknown examples column {unknown[0]!r}; columns are {', '.join(PAIR_EXAMPLES.names)}")
    try:
        table = pq.read_table(cache.examples_path(name), columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"dataset {name!r}: cannot read its examples ({e}); ingest it again") from None
    return table.to_pandas()
