"""Ingest, step 1: resolve a source string and read its records, whatever the file format.

A source is a file, a folder or glob of files (JSON, JSONL, Parquet, CSV, any of them gzipped), a
``datasets.save_to_disk`` folder, or a Hugging Face dataset id. Each record comes out as a :class:`Raw`: the
object as read, what goes into the ``original`` column, where it came from ("file:line" or "file:#row"), and any
flag a read problem earned (``invalid_json``, ``bad_encoding``, ``not_an_object``). A problem that leaves no row to
salvage (a file that does not parse as a whole, a missing file) is a UserError naming file and line.

Every reader yields its records lazily, so a source is never held whole: JSONL and CSV a line at a time, Parquet
a batch, a JSON array file an element at a time (:func:`_read_json_array`); only a JSON object that wraps the
record list is parsed as one document. Ingest reads a source twice (:func:`record_reader`).
"""
from __future__ import annotations

import codecs
import csv
import glob as globlib
import gzip
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from scoring.env import hub_offline
from scoring.errors import UserError
from scoring.schema import join_flags

# Longest first, so "x.jsonl.gz" is not taken for ".gz" of something else.
DATA_SUFFIXES = (".jsonl.gz", ".ndjson.gz", ".json.gz", ".csv.gz", ".jsonl", ".ndjson", ".json", ".parquet", ".csv")
_SURROGATES = re.compile("[\udc80-\udcff]")


@dataclass(slots=True)
class Raw:
    """One record as read, before normalisation."""

    record: dict | None  # None when the item is not a usable object (invalid JSON, a bare number ...)
    original: Any  # what goes, as JSON, into the ``original`` column
    where: str  # "file:line" (JSONL, 1-based) or "file:#i" (array / table rows, 0-based)
    flag: str = ""  # reasons found while reading


@dataclass
class Source:
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


def resolve_source(source: str) -> Source:
    """Decide what SOURCE names: a file, a folder, a glob, a save_to_disk folder or a Hugging Face id."""
    text = str(source).strip()
    if not text:
        raise UserError("no source given: pass a file, folder, glob pattern or Hugging Face dataset id")
    path = Path(text).expanduser()
    if path.is_file():
        path = path.resolve()
        _check_supported([path], text)
        return Source("files", str(path), _file_default_name(path), [path], path.parent)
    if path.is_dir():
        path = path.resolve()
        if _is_saved_dataset(path):
            return Source("disk", str(path), _sanitise(path.name), root=path)
        files = sorted(
            (f for f in path.rglob("*") if f.is_file() and _data_suffix(f)
             and not any(p.startswith(".") for p in f.relative_to(path).parts)),
            key=lambda f: f.relative_to(path).as_posix(),
        )
        if not files:
            raise UserError(f"{path}: no data files in this folder (looked for {', '.join(DATA_SUFFIXES)})")
        return Source("files", str(path), _sanitise(path.name), files, path)
    if globlib.has_magic(text):
        pattern = os.path.abspath(os.path.expanduser(text))
        files = sorted(Path(m) for m in globlib.glob(pattern, recursive=True) if Path(m).is_file())
        if not files:
            raise UserError(f"no files match {pattern}")
        _check_supported(files, pattern)
        # The folder before the first wildcard names the rows' sources and the dataset.
        root = Path(*itertools.takewhile(lambda p: not globlib.has_magic(p), Path(pattern).parts[:-1]))
        return Source("files", pattern, _sanitise(root.name), files, root)
    if _looks_local(text):
        raise UserError(f"{os.path.abspath(os.path.expanduser(text))}: no such file or folder")
    return Source("hub", text, _sanitise(text.replace("/", "-")))


# ---- Reading records -----------------------------------------------------------------------------------------------


def _decode(data: bytes) -> tuple[str, str]:
    """UTF-8 text and "bad_encoding" when bytes had to be replaced (never an exception for bad bytes)."""
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), "bad_encoding"


