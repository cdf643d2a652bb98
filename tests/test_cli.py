"""The command line, end to end: ingest -> score -> status -> scores -> select -> export -> layout, and bad input.

Commands run in-process through ``scoring.cli.main`` (fast); a few run as real ``python -m scoring`` subprocesses
to check the entry point, the exit code and that a user error is one line on stderr with no traceback. The model
is always a tiny random-weight one passed with ``--model``; the device is forced to the CPU.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from scoring import cli
from scoring.jobs.worker import live_workers
from scoring.scores.tables import pick_job, score_table
from scoring.selection.rules import SelectionResult, kept_sha256
from scoring.selection.saved import load_selection
from scoring.store.cache import Cache
from scoring.store.jobs import list_jobs
from tests.helpers import ok, run

ROOT = Path(__file__).resolve().parent.parent
NAME = "alp"
N = 24
SCORE_FILE_COLUMNS = {"id", "flag", "davir", "loss_base", "loss_ref", "rho", "ifd", "ppl", "n_prompt_tokens",
                      "n_response_tokens"}  # fmt: skip
ORIGINAL_COLUMNS = ["id", "instruction", "input", "output", "defect"]
SCORE_NAMES = ["loss_base", "loss_ref", "n_prompt_tokens", "n_response_tokens", "davir", "rho", "ifd", "ppl"]


pytestmark = pytest.mark.usefixtures("cpu_one_thread")  # tests/conftest.py




def records() -> list[dict]:
    topics = ["planets", "numbers", "capitals", "rivers", "colours", "animals"]
    rows = []
    for i in range(N):
        topic = topics[i % len(topics)]
        answer = f"Here is a short note about {topic}: " + " ".join([topic, "are", "interesting"] * (1 + i % 2))
        defect = ""
        if i in (17, 18, 19):
            answer, defect = "qzx vvk plo " * (2 + i % 3), "gibberish"
        elif i in (20, 21):
            answer, defect = answer[: len(answer) // 3], "truncated"
        rows.append({"id": f"r{i:02d}", "instruction": f"Write a note about {topic} number {i}.",
                     "input": "" if i % 2 else f"Keep it under {10 + i} words.", "output": answer,
                     "defect": defect})  # fmt: skip
    rows[22]["output"] = ""  # flagged empty_response at ingest: kept, scored, never selected
    rows[23]["output"] = "A long one. " * 60  # flagged too_long by the pass (cut at --max-length 128)
    return rows


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model):
    """A cache holding dataset NAME, ingested and scored through the CLI (ingest, then score --wait)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp, contextlib.ExitStack() as stack:
        stack.callback(torch.set_num_threads, threads)
        mp.setenv("DAVIR_DEVICE", "cpu")
        folder = tmp_path_factory.mktemp("cli")
        source = folder / "notes.json"
        source.write_text(json.dumps(records()))
        cache = folder / "cache"
        out = ok("--cache", str(cache), "ingest", str(source), "--name", NAME)
        assert f"{NAME}: {N} rows ingested; layout alpaca" in out
        assert "empty_response 1" in out
        code, out, err = run("--cache", str(cache), "score", NAME, "--model", str(tiny_model), "--max-length", "128",
                             "--wait")  # fmt: skip
        assert code == 0, out + err
        assert ": done" in out
    return Cache(cache)


def c(cache: Cache) -> list[str]:
    return ["--cache", str(cache.root)]


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example: python -m scoring " + command in out
    assert "--cache" in out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in cli.COMMANDS)


# ---------------------------------------------------------------- the pipeline


def test_score_again_is_already_done(scored, tiny_model):
    out = ok(*c(scored), "score", NAME, "--model", str(tiny_model), "--max-length", "128", "--wait")
    assert "already done" in out
    out = ok(*c(scored), "score", NAME, "--model", str(tiny_model), "--max-length", "128")  # no --wait either
    assert "already done" in out and "started worker" not in out
    assert live_workers(scored) == []


