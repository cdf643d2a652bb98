"""Ingest: layouts, ids, flags, errors, sources and storage (scoring/ingest/)."""
from __future__ import annotations

import codecs
import csv
import gzip
import json
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from scoring.ingest import catalog, sources, tables
from scoring.ingest.catalog import dataset_meta, ingest, list_datasets, load_examples, load_row
from scoring.ingest.layouts import FLAGS, parse_field_map
from scoring.ingest.tables import Fingerprint
from scoring.errors import UserError
from scoring.schema import EXAMPLES
from scoring.store.cache import Cache

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
needs_data = pytest.mark.skipif(not DATA.exists(), reason="shared data folder not present")

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue"},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
]


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def messages(df: pd.DataFrame, i: int) -> list[dict]:
    return json.loads(df["messages"].iloc[i])


# ---------------------------------------------------------------------------------------------------- layouts


def test_alpaca_layout_folds_input(tmp_path, cache):
    res = ingest(str(write_json(tmp_path / "a.json", ALPACA)), cache, name="a", progress=False)
    assert (res.layout, res.n_rows, res.flag_counts, res.already_present) == ("alpaca", 3, {}, False)
    df = load_examples(cache, "a")
    assert messages(df, 0) == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                               {"role": "assistant", "content": "5"}]
    assert df["prompt"].tolist()[:2] == ["Add the numbers.\n\n2 and 3", "Name a colour."]
    assert df["response"].tolist() == ["5", "Blue", "Hi!"]
    assert df["id"].tolist() == ["0", "1", "2"]
    assert df["source"].tolist() == ["a.json:#0", "a.json:#1", "a.json:#2"]
    assert json.loads(df["original"].iloc[0]) == ALPACA[0]
    assert set(df["kind"]) == {"sft"} and set(df["flag"]) == {""}


@needs_data
def test_gsm8k_question_answer_with_limit(cache):
    res = ingest(str(DATA / "gsm8k" / "train.jsonl"), cache, limit=25, progress=False)
    assert (res.name, res.layout, res.n_rows) == ("gsm8k-train", "prompt_response", 25)
    df = load_examples(cache, "gsm8k-train")
    first = json.loads((DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[0])
    assert df["prompt"].iloc[0] == first["question"] and df["response"].iloc[0] == first["answer"]
    assert df["source"].iloc[24] == "train.jsonl:25"


@needs_data
def test_lima_history_becomes_earlier_turns(cache):
    res = ingest(str(DATA / "lima" / "lima.json"), cache, progress=False)
    assert (res.name, res.layout, res.n_rows, res.flag_counts) == ("lima", "alpaca", 1029, {})
    df = load_examples(cache, "lima")
    raw = json.loads((DATA / "lima" / "lima.json").read_text())[-1]
    msgs = messages(df, 1028)
    assert len(msgs) == 2 * len(raw["history"]) + 2
    assert msgs[0] == {"role": "user", "content": raw["history"][0][0]}
    assert msgs[1] == {"role": "assistant", "content": raw["history"][0][1]}
    assert msgs[-2:] == [{"role": "user", "content": raw["instruction"]}, {"role": "assistant", "content": raw["output"]}]
    assert df["response"].iloc[1028] == raw["output"]
    assert df["prompt"].iloc[1028].startswith("user: " + raw["history"][0][0][:20])
    assert messages(df, 0)[0]["role"] == "user" and len(messages(df, 0)) == 2


def test_chat_messages_and_system(tmp_path, cache):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"},
                      {"role": "assistant", "content": "Bye"}]},
        {"messages": [{"role": "user", "content": "Only a question"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                      {"role": "user", "content": "dangling"}]},
    ]
    res = ingest(str(write_jsonl(tmp_path / "chat.jsonl", rows)), cache, name="chat", progress=False)
    assert res.layout == "chat"
    assert res.flag_counts == {"no_assistant_turn": 2}
    df = load_examples(cache, "chat")
    assert messages(df, 0) == rows[0]["messages"]
    assert df["response"].iloc[0] == "Bye"
    assert df["prompt"].iloc[0] == "system: Be brief.\n\nuser: Hi\n\nassistant: Hello\n\nuser: Bye?"
    assert df["flag"].tolist() == ["", "no_assistant_turn", "no_assistant_turn"]
    assert (df["prompt"].iloc[1], df["response"].iloc[1]) == ("Only a question", "")
    assert (df["prompt"].iloc[2], df["response"].iloc[2]) == ("Q", "A")


