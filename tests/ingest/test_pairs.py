"""Ingest of preference pairs: the three layouts seen in the wild, every degenerate-pair flag, --limit, --map, the
planted swapped-pair file, and the real shared files when they are there."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from scoring.errors import UserError
from scoring.ingest import catalog
from scoring.ingest.demo import write_planted_pairs
from scoring.ingest.layouts import FLAGS, parse_field_map
from scoring.ingest.pairs import PAIR_FLAGS, parse_transcript
from scoring.schema import PAIR_EXAMPLES

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
HH = "\n\nHuman: {q}\n\nAssistant: {a}"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ingest_rows(tmp_path, cache, rows, name="pairs", **kw):
    result = catalog.ingest(str(write_jsonl(tmp_path / f"{name}.jsonl", rows)), cache, name=name, progress=False, **kw)
    return result, catalog.load_examples(cache, name)


def turns(df, i):
    return json.loads(df["messages"][i])


def test_prompt_chosen_rejected_strings(tmp_path, cache):
    rows = [{"prompt": "Add 2 and 2.", "chosen": "4", "rejected": "5"}, {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go."}]
    result, df = ingest_rows(tmp_path, cache, rows)
    assert result.layout == "pair_prompt" and catalog.dataset_meta(cache, "pairs")["kind"] == "pair"
    assert set(df["kind"]) == {"pair"} and set(df["flag"]) == {""}
    assert turns(df, 0) == [{"role": "user", "content": "Add 2 and 2."}]
    assert (df["prompt"][0], df["response"][0], df["rejected"][0]) == ("Add 2 and 2.", "4", "5")
    assert list(df.columns) == PAIR_EXAMPLES.names


def test_message_lists_that_repeat_the_prompt_are_not_doubled(tmp_path, cache):
    """HuggingFaceH4/ultrafeedback_binarized: prompt is a string, chosen / rejected are whole conversations."""
    conv = lambda a: [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": a}]  # noqa: E731
    _, df = ingest_rows(tmp_path, cache, [{"prompt": "Name a colour.", "chosen": conv("Blue."), "rejected": conv("7")}])
    assert turns(df, 0) == [{"role": "user", "content": "Name a colour."}]
    assert (df["response"][0], df["rejected"][0], df["flag"][0]) == ("Blue.", "7", "")


def test_whole_dialogue_pairs_hh_rlhf_transcripts(tmp_path, cache):
    shared = HH.format(q="Hi there", a="Hello! How can I help?") + HH.format(q="What is a noun?", a="")[:-len("\n\nAssistant: ")]
    rows = [{"chosen": shared + "\n\nAssistant: A naming word.", "rejected": shared + "\n\nAssistant: No idea."}]
    result, df = ingest_rows(tmp_path, cache, rows)
    assert result.layout == "pair_dialogue" and df["flag"][0] == ""
    assert turns(df, 0) == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
                            {"role": "user", "content": "What is a noun?"}]  # fmt: skip
    assert (df["response"][0], df["rejected"][0]) == ("A naming word.", "No idea.")


def test_whole_dialogue_pairs_as_turn_lists(tmp_path, cache):
    conv = lambda a: [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": a}]  # noqa: E731
    result, df = ingest_rows(tmp_path, cache, [{"chosen": conv("Yes."), "rejected": conv("No.")}])
    assert result.layout == "pair_dialogue" and turns(df, 0) == [{"role": "user", "content": "Q?"}]
    assert df["flag"][0] == ""


def test_sharegpt_conversations_with_chosen_and_rejected_turns(tmp_path, cache):
    """LLaMA-Factory's dpo_en_demo.json: this used to be read as chat with every row flagged."""
    rows = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"}],
             "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "22"}}]
    path = tmp_path / "dpo.json"
    path.write_text(json.dumps(rows))
    result = catalog.ingest(str(path), cache, name="sg", progress=False)
    df = catalog.load_examples(cache, "sg")
    assert result.layout == "pair_chat" and result.flag_counts == {}
    assert turns(df, 0) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert (df["response"][0], df["rejected"][0]) == ("4", "22")


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "identical_pair"),
        ({"prompt": "Q", "chosen": "  ", "rejected": "B"}, "empty_chosen"),
        ({"prompt": "Q", "chosen": "A", "rejected": ""}, "empty_rejected"),
        ({"prompt": "Q", "chosen": "A", "rejected": None}, "empty_rejected"),
        ({"prompt": "", "chosen": "A", "rejected": "B"}, "empty_prompt"),
        ({"chosen": HH.format(q="Hi", a="A"), "rejected": HH.format(q="Bye", a="B")}, "no_shared_prefix"),
        ({"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "user", "content": "more?"}],
          "rejected": "B"}, "no_assistant_turn"),
        ({"prompt": "Q", "chosen": 42, "rejected": "B"}, "non_string_field"),
        ({"prompt": [{"speaker": "x", "text": "Q"}], "chosen": "A", "rejected": "B"}, "malformed_turn"),
    ],
)
def test_degenerate_pairs_are_kept_and_flagged(tmp_path, cache, row, reason):
    good = {"prompt": "Fine question", "chosen": "Good answer", "rejected": "Bad answer"}
    result, df = ingest_rows(tmp_path, cache, [good, row])
    assert len(df) == 2 and df["flag"][0] == ""
    assert reason in df["flag"][1].split(","), df["flag"][1]
    assert result.flag_counts.get(reason) == 1
    assert reason in PAIR_FLAGS or reason in FLAGS


