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
    for fmt in FORMATS:  # a selection that kept nothing is refused (defect 6), whatever the format
        with pytest.raises(UserError, match="kept no rows"):
            export_selection(cache, DATASET, "none", fmt)
    assert not cache.exports_dir().exists()

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


# ---------------------------------------------------------------- issue 14: defects 4, 5, 6 and 11 (export half)


def save_other(cache, name: str = "other", budget: str = "2") -> None:
    result = select(score_table(), ["davir"], parse_rule("top"), parse_budget(budget))
    spec = {"dataset": DATASET, "dataset_fingerprint": "fp-mini", "scores": ["davir"], "rule": "top",
            "budget": budget, "include_flagged": False, "runs": ["run-1"], "name": name}
    save_selection(cache, DATASET, name, result, spec)


def test_an_export_folder_belongs_to_one_selection(cache, saved, tmp_path):
    """Defect 4: a second selection written into the first one's folder would sit beside its manifest, and a third
    export replaced that manifest. Now it is refused, naming the folder, its selection and another --out."""
    save_other(cache)
    folder = tmp_path / "shared"
    first = export_selection(cache, DATASET, "top", "jsonl", out=folder / "top.jsonl")
    before = first.manifest_path.read_text()
    with pytest.raises(UserError) as err:
        export_selection(cache, DATASET, "other", "jsonl", out=folder / "other.jsonl")
    message = str(err.value)
    assert str(folder) in message and "'top'" in message and "--out" in message
    assert str(tmp_path / f"{DATASET}-other") in message  # a suggested folder of its own
    assert not (folder / "other.jsonl").exists() and first.manifest_path.read_text() == before
    with pytest.raises(UserError):  # the same for any format, and for a folder given as --out
        export_selection(cache, DATASET, "other", "csv", out=folder)
    assert first.manifest_path.read_text() == before

    again = export_selection(cache, DATASET, "top", "csv", out=folder / "top.csv")  # same selection: replaces
    assert json.loads(again.manifest_path.read_text())["format"] == "csv"

    default = export_selection(cache, DATASET, "other", "jsonl")  # the default: a folder of its own
    assert default.path.parent == cache.exports_dir() / f"{DATASET}-other"


def test_an_hf_folder_or_a_foreign_manifest_is_not_replaced(cache, saved, tmp_path):
    save_other(cache)
    hf = export_selection(cache, DATASET, "top", "hf", out=tmp_path / "hf")
    with pytest.raises(UserError, match="'top'"):
        export_selection(cache, DATASET, "other", "hf", out=tmp_path / "hf")
    assert json.loads(hf.manifest_path.read_text())["selection"] == "top"
    export_selection(cache, DATASET, "top", "hf", out=tmp_path / "hf")  # the same selection may re-export

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text("not json")
    with pytest.raises(UserError, match="not an export manifest"):
        export_selection(cache, DATASET, "top", "jsonl", out=foreign / "x.jsonl")
    assert (foreign / "manifest.json").read_text() == "not json" and not (foreign / "x.jsonl").exists()
    other_dataset = tmp_path / "od"
    other_dataset.mkdir()
    (other_dataset / "manifest.json").write_text(json.dumps({"dataset": "elsewhere", "selection": "top"}))
    with pytest.raises(UserError, match="'elsewhere'"):  # same selection name, another dataset
        export_selection(cache, DATASET, "top", "jsonl", out=other_dataset / "x.jsonl")


def test_a_folder_that_cannot_be_written_is_a_user_error(cache, saved, tmp_path):
    """Defect 5: an OSError creating the folder or writing is a UserError naming the path and the reason."""
    with pytest.raises(UserError) as err:
        export_selection(cache, DATASET, "top", "jsonl", out="/proc/nope/x.jsonl")
    assert str(err.value) == "cannot write the export to /proc/nope/x.jsonl: No such file or directory"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="cannot write the export to .*a-file/x.csv: (File exists|Not a directory)"):
        export_selection(cache, DATASET, "top", "csv", out=tmp_path / "a-file" / "x.csv")


