"""``demo --heldout N``: clean held-out tasks, each with its answer, ingested beside the demo to evaluate models on
(scoring.ingest.catalog.ingest_heldout). Moved out of tests/test_cli.py, which had grown past 500 lines."""
from __future__ import annotations

import json

import pytest

from scoring import cli
from scoring.errors import UserError
from scoring.ingest.catalog import ingest_heldout, list_datasets, load_examples
from scoring.ingest.demo import answers_of, generate_heldout
from tests.test_cli import assert_user_error, c

pytestmark = pytest.mark.usefixtures("cpu_one_thread")  # tests/conftest.py


def test_ingest_heldout_keeps_the_answers(cache):
    result = ingest_heldout(cache, 27, exclude_n_clean=40)
    assert (result.name, result.n_rows, result.already_present) == ("demo-heldout", 27, False)
    assert result.flag_counts == {}
    examples = load_examples(cache, "demo-heldout")
    expected = generate_heldout(27, exclude_n_clean=40)
    assert answers_of(examples) == [r["answer"] for r in expected]
    assert examples["id"].tolist() == [r["id"] for r in expected]
    assert [json.loads(o)["family"] for o in examples["original"]] == [r["family"] for r in expected]
    assert not [p for p in (cache.root / "tmp").rglob("*")]  # the scratch file is gone once ingested
    assert ingest_heldout(cache, 27, exclude_n_clean=40).already_present
    assert ingest_heldout(cache, 18).n_rows == 18  # another set replaces it
    with pytest.raises(UserError, match="--heldout 0"):
        ingest_heldout(cache, 0)
    with pytest.raises(UserError, match="ran out of capital tasks"):
        ingest_heldout(cache, 400)


def test_demo_heldout_ingests_beside_the_demo(cache, tiny_model, capsys):
    assert cli.main([*c(cache), "demo", "--n-clean", "40", "--heldout", "18", "--model", str(tiny_model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("demo: 52 rows ingested")
    assert lines[1].startswith("demo-heldout: 18 held-out clean tasks for `evaluate --eval demo-heldout`")
    assert [m["name"] for m in list_datasets(cache)] == ["demo", "demo-heldout"]
    held = load_examples(cache, "demo-heldout")
    assert held["id"].tolist() == [r["id"] for r in generate_heldout(18, exclude_n_clean=40)]  # the same demo excluded
    assert_user_error([*c(cache), "demo", "--pairs", "x.jsonl", "--heldout", "5"], "--heldout", "--pairs")