def test_status_shows_jobs_counts_and_auroc_per_defect_kind(scored):
    out = ok(*c(scored), "status")
    assert f"cache: {scored.root}" in out
    assert "workers alive: 0" in out
    score_job = next(j for j in list_jobs(scored) if j.kind == "score")
    assert any(line.startswith(score_job.id) and " done" in line for line in out.splitlines())
    assert f"dataset {NAME}: {N} rows, layout alpaca" in out
    assert f"{N} of {N} rows scored" in out
    assert "flags: empty_response 1, too_long 1" in out
    assert "AUROC" in out
    table = out[out.index("AUROC"):]
    header = table.splitlines()[1].split()
    assert header[0] == "score" and {"gibberish", "truncated", "any"} <= set(header)
    for score in ("davir", "loss_base", "ifd", "ppl"):
        assert any(line.split()[:1] == [score] for line in table.splitlines()), score
    # status NAME limits it to that dataset.
    assert ok(*c(scored), "status", NAME).count("AUROC") == 1


def plain_dataset(tmp_path) -> Cache:
    """A cache holding dataset `plain`: four prompt/response rows."""
    cache = Cache(tmp_path / "cache")
    source = tmp_path / "plain.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Say {i}.", "response": f"{i} is said."}) + "\n"
                              for i in range(4)))  # fmt: skip
    ok(*c(cache), "ingest", str(source), "--name", "plain")
    return cache


def test_asking_for_other_scores_over_the_same_passes_shows_them(tmp_path, tiny_model):
    cache = plain_dataset(tmp_path)
    score = [*c(cache), "score", "plain", "--model", str(tiny_model), "--max-length", "64", "--wait"]
    ok(*score, "--scores", "ppl")
    ok(*score, "--scores", "ifd")
    ok(*c(cache), "scores", "plain", "--out", str(tmp_path / "s.csv"))
    assert "ifd" in pd.read_csv(tmp_path / "s.csv").columns


def test_a_job_line_says_how_many_processes_run_it():
    from scoring.cli.commands import _job_line
    from scoring.store.jobs import Job

    job = Job(id="j1", kind="score", dataset="d", state="running", stage="scoring", rss_mb=2048.0)
    assert "processes" not in _job_line(job) and "RSS 2.0 GB" in _job_line(job)
    job.processes = 8
    assert "on 8 processes" in _job_line(job) and "RSS 2.0 GB (rank 0)" in _job_line(job)


def test_status_without_defect_labels_has_no_auroc(tmp_path, tiny_model):
    cache = plain_dataset(tmp_path)
    out = ok(*c(cache), "status")
    assert "no jobs" in out and "dataset plain: 4 rows, layout prompt_response" in out
    ok(*c(cache), "score", "plain", "--model", str(tiny_model), "--max-length", "64", "--scores", "ppl", "--wait")
    out = ok(*c(cache), "status", "plain")
    assert "4 of 4 rows scored" in out and "AUROC" not in out