def test_duplicates_invalid_lines_and_limit(tmp_path, cache):
    rows = [{"prompt": f"Q{i}", "chosen": "A", "rejected": "B"} for i in range(5)] + [{"prompt": "Q0", "chosen": "A", "rejected": "B"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    path.write_text(path.read_text() + "{not json\n")
    result = catalog.ingest(str(path), cache, name="d", progress=False)
    assert result.n_rows == 7 and result.flag_counts == {"duplicate": 1, "invalid_json": 1}
    limited = catalog.ingest(str(path), cache, name="d3", limit=3, progress=False)
    assert limited.n_rows == 3 and limited.layout == "pair_prompt"
    assert limited.fingerprint != result.fingerprint
    assert catalog.ingest(str(path), cache, name="d3", limit=3, progress=False).already_present


def test_map_names_other_pair_columns(tmp_path, cache):
    rows = [{"q": "Q", "better": "A", "worse": "B", "uid": "u1"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    fm = parse_field_map(["prompt=q", "chosen=better", "rejected=worse", "id=uid"])
    catalog.ingest(str(path), cache, name="m", field_map=fm, progress=False)
    df = catalog.load_examples(cache, "m")
    assert (df["id"][0], df["prompt"][0], df["response"][0], df["rejected"][0]) == ("u1", "Q", "A", "B")
    with pytest.raises(UserError, match="both chosen"):
        catalog.ingest(str(path), cache, name="m2", field_map={"chosen": "better"}, progress=False)


def test_transcript_parser():
    assert parse_transcript("plain text") is None
    assert parse_transcript("Human: hi\n\nAssistant: yo") == [{"role": "user", "content": "hi"},
                                                               {"role": "assistant", "content": "yo"}]


def test_planted_swaps_are_labelled_and_swapped(tmp_path, cache):
    rows = [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    rows[0]["rejected"] = rows[0]["chosen"]  # identical: never picked for a swap
    src = write_jsonl(tmp_path / "src.jsonl", rows)
    out, n = write_planted_pairs(str(src), tmp_path / "planted.jsonl", limit=10, fraction=0.3, seed=1)
    planted = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(planted) == 10 and n == 3
    swapped = [r for r in planted if r["defect"] == "swapped_pair"]
    assert len(swapped) == 3 and all(r["chosen"].startswith("bad") for r in swapped)
    assert all(r["chosen"].startswith("good") for r in planted if r["defect"] == "")
    assert write_planted_pairs(str(src), tmp_path / "again.jsonl", 10, 0.3, 1)[0].read_text() == out.read_text()
    with pytest.raises(UserError, match="between 0 and 1"):
        write_planted_pairs(str(src), tmp_path / "x.jsonl", fraction=1.5)
    result = catalog.ingest(str(out), cache, name="planted", progress=False)
    assert "defect" in catalog.dataset_meta(cache, "planted")["columns"] and result.layout == "pair_prompt"


@pytest.mark.parametrize(
    "rel, layout, n_rows, flags",
    [
        ("hh-rlhf/helpful-base/test.jsonl.gz", "pair_dialogue", 2354,
         {"empty_rejected": 4, "no_shared_prefix": 9, "identical_pair": 2}),
        ("ultrafeedback-binarized-sample/train_clean.jsonl", "pair_prompt", 1000,
         {"identical_pair": 4, "empty_rejected": 1, "empty_chosen": 1}),
        ("dpo-demo/dpo_en_demo.json", "pair_chat", 300, {"duplicate": 5}),
    ],
)
def test_the_real_shared_files_ingest_without_flags(cache, rel, layout, n_rows, flags):
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    result = catalog.ingest(str(path), cache, progress=False)
    assert (result.layout, result.n_rows, result.flag_counts) == (layout, n_rows, flags)
    df = catalog.load_examples(cache, result.name)
    clean = df[df["flag"] == ""]
    assert (clean["response"].str.strip() != "").all() and (clean["response"] != clean["rejected"]).all()
    assert clean["messages"].map(lambda m: json.loads(m)[-1]["role"] == "user").all()
    if layout == "pair_dialogue":  # the chosen transcript is the prompt turns plus the chosen reply
        first = json.loads(gzip.open(path, "rt").readline())
        assert first["chosen"].rstrip().endswith(df["response"][0])
