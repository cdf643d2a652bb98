"""Export a saved selection in every format and read it back."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from scoring.errors import UserError
from scoring.export import FORMATS, ExportResult, export_selection
from scoring.schema import EXAMPLES
from scoring.selection.engine import select
from scoring.selection.rules import parse_budget, parse_rule
from scoring.selection.saved import save_selection
from scoring.store.cache import Cache, atomic_write_json, atomic_write_parquet

DATASET = "mini"
N = 6


def record(i: int) -> dict:
    return {
        "instruction": f"Task {i} — résumé",
        "input": "" if i % 2 else f"context {i}",
        "output": f"Answer {i}",
        "meta": {"source": "unit", "tags": ["a", str(i)]},  # nested: kept in parquet / hf, JSON text in csv
        "davir": f"original-{i}",  # same name as a score: the score is exported as score_davir
    }


@pytest.fixture
def cache(tmp_path) -> Cache:
    cache = Cache(tmp_path / "cache")
    rows = [record(i) for i in range(N)]
    examples = pa.table(
        {
            "idx": list(range(N)),
            "id": [f"ex{i}" for i in range(N)],
            "kind": ["sft"] * N,
            "messages": [json.dumps([{"role": "user", "content": r["instruction"]},
                                     {"role": "assistant", "content": r["output"]}]) for r in rows],
            "prompt": [r["instruction"] for r in rows],
            "response": [r["output"] for r in rows],
            "flag": ["", "", "too_long", "", "", ""],
            "source": [f"mini.jsonl:{i + 1}" for i in range(N)],
            "original": [json.dumps(r, ensure_ascii=False) for r in rows],
        },
        schema=EXAMPLES,
    )
    atomic_write_parquet(cache.examples_path(DATASET), examples)
    atomic_write_json(cache.dataset_meta_path(DATASET), {
        "name": DATASET, "fingerprint": "fp-mini", "source": "mini.jsonl", "layout": "alpaca", "kind": "sft",
        "n_rows": N, "flag_counts": {"too_long": 1}, "columns": list(record(0)), "id_column": None,
        "created": "2026-01-01T00:00:00+00:00",
    })
    return cache


def score_table() -> pd.DataFrame:
    return pd.DataFrame({
        "idx": np.arange(N),
        "id": [f"ex{i}" for i in range(N)],
        "flag": ["", "", "too_long", "", "", ""],
        "n_prompt_tokens": np.full(N, 4),
        "n_response_tokens": np.full(N, 6),
        "davir": [0.9, 0.1, 0.95, 0.5, 0.7, 0.2],
        "ifd": [0.3, 0.4, 0.1, np.nan, 0.8, 0.6],
    })


# Kept by davir top 3 among unflagged: ex0 (0.9), ex4 (0.7), ex3 (0.5); exported in dataset order.
KEPT = ["ex0", "ex3", "ex4"]


@pytest.fixture
def saved(cache) -> dict:
    result = select(score_table(), ["davir"], parse_rule("top"), parse_budget("50%"))
    assert sorted(result.kept_ids) == KEPT
    spec = {"dataset": DATASET, "dataset_fingerprint": "fp-mini", "scores": ["davir"], "rule": "top",
            "budget": "50%", "include_flagged": False, "runs": ["run-1"], "name": "top"}
    save_selection(cache, DATASET, "top", result, spec)
    return spec


def sha(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def read_back(fmt: str, path) -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if fmt == "parquet":
        return pd.read_parquet(path).to_dict("records")
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    import datasets

    return datasets.load_from_disk(str(path)).to_list()


def idx_of(row: dict) -> int:
    return int(row["output"].split()[-1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_every_format(cache, saved, fmt):
    res = export_selection(cache, DATASET, "top", fmt, command=f"python -m scoring export mini top --format {fmt}")
    assert isinstance(res, ExportResult)
    name = {"jsonl": "mini-top.jsonl", "parquet": "mini-top.parquet", "csv": "mini-top.csv", "hf": "data"}[fmt]
    assert res.path == cache.exports_dir() / "mini-top" / name  # a folder of its own per export
    assert res.n_rows == 3
    rows = read_back(fmt, res.path)
    assert [idx_of(r) for r in rows] == [0, 3, 4]  # dataset order
    assert list(rows[0]) == list(record(0))  # the original columns, in order, nothing added
    for row in rows:
        want = record(idx_of(row))
        assert row["instruction"] == want["instruction"] and row["output"] == want["output"]
        assert row["davir"] == want["davir"]
        meta = json.loads(row["meta"]) if fmt == "csv" else row["meta"]
        assert meta["source"] == "unit" and list(meta["tags"]) == want["meta"]["tags"]

    if fmt == "hf":
        assert res.manifest_path == res.path / "manifest.json"
    else:
        assert res.manifest_path == res.path.parent / "manifest.json"
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest == res.manifest
    assert manifest["kept_ids_sha256"] == sha(KEPT)
    assert manifest["counts"] == {"total": 6, "kept": 3, "dropped": 3,
                                  "dropped_by_reason": {"below_cut:davir": 2, "flagged:too_long": 1}}
    assert manifest["dataset"] == DATASET and manifest["dataset_fingerprint"] == "fp-mini"
    assert manifest["selection"] == "top" and manifest["score_runs"] == ["run-1"]
    assert (manifest["scores"], manifest["rule"], manifest["budget"]) == (["davir"], "top", "50%")
    assert manifest["include_flagged"] is False
    assert manifest["tokens_kept"] == 30 and manifest["n_rows_written"] == 3
    assert manifest["format"] == fmt and manifest["file"] == str(res.path)
    assert manifest["command"].startswith("python -m scoring export")
    assert manifest["created"].endswith("+00:00")
    assert manifest["reproduce"].startswith("python -m scoring select mini --score davir --budget 50% --rule top")
    assert f"python -m scoring export mini top --format {fmt} --out {res.path}" in manifest["reproduce"]
    assert "--with-scores" not in manifest["reproduce"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "hf"])
def test_export_with_scores(cache, saved, tmp_path, fmt):
    scores = score_table()[["id", "davir", "ifd"]]
    out = tmp_path / "out" / ("data" + {"jsonl": ".jsonl", "parquet": ".parquet", "csv": ".csv", "hf": ""}[fmt])
    res = export_selection(cache, DATASET, "top", fmt, out=out, scores=scores)
    assert res.path == out
    rows = read_back(fmt, out)
    assert list(rows[0]) == list(record(0)) + ["score_davir", "ifd"]
    by_idx = {idx_of(r): r for r in rows}
    assert float(by_idx[0]["score_davir"]) == pytest.approx(0.9)
    assert float(by_idx[4]["ifd"]) == pytest.approx(0.8)
    assert by_idx[3]["davir"] == "original-3"
    missing = by_idx[3]["ifd"]  # NaN score: null / empty cell
    assert missing in (None, "") or (isinstance(missing, float) and np.isnan(missing))
    assert res.manifest["score_columns"] == ["score_davir", "ifd"]
    assert "--with-scores" in res.manifest["reproduce"]


def test_overwrite_and_replace(cache, saved, tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text("old\n")
    export_selection(cache, DATASET, "top", "jsonl", out=out)
    assert len(out.read_text().splitlines()) == 3
    folder = tmp_path / "hf-out"
    export_selection(cache, DATASET, "top", "hf", out=folder)
    (folder / "stale.txt").write_text("x")
    export_selection(cache, DATASET, "top", "hf", out=folder)
    assert not (folder / "stale.txt").exists() and (folder / "manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("x")
    with pytest.raises(UserError):  # never replace a folder that is not an earlier export
        export_selection(cache, DATASET, "top", "hf", out=precious)
    assert (precious / "thesis.txt").exists()


def test_bad_format_and_missing_things(cache, saved):
    with pytest.raises(UserError) as err:
        export_selection(cache, DATASET, "top", "xlsx")
    assert all(f in str(err.value) for f in FORMATS)
    with pytest.raises(UserError) as err:
        export_selection(cache, DATASET, "nope", "jsonl")
    assert "top" in str(err.value)
    with pytest.raises(UserError):
        export_selection(cache, "no-such-dataset", "top", "jsonl")


def test_changed_dataset_is_refused(cache, saved):
    meta_path = cache.dataset_meta_path(DATASET)
    meta = json.loads(meta_path.read_text())
    atomic_write_json(meta_path, dict(meta, fingerprint="fp-other"))
    with pytest.raises(UserError) as err:
        export_selection(cache, DATASET, "top", "jsonl")
    assert "fingerprint" in str(err.value)


def test_empty_selection_and_mixed_columns(cache):
    from scoring.selection.rules import SelectionResult

    spec = {"dataset": DATASET, "dataset_fingerprint": "fp-mini", "scores": ["davir"], "rule": "top",
            "budget": "1", "include_flagged": False, "runs": [], "name": "none"}
    save_selection(cache, DATASET, "none", SelectionResult([], {f"ex{i}": "below_cut:davir" for i in range(N)}, N, 0),
                   spec)
    res = export_selection(cache, DATASET, "none", "csv")
    assert res.n_rows == 0 and res.path.read_text().splitlines() == [",".join(record(0))]  # header only
    assert res.manifest["kept_ids_sha256"] == sha([])
    with pytest.raises(UserError):
        export_selection(cache, DATASET, "none", "hf")

    # A column whose values mix kinds (int / str) or hold empty dicts still exports (as JSON text in parquet).
    import pyarrow.parquet as pq

    table = pq.read_table(cache.examples_path(DATASET))
    mixed = [json.dumps({"a": i if i % 2 else "s", "e": {}, "l": [1, i] if i % 3 else []}) for i in range(N)]
    atomic_write_parquet(cache.examples_path(DATASET),
                         table.set_column(table.schema.get_field_index("original"), "original", pa.array(mixed)))
    save_selection(cache, DATASET, "all", SelectionResult([f"ex{i}" for i in range(N)], {}, N, 0), dict(spec, name="all"))
    rows = read_back("parquet", export_selection(cache, DATASET, "all", "parquet").path)
    assert [r["a"] for r in rows[:2]] == ["s", "1"] and rows[0]["e"] == "{}" and list(rows[1]["l"]) == [1, 1]
    assert read_back("jsonl", export_selection(cache, DATASET, "all", "jsonl").path)[1] == {"a": 1, "e": {}, "l": [1, 1]}