def _as_raw(value: Any, where: str, flag: str = "") -> Raw:
    if isinstance(value, dict):
        return Raw(value, value, where, flag)
    return Raw(None, value, where, join_flags(flag, "not_an_object"))


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_jsonl(path: Path, label: str) -> Iterator[Raw]:
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
                yield Raw(None, {"raw": text.rstrip("\r\n")}, where, join_flags(flag, "invalid_json"))
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


_JSON_CHUNK = 1 << 20  # characters of a JSON array file decoded and parsed at a time
_REPLACED = [0]  # bytes that were not UTF-8, replaced while decoding a JSON array file (see _note_replaced)


def _note_replaced(error: UnicodeDecodeError) -> tuple[str, int]:
    _REPLACED[0] += 1
    return "\ufffd", error.end


codecs.register_error("davir-noted-replace", _note_replaced)


def _starts_array(path: Path) -> bool:
    with _open_binary(path) as fh:
        head = fh.read(4096)
    return head.removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"["


def _read_json_array(path: Path, label: str) -> Iterator[Raw]:
    """A JSON array file, one element at a time (never the whole file): a chunk of text is decoded and its complete
    elements parsed, then the next; a parse error names file, line and column, as for a whole document."""
    decoder, parse = codecs.getincrementaldecoder("utf-8")("davir-noted-replace"), json.JSONDecoder().raw_decode
    buf, pos, line, col, i, replaced, eof = "", 0, 1, 1, 0, _REPLACED[0], False
    with _open_binary(path) as fh:
        def more() -> None:
            nonlocal buf, pos, line, col, eof
            done = buf[:pos]
            newlines = done.count("\n")
            line, col = line + newlines, (len(done) - done.rfind("\n") if newlines else col + len(done))
            data = fh.read(max(_JSON_CHUNK, len(buf) - pos))  # an element longer than a chunk: double the read
            eof = not data
            buf, pos = buf[pos:] + decoder.decode(data, final=eof), 0

        def fail(at: int, why: str):
            before = buf[:at]
            where = (line + before.count("\n"), at - before.rfind("\n") if "\n" in before else col + at)
            raise UserError(f"{path}: not valid JSON at line {where[0]}, column {where[1]}: {why}")

        more()
        expect = "["
        while True:
            while pos < len(buf) and buf[pos] in (" \t\r\n\ufeff" if expect == "[" else " \t\r\n"):  # BOM first
                pos += 1
            if pos == len(buf):
                if not eof:
                    more()
                    continue
                if expect != "end":
                    fail(pos, "Expecting ',' delimiter or ']'" if i else "Expecting value")
                return
            char = buf[pos]
            if expect == "[" or (expect == "," and char == ","):
                pos, expect = pos + 1, "value" if expect == "," else "first"
            elif expect in ("first", ",") and char == "]":
                pos, expect = pos + 1, "end"
            elif expect in ("value", "first"):
                try:
                    item, end = parse(buf, pos)
                except json.JSONDecodeError as e:  # cut off by the chunk's end (then read on), or invalid
                    cut = e.msg.startswith("Unterminated string") or e.pos >= len(buf) - 8
                    if not (cut and not eof):
                        fail(e.pos, e.msg)
                    more()
                    continue
                if end == len(buf) and not eof:  # a number may go on in the next chunk
                    more()
                    continue
                raw = _as_raw(item, f"{label}:#{i}")
                if _REPLACED[0] != replaced and "\ufffd" in json.dumps(item, ensure_ascii=False, default=str):
                    raw.flag = join_flags(raw.flag, "bad_encoding")  # this record held the bad bytes
                yield raw
                pos, expect, i = end, ",", i + 1
            else:
                fail(pos, "Extra data" if expect == "end" else "Expecting ',' delimiter")


def _read_json(path: Path, label: str) -> Iterator[Raw]:
    """A JSON file: an array is read an element at a time (:func:`_read_json_array`); anything else as a whole
    document. A parse error names file, line and column because no row can be salvaged."""
    if _starts_array(path):
        yield from _read_json_array(path, label)
        return
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