def test_sharegpt_conversations(tmp_path, cache):
    rows = [{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                               {"from": "gpt", "value": "A"}]},
            {"conversations": [{"from": "human", "value": "Q2"}, {"from": "alien", "value": "?"},
                               {"from": "gpt", "value": "A2"}]}]
    res = ingest(str(write_json(tmp_path / "sg.json", rows)), cache, name="sg", progress=False)
    assert res.layout == "chat" and res.flag_counts == {"malformed_turn": 1}
    df = load_examples(cache, "sg")
    assert messages(df, 0) == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                               {"role": "assistant", "content": "A"}]
    assert (df["response"].iloc[1], df["flag"].iloc[1]) == ("A2", "malformed_turn")


def test_prompt_response_with_context_and_system(tmp_path, cache):
    rows = [{"instruction": "Summarise.", "context": "Long text.", "response": "Short.", "system": "Be kind."}]
    res = ingest(str(write_jsonl(tmp_path / "dolly.jsonl", rows)), cache, name="d", progress=False)
    assert res.layout == "prompt_response"
    assert messages(load_examples(cache, "d"), 0) == [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Summarise.\n\nLong text."},
        {"role": "assistant", "content": "Short."}]


def test_unknown_layout_names_columns_and_map(tmp_path, cache):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"foo": "a", "bar": "b"}])
    with pytest.raises(UserError) as err:
        ingest(str(path), cache, progress=False)
    msg = str(err.value)
    assert "foo" in msg and "bar" in msg and "--map prompt=<column> --map response=<column>" in msg


def test_field_map(tmp_path, cache):
    rows = [{"q": "What?", "a": "That.", "key": "k1", "bg": "ctx", "grp": "x"},
            {"q": "Who?", "a": "Me.", "key": "k2", "bg": "", "grp": "x"}]
    path = write_jsonl(tmp_path / "odd.jsonl", rows)
    fm = parse_field_map(["prompt=q", "response=a", "id=key", "context=bg"])
    res = ingest(str(path), cache, name="m", field_map=fm, progress=False)
    assert res.layout == "mapped"
    df = load_examples(cache, "m")
    assert df["id"].tolist() == ["k1", "k2"]
    assert df["prompt"].tolist() == ["What?\n\nctx", "Who?"]
    assert dataset_meta(cache, "m")["id_column"] == "key"
    # A map naming only the id keeps the detected content columns.
    res = ingest(str(write_json(tmp_path / "a.json", [dict(r, uuid=f"u{i}") for i, r in enumerate(ALPACA)])),
                 cache, name="a", field_map={"id": "uuid"}, progress=False)
    assert res.layout == "mapped" and load_examples(cache, "a")["id"].tolist() == ["u0", "u1", "u2"]
    with pytest.raises(UserError, match="nope"):
        ingest(str(path), cache, name="m2", field_map={"prompt": "nope", "response": "a"}, progress=False)
    with pytest.raises(UserError, match="unique"):
        ingest(str(path), cache, name="m3", field_map={"prompt": "q", "response": "a", "id": "grp"}, progress=False)


@pytest.mark.parametrize("pairs", [["prompt"], ["prompt="], ["colour=red"], ["prompt=a", "prompt=b"]])
def test_parse_field_map_errors(pairs):
    with pytest.raises(UserError):
        parse_field_map(pairs)


def test_parse_field_map_ok():
    assert parse_field_map(["prompt=question", "response = a=b"]) == {"prompt": "question", "response": "a=b"}
    assert parse_field_map([]) == {}


# ---------------------------------------------------------------------------------------------------- ids