def test_an_unscored_selection_is_refused_with_the_reason(cache):
    """Defect 6: a selection saved before its scores existed kept nothing; exporting it wrote 0 rows, exit 0."""
    from scoring.selection.rules import SelectionResult

    spec = {"dataset": DATASET, "dataset_fingerprint": "fp-mini", "scores": ["davir"], "rule": "top",
            "budget": "6%", "include_flagged": False, "runs": ["run-1"], "name": "early"}
    reasons = {f"ex{i}": "unscored" for i in range(N)} | {"ex2": "flagged:too_long"}
    save_selection(cache, DATASET, "early", SelectionResult([], reasons, N, 0), spec)
    with pytest.raises(UserError) as err:
        export_selection(cache, DATASET, "early", "jsonl")
    message = str(err.value)
    assert message.startswith("selection 'early' of dataset 'mini' kept no rows (")
    assert "scores were not computed yet" in message and message.endswith("nothing exported.")
    assert not cache.exports_dir().exists()

    save_selection(cache, DATASET, "mid", SelectionResult([], reasons, N, 0),
                   dict(spec, name="mid", partial={"scored": 0, "rows": N}))
    with pytest.raises(UserError, match="saved while its scores were being computed"):
        export_selection(cache, DATASET, "mid", "jsonl")


def test_a_partial_selection_exports_and_says_so(cache):
    from scoring.selection.rules import SelectionResult

    spec = {"dataset": DATASET, "dataset_fingerprint": "fp-mini", "scores": ["davir"], "rule": "top",
            "budget": "2", "include_flagged": False, "runs": ["run-1"], "name": "mid",
            "partial": {"scored": 3, "rows": N}}
    save_selection(cache, DATASET, "mid", SelectionResult(["ex0", "ex4"], {"ex1": "unscored"}, N, 20), spec)
    res = export_selection(cache, DATASET, "mid", "jsonl")
    assert res.n_rows == 2 and res.manifest["partial"] == {"scored": 3, "rows": N}
    assert json.loads(res.manifest_path.read_text())["partial"] == {"scored": 3, "rows": N}


