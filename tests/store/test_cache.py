"""scoring.store.cache: the cache's paths and its write-then-rename contract (a reader never sees half a file)."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.store.cache import (
    Cache,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    read_json,
    scratch_dir,
)
from scoring.store.cache import tmp_path as temp_name  # (pytest's tmp_path fixture has the same name)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_writes_give_the_content_and_leave_no_temp_files(tmp_path):
    folder = tmp_path / "deep" / "er"  # parents are created
    atomic_write_bytes(folder / "blob.bin", b"\x00\x01payload")
    atomic_write_json(folder / "meta.json", {"b": 2, "a": [1, "x"], "when": Path("/p")})
    table = pa.table({"idx": [3, 1, 2], "name": ["c", "a", "b"]})
    atomic_write_parquet(folder / "rows.parquet", table)

    assert (folder / "blob.bin").read_bytes() == b"\x00\x01payload"
    text = (folder / "meta.json").read_text()
    assert json.loads(text) == {"a": [1, "x"], "b": 2, "when": "/p"}  # unknown types as str
    assert text.index('"a"') < text.index('"b"') and text.endswith("\n")  # sorted keys, one trailing newline
    assert pq.read_table(folder / "rows.parquet").equals(table)
    assert _leftovers(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == ["blob.bin", "meta.json", "rows.parquet"]


def test_rewriting_replaces_the_file_whole(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"v": "a much longer first version " * 20})
    atomic_write_json(path, {"v": 2})
    assert read_json(path) == {"v": 2}
    assert _leftovers(tmp_path) == []


def test_a_concurrent_reader_sees_only_whole_versions(tmp_path):
    """While one thread rewrites a file with versions of different sizes, another reads it again and again: every
    read is exactly one of the versions (a write in place would show truncated or mixed content)."""
    path = tmp_path / "big.bin"
    versions = [bytes([v]) * (256 * 1024 * (v + 1)) for v in range(4)]  # 256 KiB .. 1 MiB, each one byte value
    atomic_write_bytes(path, versions[0])
    stop = threading.Event()
    seen, bad = set(), []

    def reader():
        while not stop.is_set():
            data = path.read_bytes()
            if data not in versions:
                bad.append(len(data))
            else:
                seen.add(data[0])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(120):
            atomic_write_bytes(path, versions[i % len(versions)])
    finally:
        stop.set()
        thread.join()
    assert not bad, f"reader saw partial files of sizes {bad[:5]}"
    assert seen  # it did read
    assert _leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_in_place(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    atomic_write_json(path, {"version": 1})

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"version": 2})
    assert read_json(path) == {"version": 1}  # the reader still sees the old, whole file


def test_tmp_path_is_hidden_unique_and_beside_the_file(tmp_path):
    target = tmp_path / "part-000000000-000000064.parquet"
    a, b = temp_name(target), temp_name(target)
    assert a != b
    assert a.parent == target.parent and a.name.startswith(f".{target.name}.") and a.name.endswith(".tmp")
    a.write_bytes(b"half")
    assert list(tmp_path.glob("*.parquet")) == [] and list(tmp_path.glob("part-*")) == []


def test_read_json_default(tmp_path):
    assert read_json(tmp_path / "missing.json") is None
    assert read_json(tmp_path / "missing.json", default={"k": 1}) == {"k": 1}
    atomic_write_json(tmp_path / "there.json", [1, 2])
    assert read_json(tmp_path / "there.json", default={"k": 1}) == [1, 2]
    atomic_write_json(tmp_path / "null.json", None)
    assert read_json(tmp_path / "null.json", default=7) is None  # a stored null is not a missing file


def test_cache_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = Cache("~/c")
    root = (tmp_path / "c").resolve()
    assert cache.root == root and root.is_dir() and list(root.iterdir()) == []  # only the root is created
    assert repr(cache) == f"Cache({str(root)!r})"
    assert cache.examples_path("d") == root / "datasets" / "d" / "examples.parquet"
    assert cache.dataset_meta_path("d") == root / "datasets" / "d" / "meta.json"
    assert cache.pass_dir("k") == root / "passes" / "k"
    assert cache.parts_dir("k") == root / "passes" / "k" / "parts"
    assert cache.map_path("k") == root / "passes" / "k" / "layout.parquet"  # the name existing caches use
    assert cache.models_dir() == root / "models"
    assert cache.jobs_dir() == root / "jobs"
    assert cache.selections_dir("d") == root / "selections" / "d"
    assert cache.exports_dir() == root / "exports"
    assert cache.logs_dir() == root / "logs"
    assert Cache(root).root == cache.root


def test_scratch_dir_is_private_and_inside_the_cache(cache):
    a, b = scratch_dir(cache), scratch_dir(cache)
    assert a != b and a.is_dir() and b.is_dir()
    assert a.parent == b.parent == cache.root / "tmp"
    assert os.stat(a).st_dev == os.stat(cache.root).st_dev  # same filesystem: renames out of it are atomic