def test_ids_from_unique_column_else_row_numbers(tmp_path, cache):
    rows = [dict(r, id=100 + i) for i, r in enumerate(ALPACA)]
    ingest(str(write_json(tmp_path / "u.json", rows)), cache, name="u", progress=False)
    assert load_examples(cache, "u")["id"].tolist() == ["100", "101", "102"]
    assert dataset_meta(cache, "u")["id_column"] == "id"
    rows[2]["id"] = 100
    ingest(str(write_json(tmp_path / "n.json", rows)), cache, name="n", progress=False)
    assert load_examples(cache, "n")["id"].tolist() == ["0", "1", "2"]
    assert dataset_meta(cache, "n")["id_column"] is None
    rows = [dict(r, uid=None if i == 1 else f"x{i}") for i, r in enumerate(ALPACA)]
    ingest(str(write_json(tmp_path / "null.json", rows)), cache, name="null", progress=False)
    assert load_examples(cache, "null")["id"].tolist() == ["0", "1", "2"]


# ---------------------------------------------------------------------------------------------------- flags


def test_every_flag_reason(tmp_path, cache):
    lines = [
        json.dumps({"instruction": "Fine", "input": "", "output": "ok"}).encode(),  # 1 clean
        b'{"instruction": "broken", "output": ',  # 2 invalid_json
        b'{"instruction": "caf\xe9 \xff", "input": "", "output": "bytes"}',  # 3 bad_encoding
        json.dumps({"instruction": "Number", "input": "", "output": 42}).encode(),  # 4 non_string_field
        json.dumps({"instruction": "Empty", "input": "", "output": "  "}).encode(),  # 5 empty_response
        json.dumps({"instruction": "", "input": "", "output": "no prompt"}).encode(),  # 6 empty_prompt
        json.dumps({"instruction": "Fine", "input": "", "output": "ok"}).encode(),  # 7 duplicate of 1
        b"12",  # 8 not_an_object
        json.dumps({"instruction": "List", "input": ["a", 1], "output": None}).encode(),  # 9
        b"",  # blank line: not a record
        json.dumps({"instruction": "Last", "input": "", "output": "fine"}).encode(),  # 11 clean
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    res = ingest(str(path), cache, name="bad", progress=False)
    df = load_examples(cache, "bad")
    assert df["flag"].tolist() == [
        "", "invalid_json", "bad_encoding", "non_string_field", "empty_response", "empty_prompt", "duplicate",
        "not_an_object", "non_string_field,empty_response", "",
    ]
    assert df["source"].tolist()[-1] == "bad.jsonl:11" and df["idx"].tolist() == list(range(10))
    assert res.flag_counts == {"invalid_json": 1, "bad_encoding": 1, "non_string_field": 2, "empty_response": 2,
                               "empty_prompt": 1, "duplicate": 1, "not_an_object": 1}
    bad = df.iloc[1]
    assert (bad["prompt"], bad["response"], bad["messages"]) == ("", "", "[]")
    assert json.loads(bad["original"]) == {"raw": '{"instruction": "broken", "output": '}
    assert "\ufffd" in df["prompt"].iloc[2]
    assert df["response"].iloc[3] == "42" and df["prompt"].iloc[8] == 'List\n\n["a", 1]'
    assert json.loads(df["original"].iloc[7]) == 12
    assert set(res.flag_counts) <= set(FLAGS) | {"no_assistant_turn", "malformed_turn"}


def test_no_assistant_turn_flag(tmp_path, cache):
    rows = [{"messages": []}, {"messages": [{"role": "user", "content": "x"}]}]
    res = ingest(str(write_jsonl(tmp_path / "c.jsonl", rows)), cache, name="c", progress=False)
    assert load_examples(cache, "c")["flag"].tolist() == ["no_assistant_turn,empty_prompt", "no_assistant_turn"]
    assert res.flag_counts["no_assistant_turn"] == 2


def test_bad_encoding_in_json_array_flags_only_affected_rows(tmp_path, cache):
    body = json.dumps(ALPACA).encode().replace(b"Blue", b"Bl\xffue")
    path = tmp_path / "enc.json"
    path.write_bytes(body)
    ingest(str(path), cache, name="enc", progress=False)
    assert load_examples(cache, "enc")["flag"].tolist() == ["", "bad_encoding", ""]


@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
def test_a_json_array_is_read_an_element_at_a_time_whatever_the_chunk(tmp_path, monkeypatch, chunk):
    """A JSON array file is decoded and parsed a chunk at a time: every chunk size gives json.loads's records
    (numbers, multi-byte characters and elements cut at any byte), a BOM is skipped, a bad byte flags only its row,
    and a broken file's error names json.loads's line and column."""
    monkeypatch.setattr(sources, "_JSON_CHUNK", chunk)
    records = [{"instruction": f"café ✓ {i}", "n": 12345.678e-3 * i, "l": [1, None, True]} for i in range(40)]
    records.insert(7, 42)
    for indent in (None, 2):
        path = tmp_path / f"a{indent}.json"
        path.write_bytes(codecs.BOM_UTF8 + json.dumps(records, indent=indent, ensure_ascii=False).encode())
        raws = list(sources._read_json(path, "a.json"))
        assert [r.original for r in raws] == records and raws[40].where == "a.json:#40"
        assert [r.flag for r in raws] == [""] * 7 + ["not_an_object"] + [""] * 33
    path = tmp_path / "enc.json"
    path.write_bytes(json.dumps(ALPACA).encode().replace(b"Blue", b"Bl\xffue"))
    assert [r.flag for r in sources._read_json(path, "enc.json")] == ["", "bad_encoding", ""]
    for broken in ('[\n  {"a": 1},\n  {"a": oops}\n]\n', '[{"a": 1},]', '[{"a": 1} {"b": 2}]', '[{"a": 1}] x',
                   '[{"a": "cut\n"}]'):  # fmt: skip
        with pytest.raises(json.JSONDecodeError) as expected:
            json.loads(broken)
        path.write_text(broken)
        with pytest.raises(UserError, match=f"line {expected.value.lineno}, column {expected.value.colno}: "):
            list(sources._read_json(path, "broken.json"))


# ---------------------------------------------------------------------------------------------------- errors


def test_invalid_whole_json_names_file_and_line(tmp_path, cache):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": oops}\n]\n')
    with pytest.raises(UserError) as err:
        ingest(str(path), cache, progress=False)
    assert "broken.json" in str(err.value) and "line 3" in str(err.value) and "column" in str(err.value)


def test_missing_file_empty_source_and_bad_names(tmp_path, cache):
    with pytest.raises(UserError, match="no such file"):
        ingest(str(tmp_path / "missing.jsonl"), cache, progress=False)
    with pytest.raises(UserError, match="no files match"):
        ingest(str(tmp_path / "nothing" / "*.json"), cache, progress=False)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="no records"):
        ingest(str(tmp_path / "empty.jsonl"), cache, progress=False)
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(UserError, match="no records"):
        ingest(str(tmp_path / "empty.json"), cache, progress=False)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="unsupported"):
        ingest(str(tmp_path / "notes.txt"), cache, progress=False)
    path = write_json(tmp_path / "a.json", ALPACA)
    for bad in ("../x", "", "-a", "a" * 65, "a b"):
        with pytest.raises(UserError, match="dataset name"):
            ingest(str(path), cache, name=bad, progress=False)
    with pytest.raises(UserError, match="limit"):
        ingest(str(path), cache, limit=0, progress=False)