def test_the_training_batch_and_tokens_reach_the_fine_tune(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("DAVIR_DEVICE", "cpu")
    cache = plain_dataset(tmp_path)
    score = [*c(cache), "score", "plain", "--model", str(tiny_model), "--max-length", "64", "--scores", "davir"]
    ok(*score, "--train-batch", "2", "--train-tokens", "48", "--wait")
    job = next(j for j in list_jobs(cache) if j.kind == "score")
    assert (job.train["batch_size"], job.train["micro_batch_size"], job.train["micro_batch_tokens"]) == (2, 2, 48)
    record = json.loads(next((cache.root / "models").glob("ref-*/davir_reference.json")).read_text())
    assert record["train"]["batch_size"] == 2  # the checkpoint was trained, and keyed, with the batch asked for
    code, out, err = run(*score, "--train-batch", "0")
    assert code != 0 and "training batch must be a whole number" in out + err and "Traceback" not in out + err
    code, out, err = run(*score, "--epochs", "0")
    assert code != 0 and "epochs must be > 0" in out + err and "Traceback" not in out + err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_scores_file_has_every_id_and_every_score(scored, tmp_path, suffix):
    out_path = tmp_path / "nested" / f"x{suffix}"
    out = ok(*c(scored), "scores", NAME, "--out", str(out_path))
    assert f"wrote {N} rows x {len(SCORE_FILE_COLUMNS)} columns" in out
    if suffix == ".csv":
        table = pd.read_csv(out_path, keep_default_na=False, na_values=[""], dtype={"id": str, "flag": str})
        table["flag"] = table["flag"].fillna("")
    else:
        table = pd.read_parquet(out_path)
    assert set(table.columns) == SCORE_FILE_COLUMNS
    assert table["id"].tolist() == [r["id"] for r in records()]
    flags = dict(zip(table["id"], table["flag"]))
    assert flags.pop("r22") == "empty_response" and flags.pop("r23") == "too_long"
    assert set(flags.values()) == {""}
    for column in SCORE_FILE_COLUMNS - {"id", "flag"}:
        assert table[column].notna().all(), column
    assert (table["n_response_tokens"] > 0).all() and (table["n_prompt_tokens"] > 0).all()
    np.testing.assert_allclose(table["davir"], 1 - table["loss_ref"] / table["loss_base"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(table["rho"], table["loss_base"] - table["loss_ref"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(table["ppl"], np.exp(table["loss_base"]), rtol=1e-9)
    if suffix == ".parquet":
        assert str(table["n_prompt_tokens"].dtype) == "Int64"
    else:
        assert pd.api.types.is_integer_dtype(table["n_prompt_tokens"])
    # the file agrees with the library's table
    lib, _ = score_table(scored, NAME)
    np.testing.assert_allclose(table["davir"], lib["davir"], rtol=1e-12)


def saved(cache: Cache, name: str) -> tuple[dict, SelectionResult]:
    return load_selection(cache, NAME, name)


def kept_line(out: str, name: str) -> tuple[int, int, int]:
    """(kept, total, tokens) from select's 'NAME: kept K of T rows, X tokens' line."""
    line = next(line for line in out.splitlines() if line.startswith(f"{name}: kept "))
    words = line.replace(",", "").split()
    return int(words[2]), int(words[4]), int(words[6])


def table_job_id(cache: Cache) -> str:
    return pick_job(cache, NAME).id


def test_select_top_fraction(scored):
    out = ok(*c(scored), "select", NAME, "--score", "davir", "--budget", "25%", "--rule", "top", "--save", "top25")
    record, result = saved(scored, "top25")
    kept, total, tokens = kept_line(out, "top25")
    assert (kept, total, tokens) == (len(result.kept_ids), N, record["tokens_kept"])
    assert kept == 6  # round(0.25 * 24): every row counts, flagged ones too
    assert "dropped:" in out and "flagged:empty_response 1" in out and "flagged:too_long 1" in out
    table, _ = score_table(scored, NAME)
    eligible = table[table["flag"] == ""].sort_values(["davir", "idx"], ascending=[False, True])
    assert sorted(result.kept_ids) == sorted(eligible["id"].head(6))
    assert not {"r22", "r23"} & set(result.kept_ids)
    assert record["scores"] == ["davir"] and record["rule"] == "top" and record["budget"] == "25%"
    assert record["runs"] == [table_job_id(scored)]


def test_select_two_scores_is_an_intersection(scored):
    ok(*c(scored), "select", NAME, "--score", "davir", "--budget", "50%", "--save", "davir50")
    ok(*c(scored), "select", NAME, "--score", "ifd", "--budget", "50%", "--save", "ifd50")
    out = ok(*c(scored), "select", NAME, "--score", "davir", "--score", "ifd", "--budget", "50%", "--save", "both")
    _, both = saved(scored, "both")
    _, davir = saved(scored, "davir50")
    _, ifd = saved(scored, "ifd50")
    assert kept_line(out, "both")[0] == len(both.kept_ids) <= 12
    # Growing the intersection until the budget: every kept row is no worse than the cut on both scores, so
    # the rows kept under the top half of both are in the top half of each.
    common = set(davir.kept_ids) & set(ifd.kept_ids)
    assert common <= set(both.kept_ids)
    reasons = dict(both.dropped)
    assert all(r.startswith(("below_cut:davir", "below_cut:ifd", "flagged:")) for r in reasons.values())


def test_select_band_and_token_budget(scored):
    out = ok(*c(scored), "select", NAME, "--score", "ppl", "--budget", "100%", "--rule", "band:25-75",
             "--save", "band")  # fmt: skip
    record, band = saved(scored, "band")
    assert kept_line(out, "band")[0] == len(band.kept_ids)
    table, _ = score_table(scored, NAME)
    eligible = table[table["flag"] == ""]
    pct = (eligible["ppl"].rank() - 1) * 100 / (len(eligible) - 1)
    inside = set(eligible.loc[(pct >= 25 - 1e-9) & (pct <= 75 + 1e-9), "id"])
    assert set(band.kept_ids) == inside
    assert all(r.startswith(("outside_band:ppl", "flagged:")) for r in dict(band.dropped).values())

    tokens = table["n_prompt_tokens"] + table["n_response_tokens"]
    budget = int(tokens.sum() // 3)
    out = ok(*c(scored), "select", NAME, "--score", "davir", "--budget", f"{budget}-tokens", "--save", "tok")
    record, tok = saved(scored, "tok")
    kept, total, kept_tokens = kept_line(out, "tok")
    assert kept == len(tok.kept_ids) > 0 and total == N
    by_id = dict(zip(table["id"], tokens))
    assert kept_tokens == record["tokens_kept"] == sum(by_id[i] for i in tok.kept_ids) <= budget


def read_export(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "jsonl":
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    if fmt == "parquet":
        return pq.read_table(path).to_pandas()
    if fmt == "csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"id": str})
    import datasets

    return datasets.load_from_disk(str(path)).to_pandas()


@pytest.mark.parametrize("with_scores", [False, True], ids=["plain", "with-scores"])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "hf"])
def test_export_writes_the_selection(scored, tmp_path, fmt, with_scores):
    if not (scored.selections_dir(NAME) / "exp.json").exists():
        ok(*c(scored), "select", NAME, "--score", "davir", "--budget", "30%", "--save", "exp")
    record, result = saved(scored, "exp")
    out_path = tmp_path / ("curated" if fmt == "hf" else f"curated.{fmt}")
    argv = [*c(scored), "export", NAME, "exp", "--format", fmt, "--out", str(out_path)]
    out = ok(*argv, *(["--with-scores"] if with_scores else []))
    assert f"wrote {len(result.kept_ids)} rows to {out_path}" in out

    table = read_export(out_path, fmt)
    originals = {r["id"]: r for r in records()}
    order = [r["id"] for r in records() if r["id"] in set(result.kept_ids)]  # dataset order
    assert table["id"].tolist() == order
    expected = ORIGINAL_COLUMNS + (SCORE_NAMES if with_scores else [])
    assert sorted(table.columns) == sorted(expected)
    for row in table.to_dict("records"):
        for column in ("instruction", "output"):
            assert row[column] == originals[row["id"]][column]
    if with_scores:
        lib, _ = score_table(scored, NAME)
        lib = lib.set_index("id").loc[order]
        np.testing.assert_allclose(table["davir"].astype(float), lib["davir"], rtol=1e-6)

    manifest_path = out_path / "manifest.json" if fmt == "hf" else out_path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["kept_ids_sha256"] == record["kept_sha256"] == kept_sha256(order)
    assert manifest["counts"]["kept"] == manifest["n_rows_written"] == len(order)
    assert manifest["format"] == fmt and manifest["selection"] == "exp"
    assert manifest["score_runs"] == record["runs"]
    assert manifest["score_columns"] == (SCORE_NAMES if with_scores else [])


def test_manifest_reproduce_line_runs(scored, tmp_path):
    import shlex

    ok(*c(scored), "select", NAME, "--score", "rho", "--budget", "40%", "--rule", "bottom", "--save", "repro")
    record, _ = saved(scored, "repro")
    ok(*c(scored), "export", NAME, "repro", "--format", "jsonl", "--out", str(tmp_path / "first" / "out.jsonl"))
    manifest = json.loads((tmp_path / "first" / "manifest.json").read_text())
    steps = [shlex.split(step) for step in manifest["reproduce"].split(" && ")]
    assert [step[:3] for step in steps] == [["python", "-m", "scoring"]] * 2
    for step in steps:
        ok(*c(scored), *step[3:])
    assert saved(scored, "repro")[0]["kept_sha256"] == record["kept_sha256"]


def test_manifest_command_is_the_export_command(scored, tmp_path):
    if not (scored.selections_dir(NAME) / "exp.json").exists():
        ok(*c(scored), "select", NAME, "--score", "davir", "--budget", "30%", "--save", "exp")
    out_path = tmp_path / "cmd.jsonl"
    ok(*c(scored), "export", NAME, "exp", "--format", "jsonl", "--out", str(out_path))
    command = json.loads((tmp_path / "manifest.json").read_text())["command"]
    assert command and f"export {NAME} exp --format jsonl" in command


def test_export_default_location(scored):
    ok(*c(scored), "select", NAME, "--score", "ppl", "--budget", "5", "--rule", "bottom", "--save", "low5")
    out = ok(*c(scored), "export", NAME, "low5", "--format", "jsonl")
    path = scored.exports_dir() / f"{NAME}-low5" / f"{NAME}-low5.jsonl"
    assert f"to {path}" in out
    assert len(path.read_text().splitlines()) == 5
    assert (path.parent / "manifest.json").exists()


def test_layout_is_computed_by_score_wait(scored):
    out = ok(*c(scored), "layout", NAME)
    assert "already done" in out
    path = scored.map_path(pick_job(scored, NAME).base_pass)
    assert path.exists()
    layout = pq.read_table(path).to_pandas().sort_values("idx")
    assert len(layout) == N
    assert np.isfinite(layout[["x", "y"]].to_numpy()).all()
    assert ok(*c(scored), "layout", NAME, "--wait").startswith("layout job")


def test_datasets_lists_the_dataset(scored):
    out = ok(*c(scored), "datasets")
    assert out.startswith(f"{NAME}\t{N} rows\talpaca\t")


# ---------------------------------------------------------------- bad input: exit 2, one line, no traceback


def assert_user_error(argv, *needles: str) -> str:
    code, out, err = run(*argv)
    assert code == 2, f"{argv}: exit {code}\n{out}\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_bad_ingest_sources(tmp_path):
    cache = ["--cache", str(tmp_path / "cache")]
    assert_user_error([*cache, "ingest", str(tmp_path / "nope.json")], "no such file or folder")
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"foo": "a", "bar": "b"}\n')
    assert_user_error([*cache, "ingest", str(odd)], "--map", "foo", "bar")
    assert_user_error([*cache, "ingest", str(odd), "--map", "prompt"], "FIELD=COLUMN")


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "ghost"],
        ["scores", "ghost", "--out", "x.csv"],
        ["select", "ghost", "--score", "davir", "--budget", "5%", "--save", "s"],
        ["export", "ghost", "s", "--format", "jsonl"],
        ["status", "ghost"],
        ["layout", "ghost"],
    ],
    ids=lambda a: a[0],
)
def test_unknown_dataset(scored, argv):
    assert_user_error([*c(scored), *argv], "ghost")


def test_bad_arguments_on_a_scored_dataset(scored, tmp_path, tiny_model):
    cache = c(scored)
    assert_user_error([*cache, "score", NAME, "--model", str(tiny_model), "--scores", "davir,bogus"],
                      "unknown score(s) bogus", "davir")  # fmt: skip
    assert_user_error([*cache, "select", NAME, "--score", "bogus", "--budget", "5%", "--save", "s"], "bogus")
    assert_user_error([*cache, "select", NAME, "--score", "davir", "--budget", "lots", "--save", "s"], "'lots'")
    assert_user_error([*cache, "select", NAME, "--score", "davir", "--budget", "5%", "--rule", "middle",
                       "--save", "s"], "'middle'")  # fmt: skip
    assert_user_error([*cache, "select", NAME, "--score", "davir", "--budget", "5%", "--save", "no/slash"], "no/slash")
    assert not (scored.selections_dir(NAME) / "s.json").exists()
    assert_user_error([*cache, "export", NAME, "never-saved", "--format", "csv"], "never-saved")
    assert_user_error([*cache, "scores", NAME, "--out", str(tmp_path / "x.txt")], "x.txt", ".csv or .parquet")
    assert not (tmp_path / "x.txt").exists()
    assert_user_error([*cache, "scores", NAME, "--out", str(tmp_path / "x.csv"), "--job", "ffffffffffff"],
                      "no job")  # fmt: skip
    assert_user_error([*cache, "cancel", "0123456789abcdef"], "no job '0123456789abcdef'")
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    assert_user_error([*cache, "score", NAME, "--model", str(not_a_model)], "not a transformers model folder")
    assert_user_error([*cache, "score", NAME, "--model", str(tiny_model), "--reference", str(not_a_model)],
                      "not a transformers model folder")  # fmt: skip


def test_argparse_errors_exit_2(tmp_path):
    code, _, err = run("--cache", str(tmp_path), "frobnicate")
    assert code == 2 and "invalid choice" in err
    code, _, err = run("--cache", str(tmp_path), "select", NAME, "--budget", "5%", "--save", "s")
    assert code == 2 and "--score" in err


# ---------------------------------------------------------------- the real entry point


def python_m(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "scoring", *argv], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})  # fmt: skip


