"""A pass holds its examples as Arrow record batches and turns into Python values only the chunk it tokenises: the
rows it gives are the ones asked for, in the order asked, across batch boundaries, and a pass over an Arrow table of
many batches writes the same parts as over the DataFrame."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from scoring.passes.engine import PassConfig
from scoring.passes.runner import INSTRUCTIONS, Rows, run_pass
from scoring.store.parts import read_pass
from tests.passes.test_engine import examples_frame, load


def in_batches(frame: pd.DataFrame, size: int) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return pa.Table.from_batches(table.to_batches(max_chunksize=size))


def test_take_gives_the_rows_asked_for_in_their_order_across_batches():
    frame = examples_frame(50)
    table = in_batches(frame, 7)
    assert table.column("messages").num_chunks == 8
    rows = Rows(table, ("idx", "id", "messages"))
    order = np.random.default_rng(3).permutation(50)
    expected = frame.to_dict("records")
    assert len(rows) == 50
    assert rows.take(order[:23]) == [{k: (int(v) if k == "idx" else v) for k, v in expected[i].items()} for i in order[:23]]
    assert rows.take([49, 0, 7, 6, 49]) == [expected[i] for i in (49, 0, 7, 6, 49)]  # both sides of each boundary
    assert rows.take([]) == []


def test_rows_keep_only_the_kinds_columns_from_a_frame_or_a_table():
    frame = examples_frame(5).assign(original="{}", flag="")
    from_frame, from_table = Rows(frame, INSTRUCTIONS.columns), Rows(in_batches(frame, 2), INSTRUCTIONS.columns)
    assert from_frame.take(range(5)) == from_table.take(range(5))
    assert set(from_frame.take([0])[0]) == set(INSTRUCTIONS.columns)
    assert len(Rows(frame.iloc[:0], INSTRUCTIONS.columns)) == 0


def test_a_pass_over_an_arrow_table_of_many_batches_writes_what_the_frame_does(tiny_model, cache):
    model, tokenizer = load(tiny_model)
    frame = examples_frame(30)
    config = PassConfig(chunk_size=4, max_length=128)
    columns = ["idx", "id", "loss_sum", "alone_loss_sum", "token_ids", "token_losses", "flag"]
    assert run_pass(cache, "frame", INSTRUCTIONS, model, tokenizer, frame, config) is True
    assert run_pass(cache, "arrow", INSTRUCTIONS, model, tokenizer, in_batches(frame, 9), config) is True
    pd.testing.assert_frame_equal(read_pass(cache, "arrow", columns), read_pass(cache, "frame", columns))
    assert sorted(read_pass(cache, "arrow", ["idx"])["idx"]) == list(range(30))