def _read_parquet(path: Path, label: str) -> Iterator[Raw]:
    """Row groups are read in batches, so --limit does not load the whole file."""
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file: {e}") from None
    rows = (row for batch in batches for row in batch.to_pylist())
    for i, row in enumerate(rows):
        yield Raw(row, row, f"{label}:#{i}")


def _fix_surrogates(row: dict) -> tuple[dict, str]:
    """CSV is read with errors="surrogateescape" so bad bytes survive to here, where they are replaced and flagged."""
    if not any(isinstance(v, str) and _SURROGATES.search(v) for v in row.values()):
        return row, ""
    fixed = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(v, str) else v
             for k, v in row.items()}
    return fixed, "bad_encoding"


def _read_csv(path: Path, label: str) -> Iterator[Raw]:
    """A header row then records; every cell is text. Extra cells go to "_extra", missing ones are empty."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long answers exceed the 128 KiB default
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, restkey="_extra")
        try:
            for i, row in enumerate(reader):
                row, flag = _fix_surrogates(row)
                yield Raw(row, row, f"{label}:#{i}", flag)
        except csv.Error as e:
            raise UserError(f"{path}: line {reader.line_num}: not valid CSV: {e}") from None


def _read_file(path: Path, label: str) -> Iterator[Raw]:
    suffix = _data_suffix(path) or ""
    kind = suffix.removesuffix(".gz")
    reader = {".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}.get(kind, _read_jsonl)
    try:
        yield from reader(path, label)
    except (OSError, EOFError) as e:  # unreadable, truncated or not-really-gzip files
        raise UserError(f"{path}: cannot read: {e}") from None


def _iter_dataset(ds, label: str, limit: int | None) -> Iterator[Raw]:
    """Rows of a ``datasets.Dataset`` in order, read in batches (row-by-row iteration is slow)."""
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    i = 0
    for batch in ds.iter(batch_size=1000):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            row = dict(zip(keys, values))
            yield Raw(row, row, f"{label}:#{i}")
            i += 1


def _load_saved(path: Path):
    """A save_to_disk folder; of a DatasetDict, the "train" split, else the only split."""
    import datasets  # optional heavy dependency: only for save_to_disk folders and hub ids

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
    if hub_offline():
        datasets.config.HF_HUB_OFFLINE = True
    try:
        ds = datasets.load_dataset(source, split="train")
    except Exception as e:  # noqa: BLE001 -- not found, offline, bad config: all the user's to fix
        raise UserError(f"{source!r} is not a local file or folder, and loading it as a Hugging Face dataset "
                        f"failed: {type(e).__name__}: {e}") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = saved
    return ds


def record_reader(src: Source, limit: int | None) -> Callable[[], Iterator[Raw]]:
    """A function giving the source's records (or its first ``limit``) afresh at each call, stopping the readers as
    soon as enough are read: ingest reads a source twice instead of holding it. A ``datasets`` source (a
    save_to_disk folder, a hub id) is loaded once, memory-mapped; files are read again."""
    if src.kind in ("disk", "hub"):
        ds = _load_saved(src.root) if src.kind == "disk" else _load_hub(src.display)
        label = src.root.name if src.kind == "disk" else src.display
        return lambda: _iter_dataset(ds, label, limit)

    def files() -> Iterator[Raw]:
        for path in src.files:
            yield from _read_file(path, path.relative_to(src.root).as_posix())

    return lambda: _limited(files(), limit)


def _limited(stream: Iterator[Raw], limit: int | None) -> Iterator[Raw]:
    try:
        yield from itertools.islice(stream, limit)
    finally:
        stream.close()


def read_records(src: Source, limit: int | None) -> list[Raw]:
    """All records (or the first ``limit``), as a list (for a sample that is small by design: ``demo``)."""
    return list(record_reader(src, limit)())


def record_columns(raws: list[Raw]) -> list[str]:
    """Column names in order of first appearance (records of one source need not share every key)."""
    seen: dict[str, None] = {}
    for raw in raws:
        if raw.record is not None:
            seen.update(dict.fromkeys(raw.record))
    return [str(c) for c in seen]