def test_entry_point_user_error_is_one_line_exit_2(tmp_path):
    proc = python_m("--cache", str(tmp_path / "cache"), "ingest", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.jsonl" in lines[0]


def test_entry_point_runs_commands(scored):
    proc = python_m("status", NAME, env={"DAVIR_CACHE": str(scored.root)})
    assert proc.returncode == 0, proc.stderr
    assert f"{N} of {N} rows scored" in proc.stdout and "AUROC" in proc.stdout
    proc = python_m("scores", "ghost", "--out", "x.csv", "--cache", str(scored.root))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: no dataset named 'ghost'")


# ---------------------------------------------------------------- where the cache is


def test_cache_option_before_or_after_the_command_and_env(scored, tmp_path, monkeypatch):
    before = ok("--cache", str(scored.root), "datasets")
    after = ok("datasets", "--cache", str(scored.root))
    assert before == after and before.startswith(f"{NAME}\t")
    monkeypatch.setenv("DAVIR_CACHE", str(scored.root))
    assert ok("datasets") == before
    assert f"cache: {scored.root}" in ok("status")
    empty = tmp_path / "empty-cache"
    assert ok("--cache", str(empty), "datasets") == ""  # the option wins over the variable
    assert ok("datasets", "--cache", str(empty)) == ""
    monkeypatch.delenv("DAVIR_CACHE")
    monkeypatch.chdir(tmp_path)
    assert f"cache: {tmp_path / 'cache'}" in ok("status")  # default: ./cache
