"""scoring.store.parts: part names and ranges, SQL string quoting, and reading a pass through DuckDB."""
from __future__ import annotations

import pyarrow as pa
import pytest

from scoring.store.cache import atomic_write_parquet, tmp_path as temp_name
from scoring.store.parts import claim_path, connect, done_ranges, part_path, parts_glob, read_pass, sql_str


@pytest.mark.parametrize("text", ["plain", "it's", "''", "a'b'c", "/tmp/o'brien/part-*.parquet", "", "ü ' \\ \""])
def test_sql_str_quotes_any_text(text):
    literal = sql_str(text)
    assert literal.startswith("'") and literal.endswith("'")
    assert connect().execute(f"SELECT {literal}").fetchone()[0] == text  # DuckDB reads back the same text


def test_sql_str_doubles_quotes_and_takes_paths(tmp_path):
    assert sql_str("it's") == "'it''s'"
    assert sql_str(tmp_path / "x") == f"'{tmp_path / 'x'}'"
    assert sql_str(3) == "'3'"


def test_part_and_claim_names(tmp_path):
    assert part_path(tmp_path, 0, 64) == tmp_path / "part-000000000-000000064.parquet"
    assert part_path(tmp_path, 123456, 1234567).name == "part-000123456-001234567.parquet"
    assert claim_path(tmp_path, 64, 128) == tmp_path / ".claim-000000064-000000128"


def test_done_ranges_round_trip_part_path(tmp_path):
    parts = tmp_path / "parts"
    assert done_ranges(parts) == set()  # no folder yet
    ranges = {(0, 64), (64, 128), (128, 150), (999_999_000, 1_000_000_000)}
    for start, end in ranges:
        atomic_write_parquet(part_path(parts, start, end), pa.table({"idx": [start]}))
    claim_path(parts, 150, 200).touch()  # a chunk in flight: claimed, no part yet
    temp_name(part_path(parts, 150, 200)).write_bytes(b"half")  # and its half-written part
    assert done_ranges(parts) == ranges


def test_read_pass_with_no_parts_is_empty_with_the_columns(cache):
    for key in ("never-run", "empty"):
        if key == "empty":
            cache.parts_dir(key).mkdir(parents=True)
        frame = read_pass(cache, key, ["idx", "loss_sum", "embedding"])
        assert list(frame.columns) == ["idx", "loss_sum", "embedding"] and len(frame) == 0
        assert parts_glob(cache, key) is None
    assert parts_glob(cache, None) is None and parts_glob(cache, "") is None


def test_read_pass_reads_every_part_in_idx_order(cache):
    parts = cache.parts_dir("k")
    # the scoring order is shuffled: each part holds scattered idx values
    atomic_write_parquet(part_path(parts, 0, 3), pa.table({"idx": [5, 0, 3], "loss_sum": [5.0, 0.0, 3.0],
                                                            "id": ["e5", "e0", "e3"]}))  # fmt: skip
    atomic_write_parquet(part_path(parts, 3, 6), pa.table({"idx": [4, 1, 2], "loss_sum": [4.0, 1.0, 2.0],
                                                            "id": ["e4", "e1", "e2"]}))  # fmt: skip
    temp_name(part_path(parts, 6, 9)).write_bytes(b"not parquet")  # a hidden temp file is never read
    assert parts_glob(cache, "k") == str(parts / "part-*.parquet")
    frame = read_pass(cache, "k", ["idx", "loss_sum"])
    assert list(frame.columns) == ["idx", "loss_sum"]
    assert frame["idx"].tolist() == [0, 1, 2, 3, 4, 5]
    assert frame["loss_sum"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert read_pass(cache, "k", ["id", "idx"])["id"].tolist() == [f"e{i}" for i in range(6)]