def ingest_small(cache_root, folder, kind: str) -> tuple[Cache, str]:
    """A small JSONL ingested through the CLI (sft: Alpaca rows; pair: prompt / chosen / rejected)."""
    from tests.helpers import ok

    source = folder / f"small-{kind}.jsonl"
    if kind == "sft":
        rows = [{"question": f"q {i}", "answer": f"a {i}", "junk": i} for i in range(12)]
        source.write_text("\n".join(json.dumps(r) for r in rows))
        ok("--cache", str(cache_root), "ingest", str(source), "--name", "small", "--limit", "10",
           "--map", "prompt=question", "--map", "response=answer")
    else:
        rows = [{"prompt": f"p {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(12)]
        source.write_text("\n".join(json.dumps(r) for r in rows))
        ok("--cache", str(cache_root), "ingest", str(source), "--name", "small")
    return Cache(cache_root), str(source)


@pytest.mark.parametrize("kind", ["sft", "pair"])
def test_reproduce_anywhere_rebuilds_the_same_score_job_in_another_cache(tmp_path, tiny_model, kind, monkeypatch):
    """Defect 11: the manifest's reproduce line named a cache-local job id. ``reproduce_anywhere`` gives the source,
    the ingest and score commands with the model and every option, and select / export without --job; run in a
    fresh cache, the ingest and score commands ask for the very same score job (its id fingerprints the request)."""
    import shlex
    from dataclasses import replace

    from scoring.cli import build_parser, commands
    from scoring.jobs.requests import pass_config_for, score_request
    from scoring.jobs.runner import enqueue
    from scoring.selection.rules import SelectionResult
    from scoring.train.dpo import DPOTrainConfig
    from scoring.train.sft import TrainConfig
    from tests.helpers import ok

    monkeypatch.setenv("DAVIR_DEVICE", "cpu")
    cache, source = ingest_small(tmp_path / "a", tmp_path, kind)
    config = pass_config_for(kind, 96, 4096, False, "off", "on")
    job = score_request(cache, "small", str(tiny_model), ["ppl", "ifd"] if kind == "sft" else ["irm", "margin_base"],
                        config, train=replace(TrainConfig(), method="lora", epochs=2.0, pack="on"),
                        dpo=replace(DPOTrainConfig(), beta=0.25, epochs=0.5, objective="davir-dpo"),
                        val_fraction=0.25, val_start="ref")  # fmt: skip
    enqueue(cache, job)
    spec = {"dataset": "small", "scores": ["ppl"], "rule": "bottom", "budget": "3", "runs": [job.id], "name": "s"}
    ids = [str(r["id"]) for r in pq_ids(cache, "small")][:3]
    save_selection(cache, "small", "s", SelectionResult(ids, {}, 10, 0), spec)
    res = export_selection(cache, "small", "s", "jsonl", out=tmp_path / "out" / "s.jsonl")

    block = res.manifest["reproduce_anywhere"]
    assert res.manifest["reproduce"].count(job.id) == 1  # the same-cache line is kept as it was
    assert job.id not in json.dumps({k: block[k] for k in ("ingest", "score", "select", "export", "line")})
    assert block["source"]["source"] == source and block["source"]["format"] == "jsonl"
    assert block["model"] == {"name": str(tiny_model), "fingerprint": job.model_fingerprint}
    assert f"--model {shlex.quote(str(tiny_model))}" in block["score"]
    assert block["steps"] == [block["ingest"], block["score"], block["select"], block["export"]]
    assert block["line"] == " && ".join(block["steps"]) and "--job" not in block["select"]
    assert block["select"].startswith("python -m scoring select small --score ppl")
    if kind == "sft":
        assert block["source"]["options"] == {"limit": 10, "field_map": {"prompt": "question", "response": "answer"}}

    parser = build_parser()
    fresh = tmp_path / "b"
    for step in block["steps"]:
        argv = shlex.split(step)
        assert argv[:3] == ["python", "-m", "scoring"]
        parser.parse_args(argv[3:])  # every step parses
    ok("--cache", str(fresh), *shlex.split(block["ingest"])[3:])  # the ingest step runs in a fresh cache
    args = parser.parse_args(["--cache", str(fresh), *shlex.split(block["score"])[3:]])
    assert commands._request(Cache(fresh), args).id == job.id  # the same request, so the same job


def pq_ids(cache: Cache, dataset: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(cache.examples_path(dataset), columns=["id"]).to_pylist()


def test_cli_export_errors_and_warnings(cache, saved, tmp_path):
    """Through ``python -m scoring export``: an unwritable --out, an empty selection and another selection's
    folder print ``error: …`` and exit 2 (no traceback); a partial selection exports with a plain warning line."""
    from scoring.selection.rules import SelectionResult
    from tests.helpers import run

    root = ["--cache", str(cache.root)]
    code, out, err = run(*root, "export", DATASET, "top", "--format", "jsonl", "--out", "/proc/nope/x.jsonl")
    assert (code, out) == (2, "")
    assert err == "error: cannot write the export to /proc/nope/x.jsonl: No such file or directory\n"

    spec = {"dataset": DATASET, "dataset_fingerprint": "fp-mini", "scores": ["davir"], "rule": "top",
            "budget": "6%", "include_flagged": False, "runs": ["run-1"], "name": "early"}
    save_selection(cache, DATASET, "early", SelectionResult([], {f"ex{i}": "unscored" for i in range(N)}, N, 0), spec)
    code, out, err = run(*root, "export", DATASET, "early", "--format", "jsonl")
    assert code == 2 and err.startswith("error: selection 'early' of dataset 'mini' kept no rows (")
    assert "nothing exported" in err

    save_other(cache)
    ok_code, _, first_err = run(*root, "export", DATASET, "top", "--format", "jsonl", "--out", str(tmp_path / "one" / "top.jsonl"))
    assert ok_code == 0, first_err
    code, out, err = run(*root, "export", DATASET, "other", "--format", "jsonl", "--out",
                         str(tmp_path / "one" / "other.jsonl"))
    assert code == 2 and "'top'" in err and "--out" in err and "Traceback" not in err

    save_selection(cache, DATASET, "mid", SelectionResult(["ex0"], {"ex1": "unscored"}, N, 10),
                   dict(spec, name="mid", partial={"scored": 3, "rows": N}))
    code, out, err = run(*root, "export", DATASET, "mid", "--format", "csv")
    assert code == 0 and "wrote 1 rows" in out
    assert err.strip() == ("warning: selection mid was saved while its scores were being computed (3 of 6 rows "
                           "scored): this is a partial export")