def test_json_object_holding_records_and_jsonl_named_json(tmp_path, cache):
    res = ingest(str(write_json(tmp_path / "wrapped.json", {"version": 1, "data": ALPACA})), cache,
                 name="w", progress=False)
    assert res.n_rows == 3
    res = ingest(str(write_jsonl(tmp_path / "lines.json", ALPACA)), cache, name="l", progress=False)
    assert res.n_rows == 3 and load_examples(cache, "l")["source"].iloc[0] == "lines.json:1"
    with pytest.raises(UserError, match="one list"):
        ingest(str(write_json(tmp_path / "two.json", {"a": [], "b": []})), cache, progress=False)


def test_hub_id_failure_is_user_error(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(UserError) as err:
        ingest("davir-test-nonexistent-owner/nonexistent-dataset", cache, progress=False)
    assert "nonexistent-dataset" in str(err.value) and "Hugging Face" in str(err.value)
    assert time.time() - start < 20


# ---------------------------------------------------------------------------------------------------- storage


def test_reingest_is_noop_and_conflicts_need_replace(tmp_path, cache):
    first = ingest(str(write_json(tmp_path / "a.json", ALPACA)), cache, name="a", progress=False)
    mtime = first.path.stat().st_mtime_ns
    other = tmp_path / "elsewhere"
    other.mkdir()
    again = ingest(str(write_jsonl(other / "copy.jsonl", ALPACA)), cache, name="a", progress=False)
    assert again.already_present and again.fingerprint == first.fingerprint
    assert first.path.stat().st_mtime_ns == mtime
    changed = [dict(ALPACA[0], output="6")] + ALPACA[1:]
    with pytest.raises(UserError, match="--replace"):
        ingest(str(write_json(tmp_path / "b.json", changed)), cache, name="a", progress=False)
    replaced = ingest(str(tmp_path / "b.json"), cache, name="a", replace=True, progress=False)
    assert not replaced.already_present and replaced.fingerprint != first.fingerprint
    assert load_examples(cache, "a")["response"].iloc[0] == "6"
    with pytest.raises(UserError, match="--replace"):
        ingest(str(tmp_path / "a.json"), cache, name="a", limit=2, progress=False)
    assert not any((cache.root / "tmp").iterdir())  # the refused table, written aside first, is gone


def test_meta_list_load_round_trip(tmp_path, cache):
    path = write_json(tmp_path / "a.json", ALPACA)
    res = ingest(str(path), cache, name="zeta", progress=False)
    ingest(str(path), cache, name="alpha", limit=2, progress=False)
    assert [m["name"] for m in list_datasets(cache)] == ["alpha", "zeta"]
    meta = dataset_meta(cache, "zeta")
    assert meta["fingerprint"] == res.fingerprint and meta["n_rows"] == 3 and meta["kind"] == "sft"
    assert meta["source"] == str(path.resolve()) and meta["layout"] == "alpaca"
    assert meta["columns"] == ["instruction", "input", "output"] and meta["flag_counts"] == {}
    assert {"created", "id_column"} <= set(meta)
    assert pq.read_schema(res.path).remove_metadata().equals(EXAMPLES)
    assert load_examples(cache, "zeta", columns=["id", "response"]).columns.tolist() == ["id", "response"]
    with pytest.raises(UserError) as err:
        dataset_meta(cache, "nope")
    assert "alpha" in str(err.value) and "zeta" in str(err.value)
    with pytest.raises(UserError):
        load_examples(cache, "nope")
    with pytest.raises(UserError, match="column"):
        load_examples(cache, "zeta", columns=["nope"])


def test_ingest_streams_the_source_one_batch_at_a_time(tmp_path, cache, monkeypatch):
    """Ingest reads the source twice and never holds it: each Parquet row group is written with no record read
    beyond it, and the table is the one a single batch gives (a repeat across row groups is still a duplicate)."""
    rows = [dict(ALPACA[i % 3], instruction=f"task {i}") for i in range(10)] + [dict(ALPACA[1], instruction="task 1")]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    whole = ingest(str(path), cache, name="whole", progress=False)
    reads: list[int] = []  # records yielded by each read of the source so far
    writes: list[tuple[int, int]] = []  # (rows written with this row group, records read by then)
    real_reader, real_write = catalog.record_reader, pq.ParquetWriter.write_table

    def counting_reader(*args):
        records = real_reader(*args)

        def read():
            reads.append(0)
            for raw in records():
                reads[-1] += 1
                yield raw

        return read

    def spying_write(writer, table, *args, **kwargs):
        writes.append(((writes[-1][0] if writes else 0) + table.num_rows, reads[-1]))
        return real_write(writer, table, *args, **kwargs)

    monkeypatch.setattr(tables, "BATCH", 4)
    monkeypatch.setattr(catalog, "record_reader", counting_reader)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", spying_write)
    streamed = ingest(str(path), cache, name="streamed", progress=False)
    assert reads == [11, 11]  # the survey, then the table
    assert writes == [(4, 4), (8, 8), (11, 11)]  # nothing read ahead of the row group being written
    assert pq.ParquetFile(streamed.path).metadata.num_row_groups == 3
    assert (streamed.fingerprint, streamed.flag_counts) == (whole.fingerprint, {"duplicate": 1})
    pd.testing.assert_frame_equal(load_examples(cache, "streamed"), load_examples(cache, "whole"))
    assert load_examples(cache, "streamed")["flag"].tolist() == [""] * 10 + ["duplicate"]


def test_load_row_reads_one_example_from_its_row_group(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(tables, "BATCH", 4)
    rows = [dict(ALPACA[i % 3], instruction=f"task {i}") for i in range(10)]
    ingest(str(write_jsonl(tmp_path / "r.jsonl", rows)), cache, name="r", progress=False)
    whole = load_examples(cache, "r").set_index("idx")
    for idx in (0, 5, 9):
        assert load_row(cache, "r", idx, ["id", "prompt", "flag"]) == whole.loc[idx, ["id", "prompt", "flag"]].to_dict()
    assert load_row(cache, "r", 10, ["id"]) is None
    with pytest.raises(UserError, match="column"):
        load_row(cache, "r", 0, ["nope"])
    with pytest.raises(UserError):
        load_row(cache, "missing", 0, ["id"])


def fingerprint_rows(ids: list[str], contents: list[str]) -> str:
    fingerprint = Fingerprint()
    for row_id, content in zip(ids, contents, strict=True):
        fingerprint.add(row_id, content)
    return fingerprint.hexdigest()


def test_fingerprint_rows_is_order_and_boundary_sensitive():
    assert fingerprint_rows(["1", "2"], ["a", "b"]) != fingerprint_rows(["2", "1"], ["b", "a"])
    assert fingerprint_rows(["1"], ["ab"]) != fingerprint_rows(["1a"], ["b"])


# ---------------------------------------------------------------------------------------------------- sources


def test_parquet_csv_gzip_sources(tmp_path, cache):
    pd.DataFrame(ALPACA).to_parquet(tmp_path / "a.parquet")
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ALPACA)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in ALPACA)
    with gzip.open(tmp_path / "b.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(ALPACA, fh)
    results = {f: ingest(str(tmp_path / f), cache, name=f.replace(".", "_"), progress=False)
               for f in ("a.parquet", "a.csv", "a.jsonl.gz", "b.json.gz")}
    assert {r.n_rows for r in results.values()} == {3}
    assert len({r.fingerprint for r in results.values()}) == 1  # same content, same fingerprint
    assert load_examples(cache, "a_csv")["source"].tolist()[1] == "a.csv:#1"
    assert load_examples(cache, "a_jsonl_gz")["source"].tolist()[1] == "a.jsonl.gz:2"


def test_glob_and_folder_sources(tmp_path, cache):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_json(folder / "p-1.json", ALPACA[:2])
    write_jsonl(folder / "p-2.jsonl", ALPACA[2:])
    (folder / "README.md").write_text("not data")
    res = ingest(str(folder / "p-*"), cache, progress=False)
    assert (res.name, res.n_rows) == ("parts", 3)
    df = load_examples(cache, "parts")
    assert df["source"].tolist() == ["p-1.json:#0", "p-1.json:#1", "p-2.jsonl:1"]
    assert df["id"].tolist() == ["0", "1", "2"]
    by_folder = ingest(str(folder), cache, name="folder", progress=False)
    assert by_folder.fingerprint == res.fingerprint
    assert ingest(str(folder / "*.json*"), cache, name="lim", limit=2, progress=False).n_rows == 2


def test_save_to_disk_folder(tmp_path, cache):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ALPACA)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"test": ds.select([0]), "train": ds}).save_to_disk(str(tmp_path / "dd"))
    plain = ingest(str(tmp_path / "saved"), cache, progress=False)
    assert (plain.name, plain.n_rows, plain.layout) == ("saved", 3, "alpaca")
    split = ingest(str(tmp_path / "dd"), cache, limit=2, progress=False)
    assert split.n_rows == 2 and load_examples(cache, "dd")["source"].iloc[1] == "dd:#1"


# ---------------------------------------------------------------------------------------------------- real data


@needs_data
@pytest.mark.slow
def test_all_of_alpaca(cache):
    start = time.time()
    res = ingest(str(DATA / "alpaca" / "*.json"), cache, progress=False)
    elapsed = time.time() - start
    assert (res.name, res.layout, res.n_rows) == ("alpaca", "alpaca", 52002)
    assert res.flag_counts == {"empty_response": 28}
    assert elapsed < 60
    again = ingest(str(DATA / "alpaca"), cache, progress=False)
    assert again.already_present and again.fingerprint == res.fingerprint
    df = load_examples(cache, "alpaca", columns=["idx", "source"])
    assert df["idx"].iloc[-1] == 52001 and df["source"].iloc[3252] == "alpaca_data-03252-06382.json:#0"
